"""The one exception type for user mistakes: the CLIs print its message on one line and exit 1.

A full disk is one too: `disk_full_is_user_error` turns it into a UserError naming the path."""
import contextlib
import errno
import os
import sys

# What a full disk or an exhausted quota is called, by errno and in the messages of libraries
# (tensorstore, under Orbax) that report it inside another exception type.
_DISK_FULL = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded'}
_DISK_FULL_TEXT = {os.strerror(code): what for code, what in _DISK_FULL.items()}


class UserError(Exception):
  """A problem with the user's input or setup; its message names the problem and the fix."""


def exit_on_user_error(main):
  """Wraps a CLI `main` so a UserError becomes `error: ...` on stderr and exit status 1."""
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr, flush=True)
      sys.exit(1)
  return wrapped


def disk_full(error: BaseException | None) -> str | None:
  """'the disk is full' (or 'the disk quota is exceeded') where `error`, or an error it came
  from, is ENOSPC (EDQUOT); else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
      return _DISK_FULL[error.errno]
    for group in getattr(error, 'exceptions', ()):  # An ExceptionGroup's members.
      if what := disk_full(group):
        return what
    text = str(error)
    for message, what in _DISK_FULL_TEXT.items():
      if message in text:
        return what
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def disk_full_is_user_error(path: str, elsewhere: str = '--workdir'):
  """Turns a full disk while writing `path` into one UserError: `path`, and the fix of freeing
  space or pointing `elsewhere` (the flag or field naming the place) somewhere else."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:
    what = disk_full(e)
    if what is None:
      raise
    raise UserError(f'{what} writing {path}; free space there or point {elsewhere} '
                    'elsewhere') from None
