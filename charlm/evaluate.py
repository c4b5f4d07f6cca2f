"""Scores held-out text with a trained model: loss in nats/char, bits per character, perplexity.

    python -m charlm.evaluate --workdir runs/shakespeare_small [--split val|test] [--step ...]
    python -m charlm.evaluate --workdir runs/shakespeare_small --file other.txt [--json]
    python -m charlm.evaluate --workdir runs/shakespeare_small --dynamic [--dynamic_lr X ...]

The text is read as training reads its validation split: in `batch_size` contiguous streams
(the run's, unless --batch_size), `seq_len` characters at a time, the hidden state carried from
window to window; so `--split val` gives the number training logged (with eval_batches=0).
A --file is encoded a chunk at a time into a temporary token file and read from there, so its
size is not limited by memory; unknown characters are all found before anything is scored.
--dynamic adapts the weights to the text as it is scored (charlm.dynamic; it reads one stream
unless --batch_size) and needs the run's training split for its gradient statistics.
"""
import json

from absl import flags

from charlm import cli
from charlm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to evaluate.')
_STEP = flags.DEFINE_string('step', None, 'latest, best or a step number (default: the best '
                            'checkpoint if there is one, else the latest).')
_SPLIT = flags.DEFINE_enum('split', None, ['train', 'val', 'test'], "A split of the run's own "
                           'corpus, prepared again from its config (default: test).')
_FILE = flags.DEFINE_string('file', None, 'Score this UTF-8 text file instead of a split.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, "Parallel streams (0: the run's batch "
                                   'size; with --dynamic, 1). Each stream starts from a fresh '
                                   'state.')
_UNKNOWN = flags.DEFINE_enum('unknown', 'error', ['error', 'skip'], 'File characters outside '
                             "the model's vocabulary: an error, or skip (and count) them.")
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
_MAX_CHARS = flags.DEFINE_integer('max_chars', 0, "Score only the text's first characters (0: "
                                  'all).', lower_bound=0)
_DYNAMIC = flags.DEFINE_bool('dynamic', False, 'Dynamic evaluation (Krause et al. 2018): score '
                             'each segment, then adapt the weights on it.')
_DYNAMIC_LR = flags.DEFINE_float('dynamic_lr', None, 'Its learning rate (default: '
                                 'charlm.dynamic.LR, from a sweep on a validation split).')
_DYNAMIC_DECAY = flags.DEFINE_float('dynamic_decay', None, 'Its decay toward the trained weights '
                                    '(default: charlm.dynamic.DECAY).')
_DYNAMIC_SEQ = flags.DEFINE_integer('dynamic_seq', None, 'Characters per segment (default: '
                                    'charlm.dynamic.SEQ_LEN).')
_DYNAMIC_GRAD_BATCHES = flags.DEFINE_integer(
    'dynamic_grad_batches', None, 'Training-split windows its gradient RMS is taken over '
    '(default: charlm.dynamic.GRAD_BATCHES).')
flags.mark_flags_as_required(['workdir'])


def report(r: dict) -> str:
  source = f'file {r["file"]}' if 'file' in r else f'{r["split"]} split'
  if 'dynamic' in r:
    d = r['dynamic']
    source += (f', dynamic evaluation (lr {d["lr"]:g}, decay {d["decay"]:g}, segments of '
               f'{d["seq_len"]}, {r["batch_size"]} stream{"s" if r["batch_size"] > 1 else ""})')
  lines = [f'{r["workdir"]} at step {r["step"]}, {source}:',
           f'  characters scored  {r["chars"]:,}',
           f'  loss               {r["loss"]:.4f} nats/char',
           f'  bits per char      {r["bpc"]:.4f}',
           f'  perplexity         {r["perplexity"]:.3f}']
  if r.get('skipped'):
    from charlm.data import show_chars
    plural = 's' if r['skipped'] > 1 else ''
    lines.append(f'  skipped            {r["skipped"]:,} character{plural} outside the vocabulary: '
                 f'{show_chars(r["skipped_chars"])}')
  return '\n'.join(lines)


DYNAMIC_FLAGS = (_DYNAMIC_LR, _DYNAMIC_DECAY, _DYNAMIC_SEQ, _DYNAMIC_GRAD_BATCHES)


def main(argv):
  del argv
  if _SPLIT.value and _FILE.value:
    raise UserError('give --split or --file, not both')
  given = [f'--{f.name}' for f in DYNAMIC_FLAGS if f.present]
  if given and not _DYNAMIC.value:
    raise UserError(f'{", ".join(given)} set dynamic evaluation; add --dynamic')
  from charlm import api, dynamic  # Imports JAX; keep flag errors fast.
  model = api.load(_WORKDIR.value, _STEP.value)
  if _DYNAMIC.value:
    value = lambda flag, default: default if flag.value is None else flag.value
    result = model.evaluate_dynamic(
        _SPLIT.value, _FILE.value, lr=value(_DYNAMIC_LR, dynamic.LR),
        decay=value(_DYNAMIC_DECAY, dynamic.DECAY), seq_len=value(_DYNAMIC_SEQ, dynamic.SEQ_LEN),
        grad_batches=value(_DYNAMIC_GRAD_BATCHES, dynamic.GRAD_BATCHES),
        batch_size=_BATCH_SIZE.value or 1, unknown=_UNKNOWN.value, skip_hint='--unknown=skip',
        max_chars=_MAX_CHARS.value)
  else:
    result = model.evaluate(_SPLIT.value, _FILE.value, _BATCH_SIZE.value, _UNKNOWN.value,
                            skip_hint='--unknown=skip', max_chars=_MAX_CHARS.value)
  print(json.dumps(result, ensure_ascii=False) if _JSON.value else report(result))


if __name__ == '__main__':
  cli.run(main)
