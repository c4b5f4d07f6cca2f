"""Crash consistency: what a kill -9 or a power loss leaves behind resumes cleanly."""
import json
import logging
import os
import shutil
import sys
import time
import warnings

import numpy as np
import pytest
from conftest import run_cli, smoke_config

import charlm
from charlm import data, trainer
from charlm.errors import UserError

LOGS = dict(train__log_every=1, train__eval_every=5, train__ckpt_every=10, train__sample_every=5,
            train__sample_length=8)


def current_umask():
  with open('/proc/self/status') as f:
    return next(int(line.split()[1], 8) for line in f if line.startswith('Umask:'))


def rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def steps_of(workdir, key='train/loss'):
  return [r['step'] for r in rows(workdir) if key in r]


def scalar_steps(workdir, tag):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(workdir))
  events.Reload()
  return [e.step for e in events.Scalars(tag)]


def sample_steps(workdir):
  with open(os.path.join(workdir, 'samples.md')) as f:
    return [int(line.split()[2].rstrip(',')) for line in f if line.startswith('## step ')]


def killed_past_its_last_checkpoint(tmp_path):
  """A run that logged steps 1-15 and was killed before saving its checkpoint at 15."""
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=15, **LOGS), str(workdir))
  shutil.rmtree(workdir / 'checkpoints' / '15')
  return workdir


def test_resume_after_a_kill_shows_each_step_once_in_tensorboard_and_samples(tmp_path):
  workdir = killed_past_its_last_checkpoint(tmp_path)
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **LOGS), str(workdir))
  assert steps_of(workdir) == list(range(1, 21))
  assert scalar_steps(workdir, 'train/loss') == list(range(1, 21))
  assert scalar_steps(workdir, 'val/loss') == [5, 10, 15, 20]
  assert sample_steps(workdir) == [5, 10, 15, 20]


def test_a_torn_metrics_line_is_skipped_with_a_warning_and_the_file_replaced(tmp_path, capsys):
  workdir = killed_past_its_last_checkpoint(tmp_path)
  with open(workdir / 'metrics.jsonl', 'ab') as f:  # Mid-write of a row, then a power loss.
    f.write(b'{"step": 16, "train/lo' + b'\0' * 64 + b'\n' + b'\0' * 64)
  inode = os.stat(workdir / 'metrics.jsonl').st_ino
  capsys.readouterr()
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **LOGS), str(workdir))
  assert 'warning: skipped 2 undecodable lines of' in capsys.readouterr().out
  assert os.stat(workdir / 'metrics.jsonl').st_ino != inode  # Rewritten by a rename.
  assert [p for p in os.listdir(workdir) if p.endswith('.tmp')] == []
  assert steps_of(workdir) == list(range(1, 21))
  assert steps_of(workdir, 'val/loss') == [5, 10, 15, 20]


def test_a_fresh_start_drops_the_logs_of_a_run_killed_before_its_first_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  config = smoke_config(tmp_path, train__steps=5, **LOGS)
  trainer.train_and_evaluate(config, str(workdir))
  shutil.rmtree(workdir / 'checkpoints' / '5')  # Killed before the first save.
  inodes = {name: os.stat(workdir / name).st_ino for name in ('config.json', 'vocab.json')}
  trainer.train_and_evaluate(config, str(workdir))
  for name, inode in inodes.items():  # Replaced by a rename, never truncated in place.
    assert os.stat(workdir / name).st_ino != inode, name
    assert os.stat(workdir / name).st_mode & 0o777 == 0o666 & ~current_umask(), name
  assert steps_of(workdir) == [1, 2, 3, 4, 5]
  assert scalar_steps(workdir, 'train/loss') == [1, 2, 3, 4, 5]
  assert sample_steps(workdir) == [5]


# The token cache.

def cache_entry(tmp_path, text_file):
  corpus = data.prepare(text_file, cache_dir=str(tmp_path / 'cache'))
  return corpus, corpus.cache


