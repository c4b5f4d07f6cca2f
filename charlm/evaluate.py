"""Scores held-out text with a trained model: loss in nats/char, bits per character, perplexity.

    python -m charlm.evaluate --workdir runs/shakespeare_small [--split val|test] [--step ...]
    python -m charlm.evaluate --workdir runs/shakespeare_small --file other.txt [--json]

The text is read as training reads its validation split: in `batch_size` contiguous streams
(the run's, unless --batch_size), `seq_len` characters at a time, the hidden state carried from
window to window; so `--split val` gives the number training logged (with eval_batches=0).
A --file is encoded a chunk at a time into a temporary token file and read from there, so its
size is not limited by memory; unknown characters are all found before anything is scored.
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
                                   'size). Each stream starts from a fresh state.')
_UNKNOWN = flags.DEFINE_enum('unknown', 'error', ['error', 'skip'], 'File characters outside '
                             "the model's vocabulary: an error, or skip (and count) them.")
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
flags.mark_flags_as_required(['workdir'])


def report(r: dict) -> str:
  source = f'file {r["file"]}' if 'file' in r else f'{r["split"]} split'
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


def main(argv):
  del argv
  if _SPLIT.value and _FILE.value:
    raise UserError('give --split or --file, not both')
  from charlm import api  # Imports JAX; keep flag errors fast.
  result = api.load(_WORKDIR.value, _STEP.value).evaluate(
      _SPLIT.value, _FILE.value, _BATCH_SIZE.value, _UNKNOWN.value, skip_hint='--unknown=skip')
  print(json.dumps(result, ensure_ascii=False) if _JSON.value else report(result))


if __name__ == '__main__':
  cli.run(main)
