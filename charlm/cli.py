"""Shared command-line plumbing: flag and config errors become one line on stderr, exit 2."""
import re
import sys

from absl import app, flags, logging

from charlm.errors import exit_on_user_error


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def _parse(argv):
  try:
    rest = flags.FLAGS(argv)
    for name in flags.FLAGS:  # A config file that failed to load reports only when read.
      if flags.FLAGS[name].present:
        getattr(getattr(flags.FLAGS, name), 'lock', None)
  except flags.Error as e:
    _fail(_one_line(e))
  except (AttributeError, KeyError) as e:  # ml_collections: a field that the config lacks.
    hint = re.search(r'Did you mean "(\w+)"', str(e))
    key = re.search(r'instead of "(\w+)"', str(e)) or re.search(r"(\w+)\\*'", str(e))
    flag_names = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    bad = next((f for f in flag_names if key and f.endswith('.' + key[1])), ' '.join(flag_names))
    _fail(f'unknown config field {bad}' + (f' (did you mean "{hint[1]}"?)' if hint else '')
          + '; every field is listed in configs/default.py')
  except (OSError, ValueError, SyntaxError) as e:
    _fail(_one_line(e))
  if len(rest) > 1:
    _fail(f'unexpected arguments: {" ".join(rest[1:])}')
  return rest


def _one_line(e: Exception) -> str:
  text = str(e)
  missing = re.search(r"No such file or directory: '([^']+)'", text)
  if missing:
    return (f'config file not found: {missing[1]}; pass a Python config file, for example '
            '--config configs/shakespeare.py')
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if 'Traceback' in text:  # A config file's get_config raised: its own message is the last line.
    return lines[-1]
  return ' '.join(lines) + ' (see --helpfull)'


def run(main):
  """app.run(main) with one-line errors for bad flags, configs and UserErrors."""
  def quiet_main(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    return main(argv)
  app.run(exit_on_user_error(quiet_main), flags_parser=_parse)
