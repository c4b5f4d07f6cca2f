"""Settings of the host process that make training faster."""
import ctypes
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """Serves large allocations from one heap and keeps freed memory for reuse (glibc only).

  XLA:CPU allocates the temporaries of every step afresh (tens to hundreds of MB). glibc serves
  such requests with mmap, or from per-thread arenas whose heaps it unmaps once empty, and
  gives them back, so every step faults in fresh zeroed pages: 15,000 page faults and 40 ms of
  kernel time per step at 2x256, batch 32 x 64, and 31,000 and 80 ms at 2x512, on a 2-core
  CPU, where this made the train step 15-20% (2x256) and 5% (2x512) faster. The process keeps
  its peak memory instead of returning it between steps. Call it before JAX starts its threads
  (before the first computation) for the full effect: threads that have already allocated keep
  their own arenas. Returns whether it applied.
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # Not glibc (musl has no mallopt).
    return False
  return all([mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0),
              mallopt(_M_TRIM_THRESHOLD, 1 << 30)])
