"""The LSTM loops as native CPU code (lstm_cpu.cc), built on first use and called through XLA's FFI.

`available()` compiles lstm_cpu.cc with the machine's C++ compiler the first time (a few
seconds), caches the library under `native/` of $CHARLM_CACHE or ~/.cache/charlm (one per
source, jaxlib version, compiler and CPU, since it is built for this CPU's instruction set) and
registers its FFI targets. It loads only a library no other user can have written: in a
directory of this user's that no one else can write, neither a symlink. Without a compiler, or
with such a library, it logs one warning and returns False; lstm_kernel then runs XLA's loops,
which give the same results more slowly.

`forward`, `forward_saving` (for the backward pass), `forward_into` (to look inside) and
`backward` take time-major float32 arrays as lstm_cpu.cc describes. Under a sharded jit each
device runs the batch rows it holds: a sharding rule names the batch axis of every operand and
result, and nothing else may be split (`forward_into` has none: it runs on one device).
"""
import contextlib
import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import stat
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from charlm import cache

SOURCE = pathlib.Path(__file__).with_name('lstm_cpu.cc')
FLAGS = ('-O3', '-march=native', '-ffp-contract=fast', '-std=c++17', '-shared', '-fPIC', '-w')
_TARGETS = {'charlm_lstm_forward': 'CharlmLstmForward',
            'charlm_lstm_forward_saving': 'CharlmLstmForwardSaving',
            'charlm_lstm_forward_into': 'CharlmLstmForwardInto',
            'charlm_lstm_backward': 'CharlmLstmBackward',
            'charlm_unwritten': 'CharlmUnwritten'}


def _cpu() -> str:
  """What -march=native compiles for: the CPU's model and feature flags where Linux says."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = {line.split(':')[0].strip(): line for line in f if ':' in line}
    return lines.get('model name', '') + lines.get('flags', lines.get('Features', ''))
  except OSError:
    return platform.processor() + platform.machine()


class UnsafeLibrary(RuntimeError):
  """The library's directory or file could be written by someone else: it is not loaded."""


def _check_private(path, st: os.stat_result, kind: str, is_kind) -> None:
  """An UnsafeLibrary unless `st` (of `path`, not followed) is a `kind` of this user that no
  one else can write: another user able to change it could run code as this one."""
  fix = 'delete it, or set $CHARLM_CACHE to a directory of your own'
  if not is_kind(st.st_mode):
    raise UnsafeLibrary(f'{path} is not a {kind} (a symlink?); {fix}')
  if st.st_uid != os.getuid():
    raise UnsafeLibrary(f'{path} is owned by uid {st.st_uid}, not by this user; {fix}')
  if st.st_mode & 0o022:
    raise UnsafeLibrary(f'{path} is writable by others (mode {oct(st.st_mode & 0o777)}); {fix}')


def build(cache_dir: str = '') -> pathlib.Path:
  """Compiles lstm_cpu.cc unless a library built from the same inputs is cached; its path.

  The library lives in `native/` of the cache (`cache_dir`, else $CHARLM_CACHE or
  ~/.cache/charlm), made 0700: a directory or library that is a symlink, another user's or
  writable by others is an UnsafeLibrary.
  """
  compiler = os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++')
  if not compiler:
    raise RuntimeError('no C++ compiler found (install g++, or set $CXX)')
  key = repr((SOURCE.read_bytes(), jaxlib.__version__, compiler, FLAGS, _cpu()))
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  directory = pathlib.Path(cache.default_cache_dir(cache_dir)) / 'native'
  directory.parent.mkdir(parents=True, exist_ok=True)
  with contextlib.suppress(FileExistsError):
    directory.mkdir(mode=0o700)
  _check_private(directory, os.lstat(directory), 'directory', stat.S_ISDIR)
  path = directory / f'lstm_cpu-{digest}.so'
  if os.path.lexists(path):
    _check_private(path, os.lstat(path), 'regular file', stat.S_ISREG)
    return path
  with tempfile.TemporaryDirectory(dir=directory) as tmp:  # Other processes may build too.
    built = os.path.join(tmp, path.name)
    command = [compiler, *FLAGS, '-I', jax.ffi.include_dir(), str(SOURCE), '-o', built]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
      error = ' '.join(result.stderr.split())[-300:]
      raise RuntimeError(f'{" ".join(command)} failed: {error}')
    os.chmod(built, 0o700)
    os.replace(built, path)
  return path


def _load(path: pathlib.Path) -> ctypes.CDLL:
  """Loads the library through a descriptor checked as build checked the path, so that a file
  swapped in after the check is not the one loaded (Linux; elsewhere, the checked path)."""
  fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
  try:
    _check_private(path, os.fstat(fd), 'regular file', stat.S_ISREG)
    by_fd = f'/proc/self/fd/{fd}'
    return ctypes.cdll.LoadLibrary(by_fd if os.path.exists(by_fd) else str(path))
  finally:
    os.close(fd)


