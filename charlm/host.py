"""Settings of the host process that make training faster."""
import ctypes
import os
import sys

from charlm.validate import check_environment

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def accelerator_possible() -> bool:
  """Whether JAX may run on something other than the CPU here, judged without starting JAX:
  jax_platforms ($JAX_PLATFORMS) names another platform, or, where it is unset, a PJRT plugin
  (jax-cuda*-plugin, jax-rocm*-plugin) or libtpu is installed."""
  import jax
  platforms = [p.strip() for p in (jax.config.jax_platforms or '').split(',') if p.strip()]
  if platforms:
    return any(p != 'cpu' for p in platforms)
  return bool(_installed_plugins())


def _installed_plugins() -> list:
  """The JAX plugins jax would discover: jax_plugins.* modules and jax_plugins entry points."""
  import importlib.metadata
  import importlib.util
  import pkgutil
  names = [e.name for e in importlib.metadata.entry_points(group='jax_plugins')]
  try:
    import jax_plugins
    names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  if importlib.util.find_spec('libtpu') is not None:
    names.append('libtpu')
  return names


def keep_freed_memory() -> bool:
  """Serves large allocations from one heap and keeps freed memory for reuse (glibc only).

  XLA:CPU allocates the temporaries of every step afresh (tens to hundreds of MB). glibc serves
  such requests with mmap, or from per-thread arenas whose heaps it unmaps once empty, and
  gives them back, so every step faults in fresh zeroed pages. The process keeps its peak
  memory instead of returning it between steps. Call it before JAX starts its threads (before
  the first computation) for the full effect: threads that have already allocated keep their
  own arenas. Returns whether it applied.

  Applied only where JAX can run on nothing but the CPU (`accelerator_possible`): one heap for
  every thread serializes the allocations of XLA's parallel GPU compiler, which then compiles
  many times slower. Measurements: docs/speed.md.
  """
  if not sys.platform.startswith('linux') or accelerator_possible():
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # Not glibc (musl has no mallopt).
    return False
  return all([mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0),
              mallopt(_M_TRIM_THRESHOLD, 1 << 30)])


def cpu_devices(config) -> int:
  """How many CPU devices split each batch on a CPU (config.train.cpu_devices; 0: see below).

  Each CPU device runs its share of the batch on its own thread. With XLA's loops, that runs
  the many small per-step operations of two halves side by side instead of one after the
  other, which pays for small models; larger ones already keep both cores busy on one device.
  The native LSTM loops (`lstm_cpu`) split the batch over the cores themselves, and are faster
  on one device. Auto: $JAX_NUM_CPU_DEVICES if set, else 2 for hidden <= 256 with an even
  batch on 2+ cores where the model runs XLA's loops, else 1 (measurements: docs/speed.md).
  """
  count = config.train.get('cpu_devices', 0)  # validate.validate checks it is >= 0.
  if count:
    return count
  if os.environ.get('JAX_NUM_CPU_DEVICES'):
    check_environment()
    return int(os.environ['JAX_NUM_CPU_DEVICES'])
  split = (os.cpu_count() or 1) >= 2 and config.model.hidden <= 256
  if not split or config.train.batch_size % 2 or _native_lstm_loops(config.model):
    return 1
  return 2


def _native_lstm_loops(model_config) -> bool:
  """Whether the model's LSTM layers would run the native CPU loops (`model.resolve` decides);
  not asked (nor built) where JAX may run on an accelerator."""
  from charlm import model as model_lib
  if model_config.cell != 'lstm' or accelerator_possible():
    return False
  resolved = model_lib.resolve(model_config, None, backend='cpu')
  return resolved.impl == 'fused' and resolved.loops.native


def use_cpu_devices(count: int) -> None:
  """Makes JAX's CPU backend `count` devices; before JAX initializes its backends."""
  import jax
  jax.config.update('jax_num_cpu_devices', count)

