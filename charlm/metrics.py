"""Run logs: TensorBoard events (tensorboardX's protos) with the run's hyperparameters,
metrics.jsonl and samples.md, from process 0.

A run that resumes from step N (0 when fresh) first drops what was logged after N, so that the
steps it replays appear once in every log, even after a kill -9 between checkpoints. Every
write happens in the calling thread and adds whole records (`atomic.AppendOnly`), so a full
disk is one UserError naming the file, which ends with no torn record.
"""
import json
import os
import re
import socket
import struct
import time

import jax

from charlm import atomic
from charlm.errors import disk_full_is_user_error

# What the HParams dashboard shows of a run whose config leaves train.hparams empty.
HPARAMS = ('model.cell', 'model.num_layers', 'model.hidden', 'model.dropout', 'train.batch_size',
           'train.seq_len', 'optim.name', 'optim.lr')


class MetricWriter:
  """Writes scalars and text; a no-op on every process but the first."""

  def __init__(self, workdir: str, step: int = 0):
    """Logs of the run in `workdir` resuming from `step`: later entries are dropped first."""
    self.active = jax.process_index() == 0
    self.workdir = workdir
    if self.active:
      for trim, filename in ((trim_jsonl, 'metrics.jsonl'), (trim_samples, 'samples.md')):
        with disk_full_is_user_error(os.path.join(workdir, filename)):
          trim(os.path.join(workdir, filename), step)
      self._jsonl = self._open('metrics.jsonl')
      # Written here rather than by tensorboardX's SummaryWriter, whose thread would meet a
      # full disk out of reach (a traceback, then a wait on its full queue).
      self._events = self._open(
          f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}')
      from tensorboardX.proto.event_pb2 import Event, SessionLog
      self._event(Event(file_version='brain.Event:2'))
      # Hides older events at steps > `step` from TensorBoard, as SummaryWriter's purge_step.
      self._event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))

  def _open(self, filename: str) -> atomic.AppendOnly:
    path = os.path.join(self.workdir, filename)
    with disk_full_is_user_error(path):
      return atomic.AppendOnly(path)

  def _append(self, log: atomic.AppendOnly, data: bytes):
    with disk_full_is_user_error(log.path):
      log.write(data)

  def _event(self, event):
    """One TFRecord: length, its masked CRC32C, the event, its masked CRC32C."""
    from tensorboardX.record_writer import masked_crc32c
    if not event.wall_time:
      event.wall_time = time.time()
    data = event.SerializeToString()
    header = struct.pack('Q', len(data))
    self._append(self._events, header + struct.pack('I', masked_crc32c(header)) + data
                 + struct.pack('I', masked_crc32c(data)))

  def _summary(self, step: int, summary):
    from tensorboardX.proto.event_pb2 import Event
    self._event(Event(step=int(step), summary=summary))

  def scalars(self, step: int, values: dict):
    if not self.active:
      return
    from tensorboardX.summary import scalar
    values = {k: float(v) for k, v in values.items()}
    for k, v in values.items():
      self._summary(step, scalar(k, v))
    self._append(self._jsonl, (json.dumps({'step': int(step), **values}) + '\n').encode())

  def hparams(self, values: dict):
    """The run's hyperparameters for TensorBoard's HParams dashboard, in this run's own event
    file. Only the session's start is written, not an experiment: the dashboard then gathers
    the hyperparameters of every run under its logdir (a sweep's points and other runs alike)
    and takes its metrics from the scalars each run logs (val/loss, val/bpc, ...)."""
    if not self.active:
      return
    from tensorboardX.summary import hparams
    plain = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in values.items()}
    _, session_start, _ = hparams(plain, {})
    self._summary(0, session_start)

  def text(self, step: int, tag: str, text: str):
    if self.active:  # Indented four spaces, so Markdown renders it as written.
      from tensorboardX.summary import text as text_summary
      self._summary(step, text_summary(tag, '\n'.join('    ' + line for line in text.split('\n'))))

  def samples(self, step: int, temperatures: list, texts: list, val_loss: float | None = None):
    """Samples, one a temperature: TensorBoard text, and a section of samples.md."""
    head = f'## step {step}' + (f', val loss {val_loss:.4f}' if val_loss is not None else '')
    parts = [head + '\n']
    for t, text in zip(temperatures, texts, strict=True):
      self.text(step, f'samples/temperature_{t}', text)
      indented = '\n'.join('    ' + line for line in text.split('\n'))
      parts.append(f'\ntemperature {t}:\n\n{indented}\n')
    self.append_markdown('samples.md', ''.join(parts) + '\n')

  def append_markdown(self, filename: str, text: str):
    if self.active:
      path = os.path.join(self.workdir, filename)
      with disk_full_is_user_error(path):
        atomic.append_bytes(path, text.encode('utf-8'))

  def flush(self):
    """Makes what was logged durable (and a disk full that only fsync reports, an error)."""
    if self.active:
      self._sync()

  def _sync(self):
    for log in (self._events, self._jsonl):
      with disk_full_is_user_error(log.path):
        log.sync()

  def close(self):
    if self.active:
      self.active = False
      try:
        self._sync()
      finally:
        self._events.close()
        self._jsonl.close()


def hparams_of(config) -> dict:
  """The fields `config.train.hparams` names (default: HPARAMS), dotted name -> value."""
  names = [n.strip() for n in config.train.get('hparams', '').split(',') if n.strip()]
  values = {}
  for name in names or HPARAMS:
    value = config
    for part in name.split('.'):
      value = value[part]
    values[name] = value
  return values


def trim_jsonl(path: str, step: int):
  """Keeps the rows of metrics.jsonl up to `step`; skips (and reports) undecodable lines, such
  as a torn or NUL-filled last line, and rewrites the file atomically if anything changed."""
  if not os.path.exists(path):
    return
  with open(path, 'rb') as f:
    old = f.read()
  kept, bad = [], 0
  for line in old.split(b'\n'):
    clean = line.strip(b' \t\r\0')
    if not clean:
      bad += b'\0' in line  # A run of NULs, where a crash lost the data.
      continue
    try:
      row = json.loads(clean.decode('utf-8'))
      row_step = int(row['step'])
    except (ValueError, TypeError, KeyError):  # UnicodeDecodeError is a ValueError.
      bad += 1
      continue
    if row_step <= step:
      kept.append(clean + b'\n')
  new = b''.join(kept)
  if bad:
    print(f'warning: skipped {bad} undecodable line{"s" if bad > 1 else ""} of {path} (torn '
          'by a crash); the other rows are kept', flush=True)
  if new != old:
    atomic.write_bytes(path, new)


_STEP_HEADER = re.compile(r'^## step (\d+)', re.MULTILINE)


def trim_samples(path: str, step: int):
  """Keeps the sections of samples.md (each from a `## step N` header) up to `step`."""
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8', errors='replace') as f:
    old = f.read()
  text = old.replace('\0', '')
  for header in _STEP_HEADER.finditer(text):
    if int(header.group(1)) > step:
      text = text[:header.start()]
      break
  if text != old:
    atomic.write_text(path, text)
