"""The native CPU loops' build: cached once per inputs, and XLA's loops where it can't build.

Their numbers are checked in test_model.py (gradients against autodiff of a plain LSTM) and
test_distributed.py (each device running its rows under a sharded train step).
"""
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from charlm import lstm_cpu


def test_build_is_cached_and_a_failed_build_says_why(tmp_path, monkeypatch):
  monkeypatch.setenv('CHARLM_CACHE', str(tmp_path / 'cache'))
  path = lstm_cpu.build()
  assert path.parent == tmp_path / 'cache' / 'native' and path.exists()
  assert os.stat(path.parent).st_mode & 0o777 == 0o700
  assert os.listdir(path.parent) == [path.name]  # No build files left behind.

  def no_compiling(*args, **kwargs):
    raise AssertionError('compiled again')
  monkeypatch.setattr(subprocess, 'run', no_compiling)
  assert lstm_cpu.build() == path
  monkeypatch.undo()

  monkeypatch.setenv('CHARLM_CACHE', str(tmp_path / 'other'))
  monkeypatch.setenv('CXX', 'false')  # A "compiler" that fails.
  with pytest.raises(RuntimeError, match='false .*lstm_cpu.cc.* failed'):
    lstm_cpu.build()
  assert os.listdir(tmp_path / 'other' / 'native') == []


FALLBACK = '''
import jax, jax.numpy as jnp
from charlm import lstm_cpu, lstm_kernel, model
from configs import default
loops = model.resolve(default.get_config().model, backend='cpu').loops
args = (jnp.ones((3, 2, 8)), jnp.ones((2, 8)) / 4, jnp.zeros((2, 2)), jnp.zeros((2, 2)))
loss = lambda *a: jnp.sum(lstm_kernel.lstm(*a, loops)[0])
hlo = jax.jit(jax.grad(loss)).lower(*args).as_text()
print(lstm_cpu.available(), 'charlm_lstm' in hlo)
'''


def test_without_a_compiler_training_runs_xla_loops_and_warns_once(tmp_path):
  env = dict(os.environ, CXX='false', CHARLM_CACHE=str(tmp_path), PYTHONPATH=ROOT,
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', FALLBACK], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['False', 'False']
  assert result.stderr.count('no native CPU LSTM loops') == 1, result.stderr[-2000:]
  assert 'Install a C++ compiler' in result.stderr


@pytest.fixture(scope='module')
def library(tmp_path_factory):
  """A library built in a private cache of its own."""
  return lstm_cpu.build(str(tmp_path_factory.mktemp('good')))


def plant(cache, library, how):
  """`library` in cache/native as `how` says; the cache."""
  native = cache / 'native'
  if how == 'symlinked directory':
    cache.mkdir()
    native.symlink_to(library.parent)
    return cache
  native.mkdir(parents=True, mode=0o700)
  if how == 'symlinked library':
    (native / library.name).symlink_to(library)
  else:
    shutil.copy(library, native / library.name)
  if how == 'group-writable directory':
    native.chmod(0o770)
  elif how == 'writable library':
    (native / library.name).chmod(0o666)
  elif how == "another user's directory":
    os.chown(native, 65534, 65534)
  return cache


UNSAFE = {'group-writable directory': 'writable by others', 'writable library':
          'writable by others', 'symlinked library': 'not a regular file',
          'symlinked directory': 'not a directory', "another user's directory": 'owned by uid'}


@pytest.mark.parametrize('how', UNSAFE)
def test_a_library_another_user_could_have_written_is_refused(tmp_path, library, how):
  if how == "another user's directory" and os.getuid() != 0:
    pytest.skip('needs root to give a directory to another user')
  cache = plant(tmp_path / 'cache', library, how)
  with pytest.raises(lstm_cpu.UnsafeLibrary, match=UNSAFE[how]):
    lstm_cpu.build(str(cache))


def test_a_refused_library_is_not_loaded_and_xla_loops_run(tmp_path, library):
  cache = plant(tmp_path / 'cache', library, 'group-writable directory')
  env = dict(os.environ, CHARLM_CACHE=str(cache), PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', FALLBACK], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['False', 'False']
  assert result.stderr.count('writable by others') == 1, result.stderr[-2000:]
  assert 'Install a C++ compiler' not in result.stderr


def test_a_private_library_is_loaded_and_used(library):
  env = dict(os.environ, CHARLM_CACHE=str(library.parent.parent), PYTHONPATH=ROOT,
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', FALLBACK], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['True', 'True'], result.stderr[-2000:]
