"""The native CPU loops' build: cached once per inputs, and XLA's loops where it can't build.

Their numbers are checked in test_model.py (gradients against autodiff of a plain LSTM) and
test_distributed.py (each device running its rows under a sharded train step).
"""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from charlm import lstm_cpu


def test_build_is_cached_and_a_failed_build_says_why(tmp_path, monkeypatch):
  monkeypatch.setenv('CHARLM_CACHE', str(tmp_path / 'cache'))
  path = lstm_cpu.build()
  assert path.parent == tmp_path / 'cache' and path.exists()
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
  assert os.listdir(tmp_path / 'other') == []


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
