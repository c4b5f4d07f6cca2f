"""Advisory file locks (fcntl.flock) that the kernel releases when their process dies.

A lock lives as long as its open file: closing it, or the process ending in any way (kill -9
included), releases it, so a crash never leaves a stale lock. Lock files are never deleted:
deleting one while another process waits on it would let two processes hold "the" lock.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket

from charlm.errors import UserError


@contextlib.contextmanager
def flock(path: str, exclusive: bool = True):
  """Holds a shared or exclusive lock on `path` (created if missing), waiting for it. A shared
  lock where this process cannot write (a read-only cache, which it can only read) opens the
  lock file to read, or holds nothing where there is none."""
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as e:
    if exclusive or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
      raise
    try:
      fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
      yield None
      return
  try:
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    yield fd
  finally:
    os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str = 'run', flag: str = '--workdir'):
  """Holds `workdir/.lock` exclusively, recording this process; another `what` (run, sweep) of
  the same workdir is a UserError naming the process that holds it and `flag`, the way to give
  another, raised before anything is written.
  A workdir this made that holds nothing else at the end is removed, lock and all: a run that
  fails on its input leaves nothing behind."""
  path = os.path.join(workdir, '.lock')
  made = not os.path.lexists(workdir)
  fd = _lock_exclusively(workdir, path, what, flag)
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode(), 0)
    yield
  finally:
    try:
      if made and os.listdir(workdir) == ['.lock']:
        os.unlink(path)  # While locked: whoever opened it before sees it is gone and retries.
        os.rmdir(workdir)
    except OSError:
      pass
    finally:
      os.close(fd)


def _lock_exclusively(workdir: str, path: str, what: str, flag: str) -> int:
  """A descriptor of `path` holding its exclusive lock, or a UserError if another holds it.
  Retries while the lock file it locked was meanwhile deleted by the previous holder."""
  for _ in range(100):
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:
      continue  # The workdir was removed between the two calls.
    except OSError as e:
      raise UserError(f'cannot use workdir {workdir}: {e.strerror}; give a writable directory with '
                      f'{flag}') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd)
      os.close(fd)
      raise UserError(f'{workdir} is in use by another {what} ({holder}); wait for it to finish '
                      f'or stop it, or use another {flag}') from None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)
  raise UserError(f'cannot lock workdir {workdir}: its lock file keeps changing; try again')


def _holder(fd: int) -> str:
  """Who holds the lock, as its holder recorded it: 'PID n on host h'."""
  try:
    info = json.loads(os.pread(fd, 4096, 0))
    return f'PID {info["pid"]} on host {info["host"]}'
  except (OSError, ValueError, KeyError, TypeError):
    return 'a process that has not yet recorded its PID'
