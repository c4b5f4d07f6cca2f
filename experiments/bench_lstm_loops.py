r"""How the LSTM loops should run on this backend: layout, unroll, wavefront, narrowing, timed.

    python experiments/bench_lstm_loops.py          # the default candidates, fused bfloat16
    python experiments/bench_lstm_loops.py --sizes 3x512:512x100 \
        --candidate model.loop_layout=batch_major,model.unroll=8,model.unroll_backward=8 \
        --candidate model.impl=wavefront,model.loop_layout=batch_major,model.unroll=8 \
        --candidate model.loop_layout=batch_major,model.unroll=8,model.unroll_divides=false
    python experiments/bench_lstm_loops.py --override model.dtype=float32 \
        --candidate model.native_cpu=true --candidate model.native_cpu=false   # a CPU

A candidate is a comma-separated list of config overrides (SECTION.FIELD=VALUE, see
configs/default.py) on top of charlm's defaults and of --override's, which apply to every
candidate (by default model.impl=fused and model.dtype=bfloat16, the steps the loops were tuned
for; giving --override replaces both). The fields that matter here: model.loop_layout
(feature_major or batch_major state inside XLA's loops), model.unroll and
model.unroll_backward (lax.scan's unroll of the forward and backward loops, rounded to a
divisor of the loop's length unless model.unroll_divides=false: 8 becomes 10 for 100 steps),
model.impl=wavefront (all layers in one loop, batch-major only), model.gate_inputs and
model.saved_gates (with bfloat16 matmuls, the narrower gate inputs and saved gate
activations; 'auto' narrows on GPUs only), model.native_cpu (on a CPU, the native float32
loops of lstm_cpu). The default candidates are XLA's loops (model.native_cpu=false):
feature-major 2/1, batch-major 2/1, 8/8 and 4/4. Each is labelled by its overrides and what
they resolve to (`model.Resolved.describe`).

For each size, every candidate compiles charlm's real train step (experiments/common.py's
`Charlm`), then the compiled steps run in alternating rounds, with the peer (torch.nn.LSTM)
once per size. Later sizes try only the first candidate and the fastest other one of the first
size. Compiling stops at --deadline seconds and the rounds at --max_seconds, so that it fits a
lent GPU's minutes. Prints a markdown table and writes JSON (--bench_out).
"""
import json
import os
import statistics
import time

import common
from absl import app, flags

from charlm.errors import exit_on_user_error

_XLA_LOOPS = [f'model.loop_layout={layout},model.unroll={forward},model.unroll_backward='
              f'{backward},model.native_cpu=false'
              for layout, forward, backward in [('feature_major', 2, 1), ('batch_major', 2, 1),
                                                ('batch_major', 8, 8), ('batch_major', 4, 4)]]
_SIZES = flags.DEFINE_list('sizes', [], 'LxH:BxT sizes (default: the CPU set on a CPU, '
                           '3x512:512x100,3x512:64x100 elsewhere).')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating rounds (medians).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per candidate and round.')
_MAX_SECONDS = flags.DEFINE_float('max_seconds', 0, 'Start no round that would end past this '
                                  'many seconds of rounds (0: no limit); at least one runs.')
_OVERRIDE = flags.DEFINE_multi_string('override', ['model.impl=fused', 'model.dtype=bfloat16'],
                                      'SECTION.FIELD=VALUE for every candidate, before its own; '
                                      'given, it replaces the default.')
_CANDIDATE = flags.DEFINE_multi_string('candidate', _XLA_LOOPS, 'A comma-separated list of '
                                       'overrides; the first is the baseline.')
_DEADLINE = flags.DEFINE_float('deadline', 240, 'Start no compile past this many seconds.')
_PEER_PYTHON = flags.DEFINE_string('peer_python', '', "The peer's python ('': from setup.sh).")
_PEER_DIR = flags.DEFINE_string('peer_dir', common.PEER_DIR,
                                'Folder holding torch_charrnn.py and setup.sh.')
_NO_PEER = flags.DEFINE_bool('no_peer', False, 'Time charlm only.')
_BENCH_OUT = flags.DEFINE_string('bench_out', '', 'JSON results (empty: none).')


