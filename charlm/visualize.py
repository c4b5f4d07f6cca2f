"""Looks inside a trained network: one self-contained HTML page of what its cells do.

    python -m charlm.visualize --workdir runs/shakespeare_small [--split val | --file F]
        [--chars 20000] [--out page.html] [--probe NAME=REGEX ...] [--json out.json] [--step S]

The page (charlm.page) shows the text coloured by any cell's firing, the model's top-5 guesses
under every character, the interpretable cells found (charlm.cells: every cell scored against
labels of the text, out of sample, beside a randomly initialised model and shuffled labels),
what ablating each costs, and the gates' saturation. It opens from file:// with no network.
Only the workdir is needed; `--step` as in sample and evaluate. `--json` writes everything the
page shows, and more, for notebooks.
"""
import json
import os
import re

from absl import flags

from charlm import cli
from charlm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to look inside.')
_STEP = flags.DEFINE_string('step', None, 'latest, best or a step number (default: the best '
                            'checkpoint if there is one, else the latest).')
_SPLIT = flags.DEFINE_enum('split', None, ['train', 'val', 'test'], "A split of the run's own "
                           'corpus (default: val).')
_FILE = flags.DEFINE_string('file', None, 'Read this UTF-8 text file instead of a split.')
_CHARS = flags.DEFINE_integer('chars', 20000, 'Characters to read (from the start of the text).')
_OUT = flags.DEFINE_string('out', None, 'The page (default: WORKDIR/visualize.html).')
_JSON = flags.DEFINE_string('json', None, 'Also write everything as JSON to this file.')
_PROBES = flags.DEFINE_multi_string('probe', [], 'NAME=REGEX: a label of your own, true '
                                    'inside every match (repeatable).')
_TOP = flags.DEFINE_integer('top', 5, 'Cells reported per label.')
_SEED = flags.DEFINE_integer('seed', 0, "The control model's initialisation and the shuffles.")
flags.mark_flags_as_required(['workdir'])


def parse_probes(specs) -> dict:
  """['NAME=REGEX', ...] -> {NAME: REGEX}, checked: one-line errors for what would fail later."""
  probes = {}
  for spec in specs:
    name, eq, regex = spec.partition('=')
    if not eq or not name or not regex:
      raise UserError(f'--probe {spec!r}: use NAME=REGEX, e.g. --probe "number=[0-9]+"')
    try:
      re.compile(regex)
    except re.error as e:
      raise UserError(f'--probe {name}: {regex!r} is not a regular expression ({e})') from None
    if name in probes:
      raise UserError(f'--probe {name} is given twice; give each name once')
    probes[name] = regex
  return probes


def read_text(model, split, file, chars: int) -> str:
  if split and file:
    raise UserError('give --split or --file, not both')
  if chars < 100:
    raise UserError(f'--chars is {chars}; read at least 100 characters (default 20000)')
  if file:
    try:
      with open(file, encoding='utf-8') as f:
        text = f.read(chars)
    except IsADirectoryError:
      raise UserError(f'--file {file} is a directory; give a text file') from None
    except OSError as e:
      raise UserError(f'cannot read --file {file}: {e.strerror}') from None
    except UnicodeDecodeError:
      raise UserError(f'--file {file} is not UTF-8 text') from None
  else:
    from charlm import inspection
    tokens = model.split_tokens(split or 'val')
    text = inspection.text_of(model.vocab, tokens[:chars])
  if len(text) < 100:
    raise UserError(f'the text has {len(text)} characters; the cell finder needs at least 100')
  return text


def write_file(path: str, text: str):
  """Writes `path` atomically (charlm.atomic): a crash leaves the old file or the new one."""
  from charlm import atomic
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_text(path, text)
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror}') from None


def main(argv):
  del argv
  probes = parse_probes(_PROBES.value)
  from charlm import api, inspection, page  # Imports JAX; keep flag errors fast.
  model = api.load(_WORKDIR.value, _STEP.value)
  text = read_text(model, _SPLIT.value, _FILE.value, _CHARS.value)
  report = inspection.inspect(model, text, probes=probes, top=_TOP.value, seed=_SEED.value)
  out = _OUT.value or os.path.join(_WORKDIR.value, 'visualize.html')
  write_file(out, page.render(report['page']))
  if _JSON.value:
    write_file(_JSON.value, json.dumps(report, ensure_ascii=False))
  headline = report['page']['headline']
  print(f'{len(report["page"]["text"]):,} characters, {headline["cells"]:,} cells: '
        f'{headline["share"]:.1%} interpretable (a random model judged the same way: '
        f'{headline["control_share"]:.1%}); page {out}'
        + (f', JSON {_JSON.value}' if _JSON.value else ''))
  for entry in report['page']['found'][:12]:
    ablation = ('' if entry['ablation'] is None else
                f', held at its mean: {entry["ablation"]:+.4f} nats/char where the label holds')
    print(f'  {entry["label"]:14} layer {entry["layer"]} {entry["kind"]} {entry["index"]:4}  '
          f'score {entry["score"]:.3f} (control {entry["control"]:.3f}){ablation}')


if __name__ == '__main__':
  cli.run(main)
