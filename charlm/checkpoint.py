"""Orbax checkpoints of a run: arrays (params, optimizer state, carry, RNG) plus JSON metadata.

Keeps the latest `keep` checkpoints and the best one by validation loss; the newest is never
deleted. Saves are asynchronous; `close()` waits for them. A save that meets a full disk is one
UserError (from `save`, `wait` or `close`, wherever Orbax reports it) and leaves nothing of
itself: the checkpoints before it stay as they were.
"""
import contextlib
import logging
import os
import shutil
import sys
import threading
import time
import warnings

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from charlm.errors import disk_full, disk_full_is_user_error


class _QuietMissingMetrics(logging.Filter):
  """Orbax warns about what charlm does on purpose: saves between evaluations carry no val
  loss, and inference opens checkpoints read-only."""

  def filter(self, record):
    message = record.getMessage()
    return not ('did not provide metrics' in message or 'Given directory is read only' in message
                or 'read_only=True, setting' in message)


class _QuietDiskFull(logging.Filter):
  """Orbax's threads (and asyncio, of the writes they leave) log each write that a full disk
  failed, with tracebacks; charlm reports the save's failure itself, in one line."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return disk_full(error) is None and disk_full(Exception(record.getMessage())) is None


class _QuietOrphanedReadFutures(logging.Filter):
  """A failed restore's other tensorstore reads (see `_quiet_orphaned_reads`) can also end as
  futures or tasks whose error nobody retrieves, which asyncio logs when they are collected, at
  any time after, exit included; the restore's own error already said what failed."""

  def filter(self, record):
    message = record.getMessage()
    first = message.split('\n', 1)[0]
    return not (first in ('Future exception was never retrieved',
                          'Task exception was never retrieved') and 'tensorstore' in message)


def quiet_abandoned_writes():
  """Drops the warning Python gives, when it collects them (exit included), for the array
  writes a failed save created but never started (jax's `async_serialize_from_host` fragments):
  the save's own error already said what failed."""
  warnings.filterwarnings(
      'ignore', category=RuntimeWarning,
      message=r"coroutine 'async_serialize\w*\.<locals>\.\w+' was never awaited")


quiet_abandoned_writes()
logging.getLogger('absl').addFilter(_QuietMissingMetrics())
for _name in ('absl', 'asyncio'):
  logging.getLogger(_name).addFilter(_QuietDiskFull())
logging.getLogger('asyncio').addFilter(_QuietOrphanedReadFutures())


