"""Training speed: charlm's train step against PyTorch's LSTM (the peer), alternating in one run.

    python experiments/bench_train.py              # the CPU sizes, 5 rounds (about 10 minutes)
    python experiments/bench_train.py --sizes 2x256:32x64 --rounds 2 --out ''   # a quick look
    python experiments/bench_train.py --variants fused:float32,fused:bfloat16,cudnn:float32  # GPU
    python experiments/bench_train.py --variants fused:bfloat16,fused:bfloat16+bf16gx+f16t  # GPU

A size LxH:BxT is L LSTM layers of H units, batch B, sequence T; vocabulary 65, embedding H,
Adam 2e-3, global-norm clipping 5, hidden state carried from step to step, random characters
(speed does not depend on the text). charlm runs its real train step: `trainer.build` and
`trainer.make_train_step`, jitted with the state donated and sharded as `charlm.train` does.
The peer is `../shared/bench/torch_charrnn.py train` (torch.nn.LSTM: oneDNN on a CPU, cuDNN on
a GPU) in its own environment, made by `../shared/bench/setup.sh`.

Each round runs, for every size, charlm (compiled beforehand, in this process) and then the
peer, so that machine noise hits both; both time every step to its end and take the median
step time of the round. The table gives medians over rounds; the ratio is the median of each
round's charlm/peer ratio (its range in brackets). Also in the same run: the matmul rate of
this machine (a 2048^3 float32 jnp.dot on a CPU; on a GPU 8192^3 in each variant's dtype, where
float32 is JAX's default TF32; the best of all rounds is the "peak"), the
training FLOPs per character (6 x matmul parameters, the same count for both, although charlm's
first layer looks its input projection up in a table instead of multiplying, so that its share
of the peak can pass 100%: at 2x512 a quarter of the counted FLOPs are that projection's), the
jit compile time and memory. On a CPU the process has two CPU devices and each size's mesh
takes as many as `charlm.train` would use (`host.cpu_devices`: 1 with the native LSTM loops,
else 2 for hidden <= 256); the table says how many.
A variant may add options, +NAME each, that set charlm's speed settings for its own compile:
+remainder (lstm_kernel.UNROLL_DIVIDES off), +bf16gx or +f32gx (model.GATE_INPUTS_BFLOAT16 on
or off; by default on GPUs only), +f16t or +f32t (lstm_kernel.SAVED_GATES_FLOAT16, likewise).
Results: a markdown table on stdout and JSON under experiments/results/.
"""
import functools
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import peer as peer_lib
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 65
CPU_SIZES = ['2x128:32x64', '2x256:32x64', '2x512:32x64', '3x512:50x50']
GPU_SIZES = CPU_SIZES + ['3x512:64x100', '3x512:100x100', '3x512:512x100']

_SIZES = flags.DEFINE_list('sizes', [], 'LxH:BxT sizes (default: the CPU or GPU set).')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating charlm/peer rounds (medians).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per size and round, on each side.')
_MAX_SECONDS = flags.DEFINE_float('max_seconds', 0, 'Start no round that would end past this '
                                  'many seconds of rounds (compiling not counted; 0: no limit); '
                                  'at least one round runs.')
_VARIANTS = flags.DEFINE_list('variants', ['fused:float32'], "charlm's model.impl:model.dtype "
                              "pairs, each with options +NAME or not, each timed against the "
                              "same peer runs (e.g. fused:float32,fused:bfloat16+bf16gx).")
_PEER_PYTHON = flags.DEFINE_string('peer_python', '', "The peer's python ('': from setup.sh).")
_PEER_DIR = flags.DEFINE_string('peer_dir', peer_lib.PEER_DIR,
                                'Folder holding torch_charrnn.py and setup.sh.')
_NO_PEER = flags.DEFINE_bool('no_peer', False, 'Run charlm only.')
_OUT = flags.DEFINE_string('out', None, "JSON results (default experiments/results/"
                           "bench_train_<platform>.json; '': none).")


# A variant's options: name -> (charlm module, setting, the value the option sets); a setting
# that no option of a variant names keeps charlm's default (None: on GPUs only).
OPTIONS = {'remainder': ('lstm_kernel', 'UNROLL_DIVIDES', False),
           'bf16gx': ('model', 'GATE_INPUTS_BFLOAT16', True),
           'f32gx': ('model', 'GATE_INPUTS_BFLOAT16', False),
           'f16t': ('lstm_kernel', 'SAVED_GATES_FLOAT16', True),
           'f32t': ('lstm_kernel', 'SAVED_GATES_FLOAT16', False)}


@functools.cache
def charlm_defaults() -> dict:
  """(module, setting) -> charlm's own value, for each setting of OPTIONS; read once, before
  set_options first changes them."""
  return {(module, setting): getattr(importlib.import_module(f'charlm.{module}'), setting)
          for module, setting, _ in OPTIONS.values()}


