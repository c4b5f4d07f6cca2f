"""Sampling speed: charlm's compiled sampler against the PyTorch peer's per-character loop.

    python experiments/bench_sample.py            # 2x256 LSTM, 1 and 64 streams, 3 reps (minutes)
    python experiments/bench_sample.py --reps 1 --length 500 --out ''   # a quick look

The same model size on both sides (random weights: speed does not depend on them), temperature
sampling at 1.0, vocabulary 65. Each rep runs, for each number of streams, charlm (in this
process, compiled beforehand) and then the peer (`../shared/bench/torch_charrnn.py sample` in its
own environment, made by `../shared/bench/setup.sh`), so both see the same machine load; the
table gives medians over reps. Also measured in the same run: the float32 matmul rate of the
machine (a 2048^3 jnp.dot), the rate charlm's 64-stream step reaches, and two ceilings: the
speedup over the peer if every sampling FLOP ran at the best matmul rate, and the rate of a
compiled loop of the per-character matmuls alone (nothing else), which any sampler of the
model must at least do. Targets: one stream at
least 30x the peer's one stream, 64 streams at least 8x the peer's 64 streams.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import common
import numpy as np
from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {1: 30.0, 64: 8.0}

_LAYERS = flags.DEFINE_integer('layers', 2, 'LSTM layers.')
_HIDDEN = flags.DEFINE_integer('hidden', 256, 'LSTM units per layer.')
_VOCAB = flags.DEFINE_integer('vocab', 65, 'Vocabulary size.')
_STREAMS = flags.DEFINE_list('streams', ['1', '64'], 'Numbers of parallel samples.')
_LENGTH = flags.DEFINE_integer('length', 2000, 'Characters per stream for one stream.')
_BATCH_CHARS = flags.DEFINE_integer('batch_chars', 32000,
                                    'Characters in total for more than one stream.')
_REPS = flags.DEFINE_integer('reps', 3, 'Alternating charlm/peer repetitions (medians).')
_PEER_PYTHON = flags.DEFINE_string('peer_python', '', "The peer's python ('': from setup.sh).")
_PEER_DIR = flags.DEFINE_string('peer_dir', common.PEER_DIR,
                                'Folder holding torch_charrnn.py and setup.sh.')
_OUT = flags.DEFINE_string('out', os.path.join(ROOT, 'experiments', 'results',
                                               'bench_sample.json'), "JSON results ('': none).")


def seconds(fn, reps: int = 1) -> float:
  """The median wall time of `reps` calls of fn()."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def charlm_rate(streams: int, length: int) -> float:
  """Characters per second of charlm's sampler, generating `length` per stream."""
  import jax
  import jax.numpy as jnp

  from charlm.data import Vocab
  from charlm.model import CharRNN
  from charlm.sampling import Sampler
  model = CharRNN(vocab_size=_VOCAB.value, num_layers=_LAYERS.value, hidden=_HIDDEN.value)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                      model.initial_carry(1))['params']
  sampler = Sampler(model, Vocab('char', [chr(32 + i) for i in range(_VOCAB.value)]))
  run = lambda n: [t for t in sampler.generate(params, [0], n, num_samples=streams, seed=1)]
  run(1)  # Compiles.
  return streams * length / seconds(lambda: run(length))


def matmuls_alone_rate(streams: int, length: int) -> float:
  """Characters per second of a compiled loop doing only the matmuls a sampler must do per
  character (the recurrent ones, the upper layers' input ones, the output layer's), each step
  depending on the last: a ceiling for any sampler of this model on this machine."""
  import jax
  import jax.numpy as jnp
  h, v = _HIDDEN.value, _VOCAB.value
  rng = np.random.default_rng(0)
  shapes = [(h, 4 * h)] + [(2 * h, 4 * h)] * (_LAYERS.value - 1) + [(h, v)]
  weights = [jnp.asarray(rng.normal(0, 0.05, s), jnp.float32) for s in shapes]

  def step(hs, _):
    new, x = [], None
    for w, state in zip(weights[:-1], hs, strict=True):
      inputs = state if x is None else jnp.concatenate([x, state], axis=-1)
      x = jnp.tanh((inputs @ w)[:, :h])  # Stands in for the gates: keeps the steps dependent.
      new.append(x)
    return new, x @ weights[-1]

  loop = jax.jit(lambda hs: jax.lax.scan(step, hs, None, length=length)[1])
  hs = [jnp.zeros((streams, h), jnp.float32)] * _LAYERS.value
  jax.block_until_ready(loop(hs))
  return streams * length / seconds(lambda: jax.block_until_ready(loop(hs)), reps=3)


