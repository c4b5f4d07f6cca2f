"""How the LSTM loops should run on this backend: layout, unroll, wavefront, timed.

    python experiments/bench_lstm_loops.py --sizes 3x512:512x100,3x512:64x100 --dtype bfloat16
    python experiments/bench_lstm_loops.py --loops bm:8:8,wavefront/bm:8:8,wavefront/bm:16:16
    python experiments/bench_lstm_loops.py --loops bm:8:8,bm:8:8+remainder,bm:25:25,bm:50:50
    python experiments/bench_lstm_loops.py --loops bm:8:8,bm:8:8+f32gx,bm:8:8+f32gx+f32t

A candidate is [wavefront/]LOOPS[+remainder][+bf16gx|+f32gx][+f16t|+f32t]. LOOPS is a setting of
`lstm_kernel.GPU_LOOPS` (or `CPU_LOOPS` on a CPU): state layout inside the loops, fm
(feature-major) or bm (batch-major), then forward and backward unroll, which the loops round to
a nearby divisor of their length (`lstm_kernel.unroll_for`: 8 becomes 10 for 100 steps); on a
CPU it may also be `native`, the native loops of `lstm_cpu`, which the others turn off.
`wavefront/` runs model.impl='wavefront' (lstm_wavefront, batch-major only) instead of
'fused'; `+remainder` keeps the unrolls as they are, with lax.scan's remainder loop
(`UNROLL_DIVIDES = False`); with bfloat16 matmuls, `+bf16gx` passes the loops bfloat16 gate
inputs and takes bfloat16 gradients back (`model.GATE_INPUTS_BFLOAT16`), `+f16t` saves the gate
activations for the backward loop in float16 (`lstm_kernel.SAVED_GATES_FLOAT16`); both are on by
default on GPUs only, and `+f32gx` / `+f32t` turn them off.
For each size, every candidate compiles charlm's real train step
(experiments/bench_train.py's), then the compiled steps run in alternating rounds, with the
peer (torch.nn.LSTM) once per size. Later sizes try only the first candidate and the fastest
other one of the first size. Compiling stops at --deadline seconds and the rounds at
--max_seconds, so that it fits a lent GPU's minutes. Prints a markdown table and writes JSON
(--bench_out).
"""
import json
import os
import statistics
import time
from typing import NamedTuple

import bench_train
from absl import app, flags

_LOOPS = flags.DEFINE_list('loops', ['fm:2:1', 'bm:2:1', 'bm:8:8', 'bm:4:4'],
                           'Candidates layout:forward unroll:backward unroll, layout fm '
                           '(feature-major) or bm (batch-major), or native (CPUs); a prefix '
                           'wavefront/ runs model.impl=wavefront, a suffix +remainder keeps '
                           "unrolls that do not divide the loop's length, +bf16gx or +f32gx "
                           'bfloat16 or float32 gate inputs, +f16t or +f32t gate activations '
                           'saved in float16 or float32; the first is the baseline.')
_DTYPE = flags.DEFINE_string('dtype', 'bfloat16', "charlm's model.dtype.")
_DEADLINE = flags.DEFINE_float('deadline', 240, 'Start no compile past this many seconds.')
_BENCH_OUT = flags.DEFINE_string('bench_out', '', 'JSON results (empty: none).')


class Candidate(NamedTuple):
  impl: str  # model.impl
  loops: str
  options: frozenset  # Names of bench_train.OPTIONS.


def parse_candidate(text: str) -> Candidate:
  """'[impl/]loops[+option...]' (bench_train.OPTIONS), checked."""
  impl, _, rest = text.rpartition('/')
  loops, *options = rest.split('+')
  impl = impl or 'fused'
  if impl not in ('fused', 'wavefront'):
    raise app.UsageError(f'{text}: use [wavefront/]LOOPS[+OPTION...]')
  options = bench_train.parse_options(text, options)
  feature_major = None
  if loops != 'native':
    try:
      feature_major = parse_loops(loops)[0]
    except ValueError:
      raise app.UsageError(f'{text}: LOOPS is native or fm|bm:FORWARD:BACKWARD') from None
    if impl == 'wavefront' and feature_major:
      raise app.UsageError(f'{text}: the wavefront loop is batch-major only (bm)')
  return Candidate(impl, loops, options)


def parse_loops(text: str) -> tuple:
  layout, forward, backward = text.split(':')
  return layout == 'fm', int(forward), int(backward)


