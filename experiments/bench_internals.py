"""Speed of looking inside: `internals.activations` against training the same model, in one run.

    python experiments/bench_internals.py            # 2x256, 1 and 32 streams, both loops
    python experiments/bench_internals.py --streams 1,16,64 --kinds all,h,none --rounds 5
    python experiments/bench_internals.py --chars 8000 --rounds 1 --out ''   # a quick look

An LSTM of the size given (vocabulary 65, random weights: speed does not depend on them) reads
random text with `activations`, for each loop ('layers': the model's own forward; 'steps': one
compiled step per character, as sampling runs), number of streams and set of states returned
(--kinds: 'all' is h, c, i, f, g, o of every layer; 'h+c' those two; 'none' no states, so the
model's plain forward; the log-probabilities always), each at its default chunk. Then `ablate`
holds --ablate_cells cells of the last layer's c, one at a time, over --ablate_chars characters
(rate: cells x characters per second). In the same process, charlm's train step runs on the
same model at the size's batch (`common.Charlm`, as bench_train.py runs it). Each round times
every variant once and then the train step, so that machine noise hits both; the table gives
medians over rounds of the rates and of each round's ratio to training (its range in
brackets), compiling not counted. Target: activations at least 3x training's characters per
second.
"""
import os
import statistics
import sys
import time

import common
import numpy as np
from absl import app, flags

from charlm.errors import exit_on_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 3.0

_SIZE = flags.DEFINE_string('size', '2x256:32x64', 'LxH:BxT: the model, and the batch training '
                            'runs at.')
_STREAMS = flags.DEFINE_list('streams', ['1', '32'], 'Numbers of streams to read in.')
_LOOPS = flags.DEFINE_list('loops', ['layers', 'steps'], "activations' loops to time.")
_KINDS = flags.DEFINE_list('kinds', ['all'], "Sets of states to return: 'all', 'none', or kinds "
                          "joined by '+' (h+c).")
_CHARS = flags.DEFINE_integer('chars', 64000, 'Characters of text per activations call.')
_ABLATE_CELLS = flags.DEFINE_integer('ablate_cells', 32, 'Cells ablate holds (0: no ablation).')
_ABLATE_CHARS = flags.DEFINE_integer('ablate_chars', 8000, 'Characters of text ablate reads.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds (medians).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed train steps per round.')
_OUT = flags.DEFINE_string('out', os.path.join(ROOT, 'experiments', 'results',
                                               'bench_internals_cpu.json'),
                           "JSON results ('': none).")


@exit_on_user_error
def main(argv):
  del argv
  common.set_up_host()
  size = common.parse_size(_SIZE.value)
  import jax
  import jax.numpy as jnp

  from charlm import internals
  from charlm import model as model_lib
  config = common.bench_config(size)
  trainer = common.Charlm(size, config)
  model = model_lib.from_config(config.model, common.VOCAB, size['batch'])
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                      model.initial_carry(1))['params']
  rng = np.random.default_rng(0)
  ids = rng.integers(0, common.VOCAB, _CHARS.value)
  variants = [(loop, int(s), kinds) for loop in _LOOPS.value for s in _STREAMS.value
              for kinds in _KINDS.value]
  read = lambda text, loop, streams, kinds: internals.activations(
      model, params, text, start_token=0, streams=streams, loop=loop,
      kinds={'all': None, 'none': ()}.get(kinds, kinds.split('+')))
  cells = [(size['layers'] - 1, 'c', i) for i in range(_ABLATE_CELLS.value)]
  ablate_ids = rng.integers(0, common.VOCAB, _ABLATE_CHARS.value)
  ablate = lambda text: internals.ablate(model, params, text, cells, start_token=0)
  for variant in variants:  # Compiles: the chunk follows the text's length.
    read(ids, *variant)
  if cells:
    ablate(ablate_ids)
  rates = {v: [] for v in variants} | {'ablate': []}
  train = []
  label = lambda v: f'{v[0]} x{v[1]} {v[2]}'
  for r in range(_ROUNDS.value):
    for variant in variants:
      start = time.perf_counter()
      read(ids, *variant)
      rates[variant].append(len(ids) / (time.perf_counter() - start))
    if cells:
      start = time.perf_counter()
      ablate(ablate_ids)
      rates['ablate'].append(len(cells) * len(ablate_ids) / (time.perf_counter() - start))
    step_s = statistics.median(trainer.run(_STEPS.value))
    train.append(size['batch'] * size['seq'] / step_s)
    print(f'round {r + 1}: training {train[-1]:,.0f} chars/s; ' + ', '.join(
        f'{label(v)} {rates[v][-1]:,.0f}' for v in variants)
        + (f'; ablate {rates["ablate"][-1]:,.0f} cell-chars/s' if cells else ''),
        file=sys.stderr, flush=True)
  train_rate = statistics.median(train)
  print(f'\n{size["layers"]}x{size["hidden"]} LSTM, vocabulary {common.VOCAB}, '
        f'{model_lib.resolved(model).describe()}; {len(ids):,} characters per call, medians of '
        f'{_ROUNDS.value} rounds. Training (batch {size["batch"]} x {size["seq"]}): '
        f'{train_rate:,.0f} chars/s\n')
  print('| loop | streams | states | activations chars/s (min-max) | x training (range) | target |')
  print('| --- | ---: | --- | ---: | ---: | ---: |')
  rows = []
  for variant in variants:
    loop, streams, kinds = variant
    rate = statistics.median(rates[variant])
    ratios = [r / t for r, t in zip(rates[variant], train, strict=True)]
    ratio = statistics.median(ratios)
    rows.append({'loop': loop, 'streams': streams, 'kinds': kinds, 'chars_per_s': rate,
                 'rounds': rates[variant], 'vs_training': ratio, 'round_ratios': ratios})
    print(f'| {loop} | {streams} | {kinds} | {rate:,.0f} ({min(rates[variant]):,.0f}-'
          f'{max(rates[variant]):,.0f}) | {ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | '
          f'{TARGET:g}x{" (met)" if ratio >= TARGET else ""} |')
  ablation = None
  if cells:
    ablation = {'cells': len(cells), 'chars': len(ablate_ids),
                'streams': internals.ABLATE_STREAMS,
                'cell_chars_per_s': statistics.median(rates['ablate']),
                'rounds': rates['ablate']}
    print(f'\nablate: {len(cells)} cells over {len(ablate_ids):,} characters in '
          f'{internals.ABLATE_STREAMS} streams: {ablation["cell_chars_per_s"]:,.0f} cell x '
          'characters per second')
  if _OUT.value:
    result = {'command': 'python ' + ' '.join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              'machine': common.machine() | {'load_average': os.getloadavg()},
              'size': size, 'resolved': model_lib.resolved(model).to_json(),
              'chars_per_call': len(ids), 'training_chars_per_s': train_rate,
              'training_rounds': train, 'rows': rows, 'ablate': ablation}
    common.write_results(_OUT.value, result)


if __name__ == '__main__':
  app.run(main)
