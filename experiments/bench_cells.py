"""Speed of the cell finder: `cells.find_cells` over a long text, with its inputs timed too.

    python experiments/bench_cells.py                      # 200,000 characters, a 2x256 LSTM
    python experiments/bench_cells.py --workdir runs/shakespeare_small --chars 200000
    python experiments/bench_cells.py --chars 20000 --out ''   # a quick look

Reads --chars characters of --text (default ../shared/data/tinyshakespeare.txt) with a 2x256
LSTM (--workdir: a trained run's, else random weights of that shape), then times: the states
of every cell at every character (`internals.activations`, --streams side by side), the same
for the randomly initialised control, and `find_cells` (labels, every cell scored against
every label out of sample, the shuffled-label control, the sparse probes, snippets,
histograms, saturation). Target: the whole hunt in under a minute on a 2-core CPU. Prints a
table and writes JSON (default experiments/results/bench_cells_<platform>.json).
"""
import json
import os
import time

import common
from absl import app, flags

from charlm.errors import exit_on_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 60.0

_TEXT = flags.DEFINE_string('text', os.path.join(ROOT, '..', 'shared', 'data',
                                                 'tinyshakespeare.txt'), 'The text to read.')
_CHARS = flags.DEFINE_integer('chars', 200_000, 'Characters to read.')
_WORKDIR = flags.DEFINE_string('workdir', '', "A trained run (default: random weights, 2x256).")
_STREAMS = flags.DEFINE_integer('streams', 16, 'Parts of the text read side by side.')
_OUT = flags.DEFINE_string('out', None, "JSON results (default experiments/results/"
                           "bench_cells_<platform>.json; '': none).")


def _model(text):
  """(module, params, vocab, start token) of --workdir, or a random 2x256 LSTM over text's."""
  from charlm import data, inspection
  from charlm import model as model_lib
  from configs import default
  if _WORKDIR.value:
    import charlm
    run = charlm.load(_WORKDIR.value)
    return run.module, run.params, run.vocab, run.start_token
  vocab = data.Vocab('char', sorted(set(text)))
  config = default.get_config().model
  config.update(num_layers=2, hidden=256)
  module = model_lib.from_config(config, vocab.size, 1)
  return module, inspection.random_params(module, 0), vocab, vocab.encode('\n')[0]


def main(argv):
  del argv
  common.set_up_host()
  import jax

  from charlm import cells, inspection, internals
  with open(_TEXT.value, encoding='utf-8') as f:
    text = f.read(_CHARS.value)
  module, params, vocab, start = _model(text)
  text = ''.join(c for c in text if not vocab.unknown(c)) if vocab.level == 'char' else text
  ids = vocab.encode(text)
  text = inspection.text_of(vocab, ids)
  times = {}

  def timed(name, fn):
    begin = time.perf_counter()
    out = fn()
    times[name] = time.perf_counter() - begin
    print(f'{name}: {times[name]:.1f} s', flush=True)
    return out

  states = lambda p: {k: v for k, v in internals.activations(
      module, p, ids, start_token=start, streams=_STREAMS.value).items() if k != 'logprobs'}
  acts = timed('activations', lambda: states(params))
  control = timed('control activations', lambda: states(
      inspection.random_params(module, 1)))
  found = timed('find_cells', lambda: cells.find_cells(text, acts, control))
  total = sum(times.values())
  n_cells = found['cells']
  rows = [(name, f'{seconds:.1f}') for name, seconds in times.items()] + [('all', f'{total:.1f}')]
  print(f'\n{len(text):,} characters, {module.num_layers}x{module.hidden} {module.cell} '
        f'({n_cells:,} cells), {jax.devices()[0].platform}, {_STREAMS.value} streams; target: '
        f'under {TARGET_S:.0f} s\n')
  print('| step | seconds |\n| --- | ---: |')
  for name, seconds in rows:
    print(f'| {name} | {seconds} |')
  print(f'\nheadline: {found["headline"]["share"]:.1%} of cells interpretable')
  out = _OUT.value
  if out is None:
    out = os.path.join(ROOT, 'experiments', 'results',
                       f'bench_cells_{jax.devices()[0].platform}.json')
  if out:
    with open(out, 'w') as f:
      json.dump({'machine': common.machine(), 'chars': len(text), 'cells': n_cells,
                 'workdir': _WORKDIR.value or None, 'streams': _STREAMS.value,
                 'seconds': times, 'total_seconds': total, 'target_seconds': TARGET_S,
                 'headline': found['headline']}, f, indent=1)
    print(f'wrote {out}')


if __name__ == '__main__':
  app.run(exit_on_user_error(main))
