"""A full disk (ENOSPC, EDQUOT) while saving, logging or preparing: one line naming the path,
nothing half-written left, and the last good checkpoint still restorable.

Fault injection (writers made to raise ENOSPC) always runs; `small_disk` repeats the main cases
on a real full filesystem (a tmpfs, where this process may mount one)."""
import errno
import io
import json
import os
import shutil
import subprocess

import orbax.checkpoint as ocp
import pytest
from conftest import run_cli, smoke_config, write_text

from charlm import atomic, data, trainer
from charlm.corpora import core
from charlm.errors import UserError, disk_full, disk_full_is_user_error
from charlm.metrics import MetricWriter

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# What tensorstore (under Orbax) raises for a full disk: a ValueError quoting the OS error.
TENSORSTORE_ENOSPC = ValueError(
    'RESOURCE_EXHAUSTED: Error writing local file "/x/_sharding": Failed to write 10097 bytes '
    "to file 12: No space left on device [os_error_code='28']")
LOGS = {'train__log_every': 5, 'train__eval_every': 10, 'train__ckpt_every': 10}


def test_a_full_disk_is_recognised_through_wrappers():
  assert disk_full(ENOSPC) == 'the disk is full'
  assert disk_full(OSError(errno.EDQUOT, 'quota')) == 'the disk quota is exceeded'
  assert disk_full(TENSORSTORE_ENOSPC) == 'the disk is full'
  try:
    try:
      raise ENOSPC
    except OSError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as wrapped:
    assert disk_full(wrapped) == 'the disk is full'
  assert disk_full(OSError(errno.EACCES, 'denied')) is None and disk_full(ValueError('x')) is None
  with pytest.raises(UserError, match=r'^the disk is full writing /a/b; free space there or '
                     'point --workdir elsewhere$'):
    with disk_full_is_user_error('/a/b'):
      raise ENOSPC
  with pytest.raises(PermissionError):  # Other errors pass unchanged.
    with disk_full_is_user_error('/a/b'):
      raise PermissionError(errno.EACCES, 'denied')


class FullAfter:
  """A raw file that takes `room` more bytes, then fails as a full disk does: a short write,
  then ENOSPC."""

  def __init__(self, raw, room):
    self.raw, self.room = raw, room

  def write(self, data):
    if not self.room:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    n = self.raw.write(bytes(data[:self.room]))
    self.room -= n
    return n

  def __getattr__(self, name):
    return getattr(self.raw, name)