@exit_on_user_error
def main(argv):
  del argv
  start = time.perf_counter()
  common.set_up_host()
  shared = [o for text in _OVERRIDE.value for o in common.split_overrides(text)]
  candidates = {}  # Label (its overrides, or 'default') -> its overrides.
  for text in _CANDIDATE.value:
    overrides = common.split_overrides(text)
    common.bench_config(None, shared, overrides)  # A mistake fails here, before JAX starts.
    candidates[','.join(overrides) or 'default'] = overrides
  import jax
  sizes = [common.parse_size(s) for s in _SIZES.value or (
      common.CPU_SIZES if jax.default_backend() == 'cpu' else ['3x512:512x100', '3x512:64x100'])]
  configs = {(size['name'], c): common.bench_config(size, shared, overrides)
             for size in sizes for c, overrides in candidates.items()}
  resolved = {key: common.resolve(config) for key, config in configs.items()}  # Checked.
  python = None if _NO_PEER.value else common.peer_python(_PEER_PYTHON.value, _PEER_DIR.value)
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}; overrides: '
        f'{",".join(shared) or "none"}', flush=True)
  names = {c: f'#{n + 1}' for n, c in enumerate(candidates)}  # Short names for the rounds.
  for c, name in names.items():
    print(f'{name}: {c} ({resolved[sizes[0]["name"], c].describe()})', flush=True)
  runners, tried = {}, list(candidates)
  for n, size in enumerate(sizes):
    if n == 1 and len(runners) > 1:  # Later sizes: the baseline and the first size's best.
      first = {c: r for (name, c), r in runners.items() if name == sizes[0]['name']}
      step_s = {c: statistics.median(r.run(_STEPS.value)) for c, r in first.items()}
      tried = [tried[0], min(list(first)[1:], key=step_s.get)]
    for c in tried:
      if time.perf_counter() - start > _DEADLINE.value:
        print(f'deadline: {size["name"]} {names[c]} not compiled', flush=True)
        continue
      try:
        runner = common.Charlm(size, configs[size['name'], c])
      except Exception as error:  # Out of memory, say: go on without it.
        print(f'failed {size["name"]} {names[c]}: '
              f'{str(error).strip().splitlines()[0][:300]}', flush=True)
        continue
      runners[size['name'], c] = runner
      print(f'compiled {size["name"]} {names[c]} in {runner.compile_s:.1f}s', flush=True)
  rates = {key: [] for key in runners}
  peer = {}
  rounds = 0
  for r in common.timed_rounds(_ROUNDS.value, _MAX_SECONDS.value):
    rounds = r + 1
    for key, runner in runners.items():
      chars = runner.size['batch'] * runner.size['seq']
      rates[key].append(chars / statistics.median(runner.run(_STEPS.value)))
    print(f'round {r + 1}: ' + ', '.join(f'{k[0]} {names[k[1]]} {v[-1]:,.0f}'
                                         for k, v in rates.items()), flush=True)
  if python:
    for size in sizes:
      got = common.peer_run(python, size, _STEPS.value, _PEER_DIR.value)
      peer[size['name']] = size['batch'] * size['seq'] / got['step_s_median']
  rows = []
  print(f'\nmedians of {rounds} rounds of {_STEPS.value} steps\n')
  print('| size | candidate: what runs | chars/s | vs first | vs peer | compile s | step MB |')
  print('| --- | --- | ---: | ---: | ---: | ---: | ---: |')
  baseline = next(iter(candidates))
  for (name, c), got in rates.items():
    rate, runner = statistics.median(got), runners[name, c]
    base = statistics.median(rates.get((name, baseline), got))
    row = {'size': name, 'candidate': c, 'overrides': shared + candidates[c],
           'describe': runner.resolved.describe(), 'resolved': runner.resolved.to_json(),
           'impl': runner.impl, 'dtype': runner.resolved.dtype, 'chars_per_s': rate,
           'rounds': got, 'vs_first': rate / base, 'peer_chars_per_s': peer.get(name),
           'compile_s': runner.compile_s, 'step_mb': runner.step_mb}
    rows.append(row)
    vs_peer = f'{rate / peer[name]:.2f}x' if name in peer else '-'
    print(f'| {name} | {names[c]} {c}: {row["describe"]} | {rate:,.0f} | {rate / base:.2f}x | '
          f'{vs_peer} | {row["compile_s"]:.1f} | {row["step_mb"] or 0:.0f} |')
  if _BENCH_OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_BENCH_OUT.value)), exist_ok=True)
    with open(_BENCH_OUT.value, 'w') as f:
      json.dump({'machine': common.machine(), 'overrides': shared,
                 'candidates': list(candidates), 'peer_chars_per_s': peer, 'results': rows},
                f, indent=2)


if __name__ == '__main__':
  app.run(main)