class _QuietSaves:
  """While saves run (installed by the first, until a clean close; for good after a failed
  one), drops what their writes print as Python collects them once a write failed: Orbax
  closes the save's event loop at the first error, so each write still in flight ends in an
  unraisable 'Event loop is closed' traceback; their own errors; imports at interpreter exit."""

  def __init__(self):
    self.previous = None

  def install(self):
    if self.previous is None:
      self.previous = sys.unraisablehook
      sys.unraisablehook = self.hook

  def uninstall(self):
    if sys.unraisablehook == self.hook:
      sys.unraisablehook = self.previous
    self.previous = None

  def hook(self, unraisable):
    error, where = unraisable.exc_value, repr(unraisable.object)
    if not (disk_full(error) is not None or 'orbax' in where or 'tensorstore' in where
            or (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed')):
      self.previous(unraisable)


@contextlib.contextmanager
def _quiet_orphaned_reads(settle_s: float = 0.2, limit_s: float = 5.0):
  """Drops the noise of a failed restore: Orbax runs its reads in a fresh event loop and closes
  it when the first read fails, so each tensorstore read still in flight ends by scheduling its
  result on a closed loop, which Python prints as an unraisable 'RuntimeError: Event loop is
  closed' traceback, after the caller's error or before it. While restoring, and after a
  failure until no such error has come for `settle_s` (at most `limit_s`), those (only) are
  dropped; the previous sys.unraisablehook comes back after."""
  previous, last = sys.unraisablehook, [time.monotonic()]
  lock = threading.Lock()

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      with lock:
        last[0] = time.monotonic()
      return
    previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    start = last[0] = time.monotonic()
    while True:
      with lock:
        quiet = time.monotonic() - last[0]
      if quiet >= settle_s or time.monotonic() - start >= limit_s:
        break
      time.sleep(settle_s - quiet)
    raise
  finally:
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous


def unreadable(step: int, workdir: str, error: Exception) -> str:
  """What to tell a user about a checkpoint that does not read back: the step, the workdir and
  the first line of the error, for a warning or an error to go on from."""
  reason = (str(error).strip().splitlines() or [''])[0][:160]
  return (f'the checkpoint at step {step} in {workdir} is unreadable (corrupt or truncated: '
          f'{type(error).__name__}: {reason})')


class Checkpoints:

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    best = lambda metrics: metrics['val_loss']
    options = ocp.CheckpointManagerOptions(
        best_fn=best, best_mode='min', create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only, save_interval_steps=0 if read_only else 1,
        cleanup_tmp_directories=not read_only,  # What a kill left of an unfinished save.
        preservation_policy=None if read_only else policies.AnyPreservationPolicy([
            policies.LatestN(n=max(1, keep)),
            policies.BestN(get_metric_fn=best, reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ]))
    self.directory = os.path.abspath(directory)
    self.unreadable = set()  # Steps found corrupt; a save of the same step replaces them.
    self.failed = None  # The UserError of a save that a full disk failed.
    self._quiet = _QuietSaves()
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('arrays', 'meta'))

  def latest_step(self):
    return self.manager.latest_step()

  def best_step(self):
    return self.manager.best_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, arrays, meta: dict, val_loss: float | None = None):
    if step in self.unreadable:
      self.manager.delete(step)
      self.unreadable.discard(step)
    self._quiet.install()
    with self._disk_full_fails():  # Orbax waits for the previous save first.
      self.manager.save(
          step,
          args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                  meta=ocp.args.JsonSave(meta)),
          metrics=None if val_loss is None else {'val_loss': float(val_loss)},
          force=True)

  @contextlib.contextmanager
  def _disk_full_fails(self):
    """A full disk met by a save (in this call or in Orbax's threads since) is one UserError
    naming the directory; the unfinished save's files are removed, and so is the space they
    took."""
    if self.failed is not None:
      raise self.failed
    try:
      with disk_full_is_user_error(self.directory):
        yield
    except Exception as e:
      if disk_full(e) is None:
        raise
      self.failed = e
      with contextlib.suppress(Exception):
        self.manager.close()
      for name in os.listdir(self.directory):
        if ocp.utils.TMP_DIR_SUFFIX in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      raise

  def restore_meta(self, step: int) -> dict:
    with _quiet_orphaned_reads():
      return self.manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore(self, step: int, abstract_arrays):
    """Restores arrays onto `abstract_arrays` (ShapeDtypeStructs with shardings) and meta."""
    with _quiet_orphaned_reads():
      out = self.manager.restore(step, args=ocp.args.Composite(
          arrays=ocp.args.StandardRestore(abstract_arrays), meta=ocp.args.JsonRestore()))
    return out['arrays'], out['meta']

  def restore_part(self, step: int, abstract_part: dict) -> dict:
    """Restores only the entries of the arrays that `abstract_part` names (ShapeDtypeStructs
    with shardings), such as {'params': ...} for inference, without the optimizer state."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
    with _quiet_orphaned_reads():
      out = self.manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.PyTreeRestore(
          item=abstract_part, restore_args=restore_args, partial_restore=True)))
    return out['arrays']

  def wait(self):
    with self._disk_full_fails():
      self.manager.wait_until_finished()

  def close(self):
    if self.failed is not None:
      return  # Closed when the save failed.
    self.wait()
    self.manager.close()
    self._quiet.uninstall()
