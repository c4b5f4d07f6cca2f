"""The slow fault test: a training run killed with SIGKILL at random moments and resumed."""
import json
import os
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, write_text

import charlm

STEPS = 60


def train_command(text, workdir, cache):
  return [sys.executable, '-m', 'charlm.train', '--config=configs/default.py:smoke',
          f'--workdir={workdir}', f'--config.data.path={text}', f'--config.data.cache_dir={cache}',
          f'--config.train.steps={STEPS}', '--config.train.ckpt_every=4',
          '--config.train.log_every=1', '--config.train.eval_every=10',
          '--config.train.sample_every=10', '--config.train.sample_length=8',
          '--config.train.final_sample_length=0']


def start(command):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def run_killed_at(command, step, delay):
  """Runs `command` until it prints `step` (or ends), waits `delay` seconds, then SIGKILLs it."""
  process = start(command)
  for line in process.stdout:
    if line.startswith(f'step {step}/'):
      break
  try:
    process.wait(timeout=delay)
  except subprocess.TimeoutExpired:
    process.send_signal(signal.SIGKILL)
  output = process.stdout.read()
  return process.wait(), output


def metric_rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop('chars_per_sec', None)
  return rows


@pytest.mark.slow
def test_a_run_killed_at_random_moments_and_resumed_matches_an_uninterrupted_one(tmp_path):
  text = write_text(tmp_path / 'text.txt')
  straight = tmp_path / 'straight'
  subprocess.run(train_command(text, straight, tmp_path / 'cache'), cwd=ROOT, check=True,
                 capture_output=True, timeout=300)
  workdir = tmp_path / 'killed'
  command = train_command(text, workdir, tmp_path / 'cache')
  rng = random.Random(0)
  for step in sorted(rng.sample(range(2, STEPS - 2), 4)):  # Each past the last resume point.
    code, output = run_killed_at(command, step, rng.uniform(0, 0.2))
    assert code == -signal.SIGKILL, output
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  expected, got = charlm.load(str(straight), 'latest'), charlm.load(str(workdir), 'latest')
  assert got.step == expected.step == STEPS
  for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  want, have = metric_rows(straight), metric_rows(workdir)
  train_steps = [r['step'] for r in have if 'train/loss' in r]
  assert train_steps == list(range(1, STEPS + 1))  # No duplicates, no gaps.
  assert have == want
