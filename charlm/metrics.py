"""Run logs: TensorBoard events (tensorboardX), metrics.jsonl and samples.md, from process 0."""
import json
import os

import jax


class MetricWriter:
  """Writes scalars and text; a no-op on every process but the first."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=workdir, flush_secs=10)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def scalars(self, step: int, values: dict):
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()

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