def loops_setting() -> str:
  """The lstm_kernel setting that this backend's XLA loops read (see lstm_kernel._loops)."""
  import jax
  return 'CPU_LOOPS' if jax.default_backend() == 'cpu' else 'GPU_LOOPS'


def set_loops(text: str) -> None:
  """Makes the LSTM run the loops `text` names (a candidate of --loops)."""
  from charlm import lstm_kernel
  candidate = parse_candidate(text)
  bench_train.set_options(candidate.options)
  lstm_kernel.NATIVE_CPU = candidate.loops == 'native'
  if candidate.loops != 'native':
    setattr(lstm_kernel, loops_setting(), parse_loops(candidate.loops))


def main(argv):
  del argv
  start = time.perf_counter()
  bench_train.set_up_host()
  import jax

  from charlm import lstm_kernel
  attr = loops_setting()
  sizes = [bench_train.parse_size(s) for s in bench_train._SIZES.value]
  python = (None if bench_train._NO_PEER.value else
            bench_train.peer_lib.peer_python(bench_train._PEER_PYTHON.value,
                                             bench_train._PEER_DIR.value))
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}, {attr} now '
        f'{getattr(lstm_kernel, attr)}', flush=True)
  runners, candidates = {}, list(_LOOPS.value)
  for loops in candidates:
    parse_candidate(loops)
  for n, size in enumerate(sizes):
    if n == 1 and len(runners) > 1:  # Later sizes: the baseline and the first size's best.
      first = {loops: r for (name, loops), r in runners.items() if name == sizes[0]['name']}
      step_s = {loops: statistics.median(r.run(bench_train._STEPS.value))
                for loops, r in first.items()}
      candidates = [candidates[0], min(list(first)[1:], key=step_s.get)]
    for loops in candidates:
      if time.perf_counter() - start > _DEADLINE.value:
        print(f'deadline: {size["name"]} {loops} not compiled', flush=True)
        continue
      impl = parse_candidate(loops).impl
      set_loops(loops)
      try:
        runner = bench_train.Charlm(size, impl, _DTYPE.value)
      except Exception as error:  # Out of memory, say: go on without it.
        print(f'failed {size["name"]} {loops}: {str(error).strip().splitlines()[0][:300]}',
              flush=True)
        continue
      runners[size['name'], loops] = runner
      print(f'compiled {size["name"]} {loops} in {runner.compile_s:.1f}s', flush=True)
  rates = {key: [] for key in runners}
  peer = {}
  for r in bench_train.timed_rounds():
    for key, runner in runners.items():
      chars = runner.size['batch'] * runner.size['seq']
      rates[key].append(chars / statistics.median(runner.run(bench_train._STEPS.value)))
    print(f'round {r + 1}: ' + ', '.join(f'{k[0]} {k[1]} {v[-1]:,.0f}' for k, v in rates.items()),
          flush=True)
  if python:
    for size in sizes:
      got = bench_train.peer_run(python, size, bench_train._STEPS.value)
      peer[size['name']] = size['batch'] * size['seq'] / got['step_s_median']
  rows = []
  print(f'\n{_DTYPE.value}, medians of {bench_train._ROUNDS.value} rounds of '
        f'{bench_train._STEPS.value} steps\n')
  print('| size | loops | chars/s | vs first | vs peer | compile s | step MB |')
  print('| --- | --- | ---: | ---: | ---: | ---: | ---: |')
  for (name, loops), got in rates.items():
    rate = statistics.median(got)
    base = statistics.median(rates.get((name, _LOOPS.value[0]), got))
    row = {'size': name, 'loops': loops, 'options': sorted(parse_candidate(loops).options),
           'impl': runners[name, loops].impl, 'dtype': _DTYPE.value, 'chars_per_s': rate,
           'rounds': got, 'vs_first': rate / base, 'peer_chars_per_s': peer.get(name),
           'compile_s': runners[name, loops].compile_s,
           'step_mb': runners[name, loops].step_mb}
    rows.append(row)
    vs_peer = f'{rate / peer[name]:.2f}x' if name in peer else '-'
    print(f'| {name} | {loops} | {rate:,.0f} | {rate / base:.2f}x | {vs_peer} | '
          f'{row["compile_s"]:.1f} | {row["step_mb"] or 0:.0f} |')
  if _BENCH_OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_BENCH_OUT.value)), exist_ok=True)
    with open(_BENCH_OUT.value, 'w') as f:
      json.dump({'machine': bench_train.machine(), 'peer_chars_per_s': peer, 'results': rows},
                f, indent=2)


if __name__ == '__main__':
  app.run(main)
