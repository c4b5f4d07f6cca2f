"""Helpers of a training loop: when a periodic action is due, how many steps fit a time budget,
stop signals, the progress bar."""
import math
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


def seconds_per_step(step_s: float, periodic: dict) -> float:
  """A step's seconds with its share of each periodic action; `periodic` maps a name to
  (seconds of one run, every how many steps it runs; 0: only at the end)."""
  return step_s + sum(cost / every for cost, every in periodic.values() if every)


def seconds_at_end(periodic: dict) -> float:
  """What the last step adds: every periodic action runs there once more (see is_due)."""
  return sum(cost for cost, _ in periodic.values())


def steps_within(seconds: float, step_s: float, periodic: dict) -> int:
  """How many steps, with their periodic actions, fit in `seconds` (0 when none does)."""
  per_step = seconds_per_step(step_s, periodic)
  return max(0, math.floor((seconds - seconds_at_end(periodic)) / per_step))


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
  """tqdm on a terminal; otherwise a plain line per logged step. Both show the time left: to
  `deadline` (a time.perf_counter() value: a budgeted run's end) if given, else as the steps so
  far predict."""

  def __init__(self, start, total, deadline=None):
    self.total, self.start, self.t0 = total, start, time.perf_counter()
    self.deadline = deadline
    self.tty = sys.stderr.isatty() and jax.process_index() == 0
    self.quiet = jax.process_index() != 0
    self.bar = None
    if self.tty:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)

  def time_left(self, step) -> float:
    now = time.perf_counter()
    if self.deadline is not None:
      return max(0.0, self.deadline - now)
    return (now - self.t0) / max(step - self.start, 1) * (self.total - step)

  def update(self, step, loss, rate):
    left = _hms(self.time_left(step))
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(loss=f'{loss:.4f}', chars_s=f'{rate:,.0f}', left=left)
    elif not self.quiet:
      print(f'step {step}/{self.total}  loss {loss:.4f}  bpc {loss / LN2:.4f}  '
            f'chars/s {rate:,.0f}  {"left" if self.deadline is not None else "eta"} {left}',
            flush=True)

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
