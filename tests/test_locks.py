"""Locks: one run per workdir; a lock dies with its process."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli, smoke_config, write_text

from charlm import locks, trainer
from charlm.errors import UserError


def test_a_held_workdir_stops_a_second_run_before_it_writes(tmp_path):
  workdir = str(tmp_path / 'run')
  config = smoke_config(tmp_path)
  with locks.workdir_lock(workdir):
    with pytest.raises(UserError) as e:
      trainer.train_and_evaluate(config, workdir)
    assert os.listdir(workdir) == ['.lock']
  message = str(e.value)
  assert workdir in message and f'PID {os.getpid()} on host' in message and '\n' not in message
  assert not os.path.exists(config.data.cache_dir)  # Stopped before preparing the corpus.


def test_the_workdir_lock_is_released_when_a_run_fails(tmp_path):
  workdir = str(tmp_path / 'run')
  with pytest.raises(UserError, match='not found'):
    trainer.train_and_evaluate(smoke_config(tmp_path, str(tmp_path / 'missing.txt')), workdir)
  assert not os.path.exists(workdir)  # It made the workdir, so it removed it, lock and all.
  os.makedirs(workdir)
  with pytest.raises(UserError, match='not found'):
    trainer.train_and_evaluate(smoke_config(tmp_path, str(tmp_path / 'missing.txt')), workdir)
  with locks.workdir_lock(workdir):  # Would raise if the failed run still held it.
    pass
  assert os.listdir(workdir) == ['.lock']  # A workdir it did not make stays.


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / 'run').write_text('')
  with pytest.raises(UserError, match='cannot use workdir .*run: .*--workdir'):
    with locks.workdir_lock(str(tmp_path / 'run')):
      pass


def test_a_second_run_stops_and_a_killed_run_leaves_no_stale_lock(tmp_path):
  text = write_text(tmp_path / 'text.txt')
  workdir = str(tmp_path / 'run')
  args = ['--config', 'configs/default.py:smoke', '--config.train.final_sample_length=0',
          f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache',
          f'--workdir={workdir}']
  first = subprocess.Popen([sys.executable, '-m', 'charlm.train', *args,
                            '--config.train.steps=1000000'], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    checkpoints = os.path.join(workdir, 'checkpoints')
    deadline = time.time() + 240
    while not (os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))):
      assert first.poll() is None and time.time() < deadline, 'the first run saved nothing'
      time.sleep(0.2)
    second = run_cli('charlm.train', *args)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and workdir in lines[0] and f'PID {first.pid} on host' in lines[0]
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  saved = max(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  third = run_cli('charlm.train', *args, f'--config.train.steps={saved + 5}')
  assert third.returncode == 0, third.stderr
  assert f'from step {saved}' in third.stdout