def test_a_log_write_cut_short_leaves_only_whole_records(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.scalars(1, {'train/loss': 2.0})
  writer.flush()
  jsonl = tmp_path / 'metrics.jsonl'
  events = writer._events.path
  before = jsonl.read_bytes(), os.path.getsize(events)
  writer._jsonl._file = FullAfter(writer._jsonl._file, room=7)
  with pytest.raises(UserError, match=f'the disk is full writing {jsonl}; free space'):
    writer.scalars(2, {'train/loss': 1.0})
  writer._events._file = FullAfter(writer._events._file, room=5)
  with pytest.raises(UserError, match=f'the disk is full writing {events}'):
    writer.scalars(3, {'train/loss': 1.0})
  writer._jsonl._file, writer._events._file = writer._jsonl._file.raw, writer._events._file.raw
  writer.close()
  # Step 2's TensorBoard scalar was written whole before metrics.jsonl failed; nothing torn.
  assert jsonl.read_bytes() == before[0]
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  accumulator = EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert [e.step for e in accumulator.Scalars('train/loss')] == [1, 2]
  samples = tmp_path / 'samples.md'
  samples.write_text('## step 1\n')
  real = atomic.AppendOnly.__init__

  def full(self, path):
    real(self, path)
    self._file = FullAfter(self._file, room=3)
  with pytest.MonkeyPatch.context() as m:
    m.setattr(atomic.AppendOnly, '__init__', full)
    with pytest.raises(UserError, match=f'writing {samples}'):
      writer.active = True
      writer.append_markdown('samples.md', '## step 2\nlonger text\n')
  assert samples.read_text() == '## step 1\n'


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / 'config.json'
  atomic.write_json(str(path), {'old': 1})
  monkeypatch.setattr(os, 'fsync', lambda fd: (_ for _ in ()).throw(ENOSPC))
  with pytest.raises(UserError, match=f'the disk is full writing {path}'):
    with disk_full_is_user_error(str(path)):
      atomic.write_json(str(path), {'new': 2})
  assert json.loads(path.read_text()) == {'old': 1} and os.listdir(tmp_path) == ['config.json']


def test_a_checkpoint_save_on_a_full_disk_keeps_the_last_good_one(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step < 20:
      return real_save(self, step, *args, **kwargs)
    os.makedirs(os.path.join(self.directory, f'{step}.orbax-checkpoint-tmp'))  # Half-written.
    raise TENSORSTORE_ENOSPC
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(UserError, match=f'the disk is full writing {workdir}/checkpoints; free '
                     'space there or point --workdir elsewhere'):
    trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **LOGS), str(workdir))
  assert os.listdir(workdir / 'checkpoints') == ['10']
  monkeypatch.undo()  # Space freed: the same run resumes from the last good checkpoint.
  summary = trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **LOGS),
                                       str(workdir))
  assert summary['step'] == 20
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20']
  steps = [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')]
  assert steps == sorted(steps) and steps.count(15) == 1  # Replayed steps logged once.


def test_a_cache_build_on_a_full_disk_leaves_no_entry(tmp_path, monkeypatch):
  text = write_text(tmp_path / 'text.txt')
  cache = tmp_path / 'cache'

  def encode(*args, **kwargs):
    yield from []
    raise ENOSPC
  monkeypatch.setattr(data, 'encode_chunks', encode)
  with pytest.raises(UserError, match=rf'^the disk is full writing {cache}/text-char-\w+; free '
                     r'space there or point --config.data.cache_dir \(or \$CHARLM_CACHE\) '):
    data.prepare(text, cache_dir=str(cache))
  assert [p for p in os.listdir(cache) if not p.endswith('.lock')] == []
  monkeypatch.undo()
  assert len(data.prepare(text, cache_dir=str(cache)).tokens) == os.path.getsize(text)


def test_a_download_on_a_full_disk_says_so_and_leaves_no_partial_file(tmp_path, monkeypatch):
  """Not 'could not download': the network was fine."""
  from charlm import corpora
  cache = tmp_path / 'cache'
  monkeypatch.setattr(core, '_open', lambda url, timeout, accept='*/*': io.BytesIO(b'x' * 100))

  def full_open(path, mode='r', *args, **kwargs):
    f = open(path, mode, *args, **kwargs)
    if 'w' in mode:
      f.write = lambda data: (_ for _ in ()).throw(ENOSPC)
    return f
  monkeypatch.setattr(core, 'open', full_open, raising=False)
  folder = cache / 'corpora' / 'wikipedia'
  with pytest.raises(UserError, match=f'^the disk is full writing {folder}; free space there'):
    corpora.fetch('wikipedia', str(cache))
  assert os.listdir(folder) == []


# ---------------------------------------------------------------------------------------------
# A real full filesystem.

@pytest.fixture
def small_disk(tmp_path):
  """A 4 MB tmpfs at tmp_path/disk, unmounted after; skipped where mounting is not allowed."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  result = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(disk)],
                          capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f'cannot mount a small tmpfs here ({result.stderr.strip() or "not root"})')
  try:
    yield disk
  finally:
    subprocess.run(['umount', '-l', str(disk)], check=False)


def fill(disk, leave: int):
  """Fills `disk` but for `leave` bytes with one file, which is returned."""
  filler = disk / 'filler'
  st = os.statvfs(disk)
  with open(filler, 'wb') as f:
    f.write(b'\0' * max(0, st.f_bavail * st.f_frsize - leave))
  return filler


def test_a_real_full_disk_is_one_line_and_the_run_resumes_once_freed(small_disk, tmp_path):
  workdir = small_disk / 'run'
  text = write_text(tmp_path / 'text.txt')
  overrides = dict(train__ckpt_every=4, train__eval_every=4, train__log_every=2,
                   train__sample_every=0)
  trainer.train_and_evaluate(smoke_config(tmp_path, text, train__steps=4, **overrides),
                             str(workdir))
  filler = fill(small_disk, leave=40 << 10)  # Room for the logs, not for a checkpoint.
  result = run_cli('charlm.train', '--config', 'configs/default.py:smoke',
                   f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache',
                   '--config.train.final_sample_length=0', '--config.train.steps=8',
                   *[f'--config.{k.replace("__", ".")}={v}' for k, v in overrides.items()],
                   f'--workdir={workdir}')
  assert result.returncode == 1
  assert result.stderr == (f'error: the disk is full writing {workdir}/checkpoints; free space '
                           'there or point --workdir elsewhere\n')
  assert os.listdir(workdir / 'checkpoints') == ['4']  # The unfinished save is gone.
  assert not [n for n in os.listdir(workdir) if n.endswith('.tmp')]
  filler.unlink()
  summary = trainer.train_and_evaluate(smoke_config(tmp_path, text, train__steps=8, **overrides),
                                       str(workdir))
  assert summary['step'] == 8 and sorted(os.listdir(workdir / 'checkpoints')) == ['4', '8']

  fill(small_disk, leave=0)  # Not even the logs fit now.
  with pytest.raises(UserError, match=f'the disk is full writing {workdir}/'):
    trainer.train_and_evaluate(smoke_config(tmp_path, text, train__steps=12, **overrides),
                               str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['4', '8']
  lines = open(workdir / 'metrics.jsonl', 'rb').read().split(b'\n')
  assert lines[-1] == b'' and all(json.loads(line) for line in lines[:-1])  # None torn.


def test_a_real_full_disk_while_encoding_leaves_no_cache_entry(small_disk, tmp_path):
  text = tmp_path / 'big.txt'
  text.write_text('the quick brown fox jumps over the lazy dog\n' * 120_000)  # 5.3 MB.
  cache = small_disk / 'cache'
  with pytest.raises(UserError, match=f'the disk is full writing {cache}/big-char-'):
    data.prepare(str(text), cache_dir=str(cache))
  assert [p for p in os.listdir(cache) if not p.endswith('.lock')] == []
  assert shutil.disk_usage(small_disk).used < 64 << 10  # The partial token file is gone.
