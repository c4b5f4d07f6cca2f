"""Where charlm's train step spends its time: a profiler trace of a few steps, summarized.

    python experiments/profile_step.py --size 2x128:32x64
    python experiments/profile_step.py --size 2x128:32x64 --override model.native_cpu=false
    python experiments/profile_step.py --size 3x512:512x100 --override model.dtype=bfloat16  # GPU

Compiles charlm's real train step (experiments/common.py's `Charlm`, on the CPU devices
charlm.train would use) with charlm's defaults and the --override SECTION.FIELD=VALUE given
(configs/default.py's fields, e.g. model.impl=wavefront or model.unroll=8), prints what they
resolve to (`model.Resolved.describe`), runs --profile_steps steps under `jax.profiler.trace`
and reads the trace back. Prints each timeline lane's busy time per step (on a GPU also how
much of the step its streams were idle, which is launch and loop overhead), then the operations
or kernels that took the most time. The trace stays in --trace_dir for TensorBoard or
https://ui.perfetto.dev.
"""
import collections
import glob
import gzip
import json
import os
import shutil

import common
from absl import app, flags

from charlm.errors import exit_on_user_error

_SIZE = flags.DEFINE_string('size', '2x128:32x64', 'LxH:BxT.')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'SECTION.FIELD=VALUE on top of '
                                      'configs/default.py (or a comma-separated list of them), '
                                      'e.g. model.impl=fused.')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 5, 'Steps traced.')
_TOP = flags.DEFINE_integer('top', 30, 'Operations listed.')
_TRACE_DIR = flags.DEFINE_string('trace_dir', '/tmp/charlm-profile', 'Where the trace goes '
                                 '(emptied first).')

# Wrappers around the operations (whole programs, loops, thunks), left out of the op list.
_WRAPPERS = ('$', 'Thunk', 'Pjit', 'while', 'Execute', 'PjRt', 'jit_', 'XLA Modules')


def lanes_of(trace_file: str) -> dict:
  """{(process, thread): [(start_us, duration_us, name), ...]} of the trace's complete events."""
  events = json.load(gzip.open(trace_file))
  events = events['traceEvents'] if isinstance(events, dict) else events
  process, thread = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      process[e['pid']] = e['args']['name']
    elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
      thread[e['pid'], e['tid']] = e['args']['name']
  lanes = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X':
      key = (process.get(e['pid'], str(e['pid'])), thread.get((e['pid'], e['tid']), str(e['tid'])))
      lanes[key].append((float(e['ts']), float(e.get('dur', 0)), e['name']))
  return lanes


def covered_us(spans) -> float:
  """Microseconds covered by the union of (start, duration) spans."""
  total, end = 0.0, float('-inf')
  for start, duration in sorted(spans):
    if start + duration > end:
      total += start + duration - max(start, end)
      end = start + duration
  return total


@exit_on_user_error
def main(argv):
  del argv
  common.set_up_host()
  size = common.parse_size(_SIZE.value)
  config = common.bench_config(size, [o for text in _OVERRIDE.value
                                      for o in common.split_overrides(text)])
  import jax
  common.resolve(config)  # A bad setting fails here, in one line.
  runner = common.Charlm(size, config)
  runner.run(3)
  shutil.rmtree(_TRACE_DIR.value, ignore_errors=True)
  steps = _PROFILE_STEPS.value
  with jax.profiler.trace(_TRACE_DIR.value, create_perfetto_trace=True):
    times = runner.run(steps)
  step_ms = 1e3 * sum(times) / steps
  chars = size['batch'] * size['seq']
  print(f'{jax.devices()[0].device_kind} x {runner.devices}, {size["name"]}, '
        f'{runner.resolved.describe()}: {step_ms:.2f} ms a step while traced '
        f'({chars / step_ms * 1e3:,.0f} chars/s)\n')
  trace = glob.glob(os.path.join(_TRACE_DIR.value, '**', '*.trace.json.gz'), recursive=True)
  lanes = lanes_of(trace[0])
  device_lanes = {k: v for k, v in lanes.items() if k[0].startswith('/device')}
  streams = {k: v for k, v in device_lanes.items() if 'Stream' in k[1]}  # A GPU's kernels.
  op_lanes = streams or {k: v for k, v in (device_lanes or lanes).items()
                         if not any(w in k[1] for w in _WRAPPERS) and k[1] != 'python'}
  print('| lane | events a step | busy ms a step | share of the step |')
  print('| --- | ---: | ---: | ---: |')
  for (proc, thread), spans in sorted(lanes.items(), key=lambda kv: -len(kv[1]))[:12]:
    busy = covered_us([(s, d) for s, d, _ in spans]) / 1e3 / steps
    print(f'| {proc} {thread} | {len(spans) / steps:,.0f} | {busy:.2f} | '
          f'{busy / step_ms:.0%} |')
  if streams:
    busy = covered_us([(s, d) for v in streams.values() for s, d, _ in v]) / 1e3 / steps
    print(f'\nGPU streams busy {busy:.2f} ms a step, idle {step_ms - busy:.2f} ms '
          f'({1 - busy / step_ms:.0%} of the step)')
  totals = collections.defaultdict(lambda: [0, 0.0])
  for spans in op_lanes.values():
    for _, duration, name in spans:
      if not any(name.startswith(w) or w in name for w in _WRAPPERS):
        totals[name][0] += 1
        totals[name][1] += duration
  print(f'\n| operation | ms a step | calls a step | us a call |  (top {_TOP.value})')
  print('| --- | ---: | ---: | ---: |')
  for name, (count, duration) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:_TOP.value]:
    print(f'| {name[:80]} | {duration / 1e3 / steps:.2f} | {count / steps:,.0f} | '
          f'{duration / count:.1f} |')
  print(f'\ntrace: {trace[0]}')


if __name__ == '__main__':
  app.run(main)
