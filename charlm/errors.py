"""The one exception type for user mistakes: the CLIs print its message on one line and exit 1."""
import sys


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
