"""What the benchmarks share: sizes, config overrides, charlm's train step, rounds and the peer.

A benchmark names what charlm runs with config overrides, 'SECTION.FIELD=VALUE' each, on top
of configs/default.py (charlm's defaults): `apply_overrides` (`charlm.overrides`) converts each
value to the type of the field it replaces, so that a misspelled field or a value of the wrong
type fails at once, in one line, before anything compiles. Nothing here defines or reads flags:
each benchmark passes what it was given.
"""
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # The benchmarks run as scripts: `python experiments/bench_train.py`.
  sys.path.insert(0, ROOT)

from charlm import overrides as overrides_lib  # noqa: E402
from charlm.errors import UserError  # noqa: E402

PEER_DIR = os.path.join(ROOT, '..', 'shared', 'bench')
VOCAB = 65
CPU_SIZES = ['2x128:32x64', '2x256:32x64', '2x512:32x64', '3x512:50x50']
GPU_SIZES = CPU_SIZES + ['3x512:64x100', '3x512:100x100', '3x512:512x100']
# The fields a size (LxH:BxT) sets, which overrides may not change: the FLOP counts and the
# peer (torch.nn.LSTM) follow the size.
SIZE_FIELDS = ('model.cell', 'model.num_layers', 'model.hidden', 'train.batch_size',
               'train.seq_len')


# ---------------------------------------------------------------------------------------------
# Sizes and config overrides.

def parse_size(text: str) -> dict:
  """'LxH:BxT' -> {'name', 'layers', 'hidden', 'batch', 'seq'}."""
  try:
    layers_hidden, batch_seq = text.split(':')
    layers, hidden = (int(x) for x in layers_hidden.split('x'))
    batch, seq = (int(x) for x in batch_seq.split('x'))
  except ValueError:
    raise UserError(f'size {text!r}: use LAYERSxHIDDEN:BATCHxSEQ, e.g. 2x128:32x64') from None
  return {'name': text, 'layers': layers, 'hidden': hidden, 'batch': batch, 'seq': seq}


def flops_per_char(size: dict) -> int:
  """Training FLOPs per character: 6 x the parameters that multiply (as the peer counts)."""
  h, layers = size['hidden'], size['layers']
  return 6 * (4 * h * (h + h) * layers + h * VOCAB)


def split_overrides(text: str) -> list:
  """'model.impl=fused,model.dtype=bfloat16' -> one override each (`charlm.overrides.split`)."""
  return overrides_lib.split(text)


def apply_overrides(config, overrides) -> None:
  """Sets each 'SECTION.FIELD=VALUE' of `overrides` in `config` (`charlm.overrides.apply`); a
  field that a size sets is a one-line UserError too."""
  for override in overrides:
    key, _ = overrides_lib.parse(override)
    if key in SIZE_FIELDS:
      raise UserError(f'override {override!r}: {key} is set by the size (--sizes LxH:BxT)')
  overrides_lib.apply(config, overrides)


def bench_config(size: dict | None, *overrides):
  """configs/default.py with the size's model and batch (None: the defaults', to check
  overrides before JAX starts), the peer's optimizer (Adam 2e-3, clipping 5), then each list of
  `overrides` in turn (a later list may set a field again)."""
  from configs import default
  config = default.get_config()
  if size:
    config.model.update(cell='lstm', num_layers=size['layers'], hidden=size['hidden'])
    config.train.update(batch_size=size['batch'], seq_len=size['seq'])
  config.optim.update(name='adam', lr=2e-3, clip=5.0, schedule='constant')
  for given in overrides:
    apply_overrides(config, given)
  return config


def resolve(config):
  """What `config` runs on this backend (`model.resolve`, as `trainer.build` asks it); a bad
  setting is a one-line UserError before anything compiles."""
  import jax

  from charlm import model as model_lib
  return model_lib.resolve(config.model, config.train.batch_size // jax.device_count())


# ---------------------------------------------------------------------------------------------
# The host and charlm's train step.

def set_up_host():
  """The process settings of charlm.train, before JAX computes anything: the allocator keeps
  freed memory (`host.keep_freed_memory`; make_train_step does not set it), and on a CPU two
  devices, of which each size's mesh takes as many as charlm.train would (`Charlm`)."""
  from charlm import host
  host.keep_freed_memory()
  host.use_cpu_devices(int(os.environ.get('JAX_NUM_CPU_DEVICES') or min(2, os.cpu_count())))


class Charlm:
  """charlm's jitted train step for one size and config (`bench_config`), with its state and a
  stream of random batches; `resolved` is what runs (model.Resolved)."""

  def __init__(self, size: dict, config):
    import jax
    import numpy as np

    from charlm import host, sharding, trainer
    from charlm import model as model_lib
    self.size, self.jax = size, jax
    devices = jax.devices()  # On a CPU, as many as charlm.train would use for this size.
    if devices[0].platform == 'cpu':
      devices = devices[:host.cpu_devices(config)]
    mesh = sharding.create_mesh(devices)
    self.devices = mesh.size
    model, tx, init_state = trainer.build(config, VOCAB, steps_per_epoch=1000)
    self.resolved = model_lib.resolved(model)
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
    self.to_global = lambda a: sharding.to_global(mesh, a, b)
    weights = np.ones((b, t), np.float32)
    self.batches = [(tokens[:, k * t:(k + 1) * t], tokens[:, k * t + 1:(k + 1) * t + 1], weights)
                    for k in range(64)]
    self.k = 0
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


# ---------------------------------------------------------------------------------------------
# Rounds, the machine and the peer.

def timed_rounds(rounds: int, max_seconds: float = 0):
  """Round numbers 0 .. rounds - 1, stopping before a round that would end past `max_seconds`
  of rounds (0: no limit; as long as the last one took); at least one."""
  start, last = time.perf_counter(), 0.0
  for r in range(rounds):
    if r and max_seconds and time.perf_counter() - start + last > max_seconds:
      print(f'--max_seconds {max_seconds:g}: stopping after {r} rounds', flush=True)
      return
    round_start = time.perf_counter()
    yield r
    last = time.perf_counter() - round_start


def matmul_rate(n: int = 2048, dtype: str = 'float32') -> float:
  """GFLOP/s of an n^3 jnp.dot in `dtype` (default precision), the best of three."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  times = []
  for _ in range(3):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / min(times) / 1e9


def machine() -> dict:
  """The device, the CPU, versions and the commit, for a result's JSON."""
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


def peer_python(given: str = '', peer_dir: str = PEER_DIR) -> str:
  """`given`, or the python that `peer_dir`/setup.sh makes (or finds) for torch_charrnn.py."""
  if given:
    return given
  out = subprocess.run(['bash', os.path.join(peer_dir, 'setup.sh')], check=True,
                       capture_output=True, text=True)
  return out.stdout.strip().splitlines()[-1]


def peer_run(python: str, size: dict, steps: int, peer_dir: str = PEER_DIR) -> dict:
  """One training run of the peer (torch.nn.LSTM) at `size`; its JSON line, plus its process's
  peak memory."""
  argv = [os.path.join(peer_dir, 'torch_charrnn.py'), 'train', '--layers',
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


def write_results(path: str, result: dict) -> None:
  """Writes a benchmark's JSON results to `path` (its folder made if missing) and says so."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
    f.write('\n')
  print(f'\nwrote {path}')
