"""Config overrides as a user types them, 'SECTION.FIELD=VALUE', checked against a config.

`apply` converts each value to the type of the field it replaces (bool true/false, int, float,
str, tuple), so that a misspelt field or a value of the wrong type is one line naming the field
(and the closest real one) before anything runs. The benchmarks (`experiments/common.py`) and
sweeps (`charlm.sweep`) share it; `charlm.train` itself takes `--config.SECTION.FIELD=VALUE`
flags, which ml_collections parses the same way.
"""
import ast
import difflib
import re

from charlm.errors import UserError


def split(text: str) -> list:
  """'model.impl=fused,model.dtype=bfloat16' -> one override each; a comma inside a value (a
  tuple) stays. '' and 'default' are no overrides: the config as it is."""
  if text.strip() in ('', 'default'):
    return []
  return [part.strip() for part in re.split(r',(?=\s*[A-Za-z_][\w.]*\s*=)', text)]


def parse(override: str) -> tuple:
  """'SECTION.FIELD=VALUE' -> ('SECTION.FIELD', 'VALUE'), both stripped; else a UserError."""
  key, eq, value = (s.strip() for s in override.partition('='))
  if not eq or not key:
    raise UserError(f'override {override!r}: use SECTION.FIELD=VALUE, e.g. model.hidden=256')
  return key, value


def field_names(config, prefix: str = '') -> list:
  """Every settable field of `config` as a dotted name ('model.hidden'), sections left out."""
  names = []
  for name, value in config.items():
    if hasattr(value, 'keys'):
      names += field_names(value, f'{prefix}{name}.')
    else:
      names.append(prefix + name)
  return names


def lookup(config, key: str, what: str):
  """The value of dotted field `key` in `config`; an unknown field or a section is a UserError
  starting with `what` that names the closest field."""
  *path, field = key.split('.')
  section = config
  try:
    for name in path:
      section = section[name]
    old = section[field]
  except (KeyError, AttributeError, TypeError):
    close = difflib.get_close_matches(key, field_names(config), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ''
    raise UserError(f'{what}: the config has no field {key}{hint}; every field is listed in '
                    'configs/default.py') from None
  if hasattr(old, 'keys'):
    raise UserError(f'{what}: {key} is a section; name one of its fields')
  return old


def convert(key: str, old, value: str):
  """`value` (text) as the type of the field's current value `old`."""
  if isinstance(old, bool):
    if value.lower() not in ('true', 'false'):
      raise ValueError('use true or false')
    return value.lower() == 'true'
  if isinstance(old, int):
    return int(value)
  if isinstance(old, float):
    return float(value)
  if isinstance(old, str):
    return value
  if isinstance(old, tuple | list):
    got = ast.literal_eval(value)
    if not isinstance(got, tuple | list):
      raise ValueError(f'use a tuple like {old!r}')
    return type(old)(got)
  raise ValueError(f'{key} holds {type(old).__name__}, which overrides cannot set')


def apply(config, overrides) -> None:
  """Sets each 'SECTION.FIELD=VALUE' of `overrides` in `config` (a locked ConfigDict), VALUE
  converted to the field's type. An unknown field, a bad value or a field named twice is a
  one-line UserError. Types only: ranges are `charlm.validate`'s."""
  seen = set()
  for override in overrides:
    key, value = parse(override)
    if key in seen:
      raise UserError(f'override {override!r}: {key} is set twice')
    seen.add(key)
    what = f'override {override!r}'
    old = lookup(config, key, what)
    *path, field = key.split('.')
    section = config
    for name in path:
      section = section[name]
    try:
      section[field] = convert(key, old, value)
    except (ValueError, TypeError, SyntaxError) as e:
      raise UserError(f'{what}: bad value for {key} (type {type(old).__name__}, now {old!r}): '
                      f'{str(e).splitlines()[0]}') from None