@functools.cache
def available() -> bool:
  """Whether the native loops are built and registered (builds them the first time)."""
  try:
    library = _load(build())
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform='cpu')
  except (OSError, RuntimeError, AttributeError) as e:
    hint = '' if isinstance(e, UnsafeLibrary) else ' Install a C++ compiler (g++) to get them.'
    logging.warning('charlm: no native CPU LSTM loops (%s); training runs XLA loops instead, '
                    'which are slower.%s', e, hint)
    return False
  return True


def _split_over_batch(fn, rule: str):
  """fn under custom_partitioning: the factor 'b' of `rule` is the batch, which each device runs
  for the rows it holds; every other factor stays whole."""
  operands, results = ([dims.split() for dims in side.split(',')] for side in rule.split('->'))

  def shardings(mesh, batch, dims_list):
    return tuple(NamedSharding(mesh, P(*(batch if d == 'b' else None for d in dims)))
                 for dims in dims_list)

  def batch_axes(arg_shapes):
    spec, axis = arg_shapes[0].sharding.spec, operands[0].index('b')
    return spec[axis] if axis < len(spec) else None

  def partition(mesh, arg_shapes, result_shapes):
    batch = batch_axes(arg_shapes)
    return mesh, fn, shardings(mesh, batch, results), shardings(mesh, batch, operands)

  def infer_sharding_from_operands(mesh, arg_shapes, result_shapes):
    return shardings(mesh, batch_axes(arg_shapes), results)

  factors = list(dict.fromkeys(d for dims in operands + results for d in dims))
  whole = tuple(f for f in factors if f != 'b')  # In order of appearance, as Shardy requires.
  split = custom_partitioning(fn)
  split.def_partition(partition, infer_sharding_from_operands=infer_sharding_from_operands,
                      sharding_rule=rule, need_replication_factors=whole)
  return split


def _f32(*shape):
  return jax.ShapeDtypeStruct(shape, 'float32')


def _forward(gx, w, c0, h0):
  t, b, g = gx.shape
  shapes = (_f32(t, b, g // 4), _f32(b, g // 4), _f32(b, g // 4))
  return jax.ffi.ffi_call('charlm_lstm_forward', shapes)(gx, w, c0, h0)


def _forward_saving(gx, w, c0, h0):
  t, b, g = gx.shape
  shapes = (_f32(t, b, g // 4), _f32(b, g // 4), _f32(b, g // 4), _f32(t, b, g), _f32(t, b, g // 4))
  return jax.ffi.ffi_call('charlm_lstm_forward_saving', shapes)(gx, w, c0, h0)


# The states forward_into writes, in the order it takes their arrays.
INTO_KINDS = ('h', 'c', 'i', 'f', 'g', 'o')


def forward_into(gx, w, c0, h0, begin, into):
  """The forward loop writing the states of INTO_KINDS into the arrays of `into` (in that
  order), [B, P, H] each or empty where not wanted, at steps begin .. begin + T - 1 of each row:
  (hs, cT, hT, the arrays of `into` written). Each array of `into` is updated in place where the
  caller's jit donates it."""
  t, b, g = gx.shape
  shapes = (_f32(t, b, g // 4), _f32(b, g // 4), _f32(b, g // 4),
            *[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in into])
  call = jax.ffi.ffi_call('charlm_lstm_forward_into', shapes,
                          input_output_aliases={5 + k: 3 + k for k in range(len(into))})
  hs, c, h, *written = call(gx, w, c0, h0, jnp.asarray(begin, jnp.int32), *into)
  return hs, c, h, written


@functools.partial(jax.jit, static_argnums=(0, 1))
def unwritten(shape: tuple[int, ...], dtype='float32'):
  """An array of `shape` left as allocated (its values are whatever the memory held): for
  `forward_into` to fill, without first writing zeros over it all."""
  return jax.ffi.ffi_call('charlm_unwritten', jax.ShapeDtypeStruct(shape, dtype))()


def _backward(dhs, ts, cs, c, dc, dh, w):
  t, b, g = ts.shape
  shapes = (_f32(t, b, g), _f32(b, g // 4), _f32(b, g // 4))
  return jax.ffi.ffi_call('charlm_lstm_backward', shapes)(dhs, ts, cs, c, dc, dh, w)


_STATE = 'b h, b h'
forward = _split_over_batch(_forward, f't b g, h g, {_STATE} -> t b h, {_STATE}')
forward_saving = _split_over_batch(_forward_saving,
                                   f't b g, h g, {_STATE} -> t b h, {_STATE}, t b g, t b h')
backward = _split_over_batch(_backward,
                             f't b h, t b g, t b h, b h, {_STATE}, h g -> t b g, {_STATE}')