def parse_options(text: str, options: list) -> frozenset:
  """The options of `text` (a variant or candidate), checked: known, and each setting named
  at most once."""
  settings = [OPTIONS[name][:2] for name in options if name in OPTIONS]
  if len(settings) < len(options) or len(set(settings)) < len(settings):
    raise app.UsageError(f'{text}: options are +{", +".join(OPTIONS)}, each setting at most '
                         'once')
  return frozenset(options)


def set_options(options) -> None:
  """Sets the charlm settings of `options` (OPTIONS' names), and the others to their defaults,
  for the steps compiled next."""
  values = dict(charlm_defaults())
  for name in options:
    module, setting, value = OPTIONS[name]
    values[module, setting] = value
  for (module, setting), value in values.items():
    setattr(importlib.import_module(f'charlm.{module}'), setting, value)


def parse_variant(variant: str) -> tuple:
  """'impl:dtype[+option...]' -> (impl, dtype, options)."""
  impl, _, rest = variant.partition(':')
  dtype, *options = rest.split('+')
  if not impl or not dtype:
    raise app.UsageError(f'{variant}: use IMPL:DTYPE[+OPTION...], e.g. fused:bfloat16+bf16gx')
  return impl, dtype, parse_options(variant, options)


def timed_rounds():
  """Round numbers 0 .. --rounds - 1, stopping before a round that would end past --max_seconds
  of rounds (as long as the last one took); at least one."""
  start, last = time.perf_counter(), 0.0
  for r in range(_ROUNDS.value):
    if r and _MAX_SECONDS.value and time.perf_counter() - start + last > _MAX_SECONDS.value:
      print(f'--max_seconds {_MAX_SECONDS.value:g}: stopping after {r} rounds', flush=True)
      return
    round_start = time.perf_counter()
    yield r
    last = time.perf_counter() - round_start


def parse_size(size: str) -> dict:
  layers_hidden, batch_seq = size.split(':')
  layers, hidden = (int(x) for x in layers_hidden.split('x'))
  batch, seq = (int(x) for x in batch_seq.split('x'))
  return {'name': size, 'layers': layers, 'hidden': hidden, 'batch': batch, 'seq': seq}


def flops_per_char(size: dict) -> int:
  """Training FLOPs per character: 6 x the parameters that multiply (as the peer counts)."""
  h, layers = size['hidden'], size['layers']
  return 6 * (4 * h * (h + h) * layers + h * VOCAB)


class Charlm:
  """charlm's jitted train step for one size, with its state and a stream of batches."""

  def __init__(self, size: dict, impl: str, dtype: str):
    import jax
    import numpy as np

    from charlm import host, sharding, trainer
    from configs import default
    config = default.get_config()
    config.unlock()
    config.model.update(cell='lstm', num_layers=size['layers'], hidden=size['hidden'],
                        impl=impl, dtype=dtype)
    config.train.update(batch_size=size['batch'], seq_len=size['seq'])
    config.optim.update(name='adam', lr=2e-3, clip=5.0, schedule='constant')
    self.size, self.jax = size, jax
    devices = jax.devices()  # On a CPU, as many as charlm.train would use for this size.
    if devices[0].platform == 'cpu':
      devices = devices[:host.cpu_devices(config)]
    mesh = sharding.create_mesh(devices)
    self.devices = mesh.size
    model, tx, init_state = trainer.build(config, VOCAB, steps_per_epoch=1000)
    self.impl = model.impl  # What model.impl='auto' chose.
    key = jax.random.PRNGKey(0)
    shardings = trainer.state_shardings(jax.eval_shape(init_state, key), mesh)
    self.state = jax.jit(init_state, out_shardings=shardings)(key)
    data = sharding.batch_sharding(mesh)
    step = jax.jit(trainer.make_train_step(model, tx), in_shardings=(shardings, data, data, data,
                                                                     None),
                   out_shardings=(shardings, None), donate_argnums=0)
    b, t = size['batch'], size['seq']
    tokens = np.random.default_rng(0).integers(0, VOCAB, (b, 64 * t + 1)).astype(np.int32)
    to_global = lambda a: sharding.to_global(mesh, a, b)
    weights = np.ones((b, t), np.float32)
    self.batches = [(tokens[:, k * t:(k + 1) * t], tokens[:, k * t + 1:(k + 1) * t + 1], weights)
                    for k in range(64)]
    self.to_global, self.k = to_global, 0
    start = time.perf_counter()
    self.step = step.lower(self.state, *self.next_batch()).compile()
    self.compile_s = time.perf_counter() - start
    memory = self.step.memory_analysis()
    self.step_mb = None
    if memory is not None:
      self.step_mb = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                      + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 2 ** 20
    self.run(2)

  def next_batch(self):
    inputs, targets, weights = self.batches[self.k % len(self.batches)]
    self.k += 1
    return (self.to_global(inputs), self.to_global(targets), self.to_global(weights),
            self.jax.numpy.bool_(False))

  def run(self, steps: int) -> list:
    """Seconds of each of `steps` steps, each timed until its metrics are ready."""
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.state, metrics = self.step(self.state, *self.next_batch())
      self.jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    self.loss = float(metrics['loss'])
    return times