@pytest.mark.parametrize('damage', ['torn', 'nul', 'empty'])
def test_a_corrupt_cache_meta_json_is_rebuilt_with_a_warning(tmp_path, text_file, capsys, damage):
  corpus, cache = cache_entry(tmp_path, text_file)
  meta = os.path.join(os.path.dirname(cache), 'meta.json')  # The entry's, naming its build.
  content = open(meta, 'rb').read()
  damaged = {'torn': content[:len(content) // 2], 'nul': b'\0' * len(content), 'empty': b''}
  with open(meta, 'wb') as f:
    f.write(damaged[damage])
  capsys.readouterr()
  again = data.prepare(text_file, cache_dir=str(tmp_path / 'cache'))
  assert 'is corrupt (meta.json is not valid JSON' in capsys.readouterr().out
  assert np.array_equal(again.tokens, corpus.tokens)
  rebuilt, old = json.load(open(meta)), json.loads(content)
  assert rebuilt.pop('build') != old.pop('build') and rebuilt == old


def test_a_short_token_file_is_rebuilt_with_a_warning(tmp_path, text_file, capsys):
  corpus, cache = cache_entry(tmp_path, text_file)
  expected = np.array(corpus.tokens)
  tokens = os.path.join(cache, 'tokens.bin')
  os.truncate(tokens, os.path.getsize(tokens) // 2)
  capsys.readouterr()
  again = data.prepare(text_file, cache_dir=str(tmp_path / 'cache'))
  assert 'tokens.bin has' in capsys.readouterr().out
  assert np.array_equal(again.tokens, expected)



# Checkpoints.

def test_the_leftovers_of_an_interrupted_save_are_removed_on_resume(tmp_path):
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=10, **LOGS), str(workdir))
  checkpoints = workdir / 'checkpoints'
  leftover = checkpoints / '20.orbax-checkpoint-tmp-1700000000000000'
  shutil.copytree(checkpoints / '10', leftover)  # As a kill in the middle of a save leaves it.
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **LOGS), str(workdir))
  assert sorted(os.listdir(checkpoints)) == ['10', '20']


def corrupt(checkpoint):
  """Truncates the array files of a checkpoint, as a crash or a full disk can leave them."""
  for root, _, files in os.walk(checkpoint / 'arrays'):
    for name in files:
      if '/d' in root[len(str(checkpoint)):]:
        path = os.path.join(root, name)
        os.truncate(path, os.path.getsize(path) // 2)


def test_resume_falls_back_from_a_corrupt_latest_checkpoint(tmp_path, capsys):
  workdir = tmp_path / 'run'
  config = smoke_config(tmp_path, train__steps=20, **LOGS)
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=10, **LOGS), str(workdir))
  straight = trainer.train_and_evaluate(config, str(tmp_path / 'straight'))
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=15, **LOGS), str(workdir))
  corrupt(workdir / 'checkpoints' / '15')
  capsys.readouterr()
  summary = trainer.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert 'warning: the checkpoint at step 15 in' in out and 'is unreadable' in out
  assert f'resuming {workdir} from step 10' in out
  assert summary['step'] == 20 and summary['val_loss'] == straight['val_loss']
  assert steps_of(workdir) == list(range(1, 21))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '15', '20']  # 15 rewritten.
  assert 'unreadable' not in capsys.readouterr().out + str(
      trainer.train_and_evaluate(config, str(workdir)))


def test_inference_of_a_corrupt_checkpoint_is_one_line(tmp_path):
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **LOGS), str(workdir))
  corrupt(workdir / 'checkpoints' / '20')
  for module in ('charlm.sample', 'charlm.evaluate'):
    result = run_cli(module, f'--workdir={workdir}', '--step=20')
    assert result.returncode == 1, result.stderr
    # Not followed (or preceded) by tensorstore's 'Event loop is closed' tracebacks.
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith('error: the checkpoint at step 20 in'), result.stderr
    assert 'is unreadable' in result.stderr and '(there: 10)' in result.stderr
  reported = []  # The reads a failed restore left in flight report nothing once they end.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sys, 'unraisablehook', reported.append)
    for _ in range(3):
      with pytest.raises(UserError, match='is unreadable'):
        charlm.load(str(workdir), 20)
    time.sleep(0.5)
  assert [str(u.exc_value) for u in reported] == []


def test_a_failed_restores_orphaned_read_futures_are_not_logged(caplog):
  """The other form that noise takes (a loaded machine shows it): asyncio logging a read's
  future whose error nobody retrieved. Only those are dropped."""
  from charlm import checkpoint  # noqa: F401 (installs the filter)
  error = "exception=ValueError('OUT_OF_RANGE: Error reading ... [tensorstore_spec=...]')>"
  orphans = [f'Future exception was never retrieved\nfuture: <Future finished {error}',
             'Task exception was never retrieved\nfuture: <Task finished name=\'Task-25\' '
             f'coro=<async_deserialize() done> {error}']
  other = 'Future exception was never retrieved\nfuture: <Future finished exception=KeyError()>'
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    for message in [*orphans, other]:
      logging.getLogger('asyncio').error(message)
  assert [r.getMessage() for r in caplog.records] == [other]


def test_a_failed_saves_unstarted_writes_are_not_warned_about():
  """A save that a full disk stopped leaves array writes it never started; Python warns of each
  when it collects it, at exit too (seen once in CI). Only those are dropped."""
  from charlm import checkpoint
  abandoned = "coroutine 'async_serialize_from_host.<locals>.write_fragment' was never awaited"
  other = "coroutine 'fetch_page' was never awaited"
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    checkpoint.quiet_abandoned_writes()
    for message in (abandoned, other):
      warnings.warn_explicit(message, RuntimeWarning, 'sys', 1)
  assert [str(w.message) for w in caught] == [other]
