"""Run logs: TensorBoard events (tensorboardX) with the run's hyperparameters, metrics.jsonl and
samples.md, from process 0.

A run that resumes from step N (0 when fresh) first drops what was logged after N, so that the
steps it replays appear once in every log, even after a kill -9 between checkpoints.
"""
import json
import os
import re

import jax

from charlm import atomic

# What the HParams dashboard shows of a run whose config leaves train.hparams empty.
HPARAMS = ('model.cell', 'model.num_layers', 'model.hidden', 'model.dropout', 'train.batch_size',
           'train.seq_len', 'optim.name', 'optim.lr')


class MetricWriter:
  """Writes scalars and text; a no-op on every process but the first."""

  def __init__(self, workdir: str, step: int = 0):
    """Logs of the run in `workdir` resuming from `step`: later entries are dropped first."""
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter
      trim_jsonl(os.path.join(workdir, 'metrics.jsonl'), step)
      trim_samples(os.path.join(workdir, 'samples.md'), step)
      # Hides older events at steps > `step` from TensorBoard (a SessionLog.START at step+1).
      self._tb = SummaryWriter(logdir=workdir, flush_secs=10, purge_step=step + 1)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def scalars(self, step: int, values: dict):
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()

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
    self._tb.file_writer.add_summary(session_start)

  def text(self, step: int, tag: str, text: str):
    if self.active:  # Indented four spaces, so Markdown renders it as written.
      self._tb.add_text(tag, '\n'.join('    ' + line for line in text.split('\n')), step)

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
      with open(os.path.join(self.workdir, filename), 'a') as f:
        f.write(text)

  def flush(self):
    if self.active:
      self._tb.flush()
      self._jsonl.flush()

  def close(self):
    if self.active:
      self._tb.close()
      self._jsonl.close()
      self.active = False


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