def peer_rate(python: str, streams: int, length: int) -> dict:
  out = subprocess.run(
      [python, os.path.join(_PEER_DIR.value, 'torch_charrnn.py'), 'sample', '--layers',
       str(_LAYERS.value), '--hidden', str(_HIDDEN.value), '--vocab', str(_VOCAB.value),
       '--batch', str(streams), '--length', str(length), '--reps', '1'],
      check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def flops_per_char() -> int:
  """FLOPs of one sampling step per stream: recurrent, upper-layer input and output matmuls."""
  h, v = _HIDDEN.value, _VOCAB.value
  return 2 * (4 * h * h + (_LAYERS.value - 1) * 4 * h * 2 * h + h * v)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  python = common.peer_python(_PEER_PYTHON.value, _PEER_DIR.value)
  streams = [int(s) for s in _STREAMS.value]
  length = {s: _LENGTH.value if s == 1 else max(1, _BATCH_CHARS.value // s) for s in streams}
  reps = {s: {'charlm': [], 'peer': [], 'matmuls': []} for s in streams}
  matmul, peer_meta = [], {}
  for rep in range(_REPS.value):
    matmul.append(common.matmul_rate())
    for s in streams:
      reps[s]['charlm'].append(charlm_rate(s, length[s]))
      reps[s]['matmuls'].append(matmuls_alone_rate(s, length[s]))
      peer = peer_rate(python, s, length[s])
      peer_meta = {k: peer[k] for k in ('peer', 'torch', 'device', 'threads')}
      reps[s]['peer'].append(peer['chars_per_s'])
      print(f'rep {rep + 1}: {s} streams: charlm {reps[s]["charlm"][-1]:,.0f} chars/s, peer '
            f'{reps[s]["peer"][-1]:,.0f} chars/s', file=sys.stderr, flush=True)

  # Ceilings, no gate math or sampling counted: every sampling FLOP at the best 2048^3 matmul
  # rate, and the best rate of the per-character matmuls alone in a loop (for one stream
  # they are matrix-vector products, bound by memory, not by the FLOP rate).
  bound = max(matmul) * 1e9 / flops_per_char()
  rows = []
  for s in streams:
    alone = max(reps[s]['matmuls'])
    ours, theirs = (statistics.median(reps[s][k]) for k in ('charlm', 'peer'))
    rows.append({'streams': s, 'chars_per_stream': length[s], 'charlm_chars_per_s': ours,
                 'peer_chars_per_s': theirs, 'speedup': ours / theirs,
                 'target': TARGETS.get(s), 'charlm_gflops': ours * flops_per_char() / 1e9,
                 'matmul_bound_chars_per_s': bound, 'matmul_bound_speedup': bound / theirs,
                 'matmuls_alone_chars_per_s': alone, 'matmuls_alone_speedup': alone / theirs,
                 'matmuls_alone_reps': reps[s]['matmuls'],
                 'charlm_reps': reps[s]['charlm'], 'peer_reps': reps[s]['peer']})
  rate = statistics.median(matmul)
  print(f'\n{_LAYERS.value}x{_HIDDEN.value} LSTM, vocabulary {_VOCAB.value}, temperature 1.0; '
        f'medians of {_REPS.value} alternating reps; matmul rate {rate:.0f} GFLOP/s (median), '
        f'{max(matmul):.0f} (best). Ceilings over the peer: every sampling FLOP at the best '
        'matmul rate; the per-character matmuls alone in a compiled loop (best rep)\n')
  print('| streams | charlm chars/s (min-max) | peer chars/s (min-max) | speedup | target | '
        'charlm GFLOP/s | ceiling: FLOPs at peak | ceiling: matmuls alone |')
  print('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  spread = lambda values: f'{min(values):,.0f}-{max(values):,.0f}'
  for r in rows:
    target = f'{r["target"]:.0f}x' if r['target'] else '-'
    met = '' if not r['target'] else (' (met)' if r['speedup'] >= r['target'] else ' (MISSED)')
    print(f'| {r["streams"]} | {r["charlm_chars_per_s"]:,.0f} ({spread(r["charlm_reps"])}) | '
          f'{r["peer_chars_per_s"]:,.0f} ({spread(r["peer_reps"])}) | {r["speedup"]:.1f}x | '
          f'{target}{met} | {r["charlm_gflops"]:.0f} ({r["charlm_gflops"] / rate:.0%} of matmul) | '
          f'{r["matmul_bound_speedup"]:.1f}x | {r["matmuls_alone_chars_per_s"]:,.0f} chars/s = '
          f'{r["matmuls_alone_speedup"]:.1f}x |')
  if _OUT.value:
    import jax
    result = {'command': 'python ' + ' '.join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              'machine': f'{platform.machine()}, {os.cpu_count()} cores, load average '
                         f'{os.getloadavg()[0]:.1f}',
              'jax': jax.__version__, 'peer': peer_meta, 'model': {
                  'cell': 'lstm', 'layers': _LAYERS.value, 'hidden': _HIDDEN.value,
                  'vocab': _VOCAB.value, 'flops_per_char': flops_per_char()},
              'matmul_gflops': matmul, 'rows': rows}
    common.write_results(_OUT.value, result)


if __name__ == '__main__':
  app.run(main)
