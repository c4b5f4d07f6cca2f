"""Shared test helpers: small texts and shrunken configs; nothing here reads ../shared."""
import atexit
import contextlib
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Exact float32 matmuls on GPUs too (JAX's default there is TF32), so that the tolerances of
# the equivalence tests mean the same on every machine; a no-op on CPUs.
jax.config.update('jax_default_matmul_precision', 'float32')

# Many tests (and the CLIs they start) compile the same small programs; one XLA compilation
# cache for the whole session, removed at exit, compiles each once. The variables reach the
# subprocesses; jax reads them at import.
_XLA_CACHE = tempfile.mkdtemp(prefix='charlm-tests-xla-cache-')
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
for _name, _value in [('jax_compilation_cache_dir', _XLA_CACHE),
                      ('jax_persistent_cache_min_compile_time_secs', 0),
                      ('jax_persistent_cache_min_entry_size_bytes', -1)]:
  os.environ[_name.upper()] = str(_value)
  jax.config.update(_name, _value)

WORDS = ('the of and to a in that is was he for it with as his on be at by I ROMEO JULIET '
         'thou thee art what shall love night day sweet').split()


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def write_text(path, lines=400, seed=0):
  """A small pseudo-English text file, deterministic in `seed`."""
  rng = random.Random(seed)
  text = '\n'.join(' '.join(rng.choice(WORDS) for _ in range(8)) for _ in range(lines)) + '\n'
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


def smoke_config(tmp_path, text_path=None, **overrides):
  """configs/default.py:smoke on a test-made text file, with a private cache.

  `overrides` are 'section.field' (dots as double underscores) -> value, e.g. train__steps=40.
  """
  from configs import default
  config = default.get_config('smoke')
  config.data.path = text_path or write_text(tmp_path / 'text.txt')
  config.data.cache_dir = str(tmp_path / 'cache')
  config.train.final_sample_length = 0
  for key, value in overrides.items():
    section, field = key.split('__')
    config[section][field] = value
  return config


def run_cli(module, *args, env=None, timeout=300, without_root=False):
  """Runs `python -m module args` from the repository root; returns the CompletedProcess.
  `without_root`: through `without_root_power`, so that file permissions bind it."""
  full_env = dict(os.environ, **(env or {}))
  command = [sys.executable, '-m', module, *args]
  return subprocess.run(without_root_power(command) if without_root else command, cwd=ROOT,
                        env=full_env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def read_only(tree):
  """Takes the write permission off `tree` and every directory and file under it (a cache as
  another user or a read-only mount sees it), and gives it back after."""
  paths = [str(tree)] + [os.path.join(root, name) for root, dirs, files in os.walk(tree)
                         for name in dirs + files]
  modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in paths if not os.path.islink(p)}
  for path, mode in modes.items():
    os.chmod(path, mode & ~0o222)
  try:
    yield
  finally:
    for path, mode in modes.items():
      os.chmod(path, mode)


# Run before a command as root: gives up root's power over file permissions for good (the
# securebit NOROOT: an exec grants uid 0 no capabilities), then runs the command.
_DROP_ROOT = """
import ctypes, os, sys
PR_SET_SECUREBITS, SECBIT_NOROOT, SECBIT_NOROOT_LOCKED = 28, 1, 2
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_SECUREBITS,
                                           SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0):
  sys.exit(f'cannot give up root capabilities: {os.strerror(ctypes.get_errno())}')
os.execv(sys.argv[1], sys.argv[1:])
"""


def without_root_power(command: list[str]) -> list[str]:
  """`command` such that file permissions bind it, for the tests of read-only directories:
  as is for a user; as root (CI, containers) it runs with uid 0 and no capabilities, so that a
  directory's mode bits bind it as they bind its owner (the files a test makes are root's) and
  a read-only directory is read-only. Keeping uid 0 keeps readable what only root may read
  (the interpreter may live under a 0700 /root), which running as nobody would not. Skips the
  test where root cannot give them up (no CAP_SETPCAP)."""
  if os.geteuid() != 0:
    return list(command)
  with open('/proc/self/status') as f:
    effective = next(int(line.split()[1], 16) for line in f if line.startswith('CapEff:'))
  if not effective >> 8 & 1:  # CAP_SETPCAP.
    pytest.skip('root without CAP_SETPCAP cannot give up its power over file permissions')
  return [sys.executable, '-c', _DROP_ROOT, *command]


@pytest.fixture
def text_file(tmp_path):
  return write_text(tmp_path / 'text.txt')