def peer_run(python: str, size: dict, steps: int) -> dict:
  """One run of the peer; its JSON line, plus its process's peak memory."""
  argv = [os.path.join(_PEER_DIR.value, 'torch_charrnn.py'), 'train', '--layers',
          str(size['layers']), '--hidden', str(size['hidden']), '--batch', str(size['batch']),
          '--seq', str(size['seq']), '--vocab', str(VOCAB), '--steps', str(steps),
          '--min_seconds', '0']
  # The peer's peak resident memory: VmHWM (ru_maxrss would include this parent's, via fork).
  wrapper = ('import runpy, sys; sys.argv = sys.argv[1:]; '
             'runpy.run_path(sys.argv[0], run_name="__main__"); '
             'print([line.split()[1] for line in open("/proc/self/status") '
             'if line.startswith("VmHWM")][0], file=sys.stderr)')
  out = subprocess.run([python, '-c', wrapper] + argv, check=True, capture_output=True,
                       text=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result['max_rss_mb'] = int(out.stderr.strip().splitlines()[-1]) / 1024
  return result


def machine() -> dict:
  import jax
  device = jax.devices()[0]
  info = {'platform': device.platform, 'device': device.device_kind,
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count(),
          'python': platform.python_version(), 'jax': jax.__version__,
          'xla_flags': os.environ.get('XLA_FLAGS', '')}
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    info['cpu'] = names[0] if names else platform.processor()
  try:
    info['git_commit'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip()
  except OSError:
    pass
  return info


def set_up_host():
  """The process settings of charlm.train, before JAX starts its threads; on a CPU two devices,
  of which each size's mesh takes as many as charlm.train would (`Charlm`, host.py)."""
  sys.path.insert(0, ROOT)
  from charlm import host
  host.keep_freed_memory()
  host.use_cpu_devices(int(os.environ.get('JAX_NUM_CPU_DEVICES') or min(2, os.cpu_count())))


def main(argv):
  del argv
  set_up_host()
  import jax
  gpu = jax.devices()[0].platform == 'gpu'
  sizes = [parse_size(s) for s in (_SIZES.value or (GPU_SIZES if gpu else CPU_SIZES))]
  variants = {v: parse_variant(v) for v in _VARIANTS.value}
  # The matmul "peak" each variant is held to: float32 on a CPU (2048^3); on a GPU 8192^3 in
  # the variant's matmul dtype (JAX's default float32 precision there is TF32, as cuDNN's).
  matmul_n = 8192 if gpu else 2048
  peak_dtypes = sorted({dtype for _, dtype, _ in variants.values()} | {'float32'})
  python = None if _NO_PEER.value else peer_lib.peer_python(_PEER_PYTHON.value, _PEER_DIR.value)
  info = machine()
  info['load_before'] = os.getloadavg()
  print(f'{info.get("cpu", "")} / {info["device"]}, {info["cpu_count"]} cores, jax '
        f'{info["jax"]}; peer: {python or "none"}', flush=True)

  runners = {}
  for size in sizes:
    for variant, (impl, dtype, options) in variants.items():
      set_options(options)
      runner = Charlm(size, impl, dtype)
      runners[size['name'], variant] = runner
      print(f'compiled {size["name"]} {variant} in {runner.compile_s:.1f}s', flush=True)

  rates = {key: [] for key in runners}
  peer_rates = {s['name']: [] for s in sizes}
  peer_runs = {s['name']: [] for s in sizes}
  peaks = {dtype: [] for dtype in peak_dtypes}
  for r in timed_rounds():
    for dtype in peak_dtypes:
      peaks[dtype].append(peer_lib.matmul_rate(matmul_n, dtype))
    for size in sizes:
      name, chars = size['name'], size['batch'] * size['seq']
      line = f'round {r + 1}: {name}'
      for variant in variants:
        rate = chars / statistics.median(runners[name, variant].run(_STEPS.value))
        rates[name, variant].append(rate)
        line += f' charlm {variant} {rate:,.0f} chars/s,'
      if python:
        peer = peer_run(python, size, _STEPS.value)
        peer_rates[name].append(chars / peer['step_s_median'])
        peer_runs[name].append(peer)
        line += f' peer {peer_rates[name][-1]:,.0f}'
      print(line + f' (matmul {peaks["float32"][-1]:,.0f} GFLOP/s, load '
            f'{os.getloadavg()[0]:.1f})', flush=True)
  rounds = len(peaks['float32'])
  info['load_after'] = os.getloadavg()

  peak = {dtype: max(got) for dtype, got in peaks.items()}
  rows = []
  for size in sizes:
    name = size['name']
    flops = flops_per_char(size)
    for variant, (impl, dtype, options) in variants.items():
      runner, got = runners[name, variant], rates[name, variant]
      row = {**size, 'variant': variant, 'impl': impl, 'model_impl': runner.impl, 'dtype': dtype,
             'options': sorted(options),
             'train_flops_per_char': flops,
             'charlm_chars_per_s': statistics.median(got), 'charlm_rounds': got,
             'compile_s': runner.compile_s, 'charlm_step_buffers_mb': runner.step_mb,
             'charlm_loss_last': runner.loss, 'charlm_devices': runner.devices}
      row['charlm_gflops'] = row['charlm_chars_per_s'] * flops / 1e9
      row['charlm_peak_fraction'] = row['charlm_gflops'] / peak[dtype]
      if peer_rates[name]:
        row['peer_chars_per_s'] = statistics.median(peer_rates[name])
        row['peer_rounds'] = peer_rates[name]
        row['peer_gflops'] = row['peer_chars_per_s'] * flops / 1e9
        row['peer_peak_fraction'] = row['peer_gflops'] / peak['float32']
        # Paired: each round's charlm rate over the same round's peer rate, then the median.
        row['round_ratios'] = [a / b for a, b in zip(got, peer_rates[name], strict=True)]
        row['ratio'] = statistics.median(row['round_ratios'])
        row['peer_max_rss_mb'] = max(p['max_rss_mb'] for p in peer_runs[name])
        last = peer_runs[name][-1]
        row['peer'] = {k: last[k] for k in ('peer', 'torch', 'device', 'threads', 'gpu', 'cudnn')
                       if k in last}
      rows.append(row)
  info['charlm_max_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if gpu:
    stats = jax.devices()[0].memory_stats() or {}
    info['charlm_gpu_peak_mb'] = stats.get('peak_bytes_in_use', 0) / 2 ** 20
  info['matmul_n'] = matmul_n
  info['matmul_peak_gflops'] = peak
  info['matmul_rounds_gflops'] = peaks

  print(f'\nmatmul peak ({matmul_n}^3 jnp.dot, best of {rounds} rounds): '
        + ', '.join(f'{dtype} {got:,.0f} GFLOP/s' for dtype, got in peak.items())
        + f'; medians of {rounds} rounds of {_STEPS.value} steps; load average '
        f'{info["load_before"][0]:.1f} before, {info["load_after"][0]:.1f} after\n')
  print('| size | batch x seq | charlm impl:dtype | devices | charlm chars/s | peer chars/s | '
        'ratio | charlm GFLOP/s (% peak) | peer GFLOP/s (% f32 peak) | compile s | '
        'charlm step MB | peer RSS MB |')
  print('| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for row in rows:
    peer = (f'{row["peer_chars_per_s"]:,.0f} | {row["ratio"]:.2f}x '
            f'({min(row["round_ratios"]):.2f}-{max(row["round_ratios"]):.2f})' if 'ratio' in row
            else '- | -')
    peer_flops = (f'{row["peer_gflops"]:,.0f} ({100 * row["peer_peak_fraction"]:.0f}%)'
                  if 'ratio' in row else '-')
    peer_mb = f'{row["peer_max_rss_mb"]:.0f}' if 'ratio' in row else '-'
    mb = f'{row["charlm_step_buffers_mb"]:.0f}' if row['charlm_step_buffers_mb'] else '-'
    print(f'| {row["layers"]}x{row["hidden"]} | {row["batch"]}x{row["seq"]} | {row["variant"]} '
          f'| {row["charlm_devices"]} | {row["charlm_chars_per_s"]:,.0f} | {peer} | '
          f'{row["charlm_gflops"]:,.0f} ({100 * row["charlm_peak_fraction"]:.0f}%) | '
          f'{peer_flops} | {row["compile_s"]:.1f} | {mb} | {peer_mb} |')
  print(f'\ncharlm process peak RSS {info["charlm_max_rss_mb"]:.0f} MB (all sizes); charlm step '
        'MB: the compiled step\'s arguments, outputs and temporaries (XLA memory analysis)')

  out = _OUT.value
  if out is None:
    out = os.path.join(ROOT, 'experiments', 'results', f'bench_train_{info["platform"]}.json')
  if out:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
      json.dump({'machine': info, 'variants': _VARIANTS.value, 'rounds': rounds,
                 'steps': _STEPS.value, 'results': rows}, f, indent=2)
    print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
