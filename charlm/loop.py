"""Helpers of a training loop: when a periodic action is due, stop signals, the progress bar."""
import signal
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from charlm.evaluation import LN2


def is_due(step: int, every: int, total_steps: int) -> bool:
  """Whether an action run every `every` steps (0: never) is due at `step`; always at the end."""
  return step == total_steps or bool(every and step % every == 0)


class StopRequests:
  """Turns SIGINT/SIGTERM into a stop between steps; a second signal interrupts.

  A signal may reach one process of a multi-process run only: `agreed` all-reduces the flag
  at the steps where the loop syncs with the host anyway, so every process stops together."""

  def __init__(self):
    self.requested, self._old = False, {}
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    when = 'at the next logging step' if self._multi else 'after this step'
    print(f'\nstopping: saving a checkpoint {when} (signal again to abort)',
          file=sys.stderr, flush=True)

  def agreed(self, synced: bool) -> bool:
    """Whether to stop after this step. `synced`: the step logs, evaluates or saves (the same
    in every process); only then do several processes exchange their flags."""
    if not self._multi:
      return self.requested
    if not synced:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


class ProgressBar:
  """tqdm on a terminal; otherwise a plain line per logged step."""

  def __init__(self, start, total):
    self.total, self.start, self.t0 = total, start, time.perf_counter()
    self.tty = sys.stderr.isatty() and jax.process_index() == 0
    self.quiet = jax.process_index() != 0
    self.bar = None
    if self.tty:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)

  def update(self, step, loss, rate):
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(loss=f'{loss:.4f}', chars_s=f'{rate:,.0f}')
    elif not self.quiet:
      done = step - self.start
      eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)
      print(f'step {step}/{self.total}  loss {loss:.4f}  bpc {loss / LN2:.4f}  '
            f'chars/s {rate:,.0f}  eta {_hms(eta)}', flush=True)

  def note(self, text):
    if self.bar is not None:
      self.bar.write(text)
    elif not self.quiet:
      print(text, flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _hms(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
