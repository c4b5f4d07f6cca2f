"""One validation pass over a training config, before anything is written or compiled.

`validate(config, workdir)` checks every field charlm reads against what it allows, that the
workdir can be written and that the cache directory is a directory (a read-only one that holds
the prepared corpus serves); `check_splits` checks, once the corpus is known, that each split
is large enough for what it is used for; `check_text_file` catches text that decodes but is
not what it seems (UTF-16 without a byte-order mark). Each problem is one UserError naming the
field, the value and what is allowed, so a bad value fails in a second instead of after
training steps. Importing this module does not import JAX, so that `check_environment` can run
before JAX reads its environment variables.
"""
import math
import os
import sys

from charlm.cache import default_cache_dir
from charlm.errors import UserError

LEVELS = ('char', 'byte')

# (section, field, least value, what is allowed) for whole numbers.
INTEGERS = [
    ('model', 'num_layers', 1, '>= 1'),
    ('model', 'hidden', 1, '>= 1'),
    ('model', 'embed', 0, '>= 0 (0: the same as model.hidden)'),
    ('train', 'steps', 0, '>= 0'),
    ('train', 'batch_size', 1, '>= 1'),
    ('train', 'seq_len', 1, '>= 1'),
    ('train', 'cpu_devices', 0, '>= 0 (0: chosen by model size)'),
    ('train', 'log_every', 0, '>= 0 (0: only at the end)'),
    ('train', 'eval_every', 0, '>= 0 (0: only at the end)'),
    ('train', 'eval_batches', 0, '>= 0 (0: the whole split)'),
    ('train', 'ckpt_every', 0, '>= 0 (0: only at the end)'),
    ('train', 'keep_checkpoints', 1, '>= 1'),
    ('train', 'patience', 0, '>= 0 (0: never stop early)'),
    ('train', 'sample_every', 0, '>= 0 (0: never)'),
    ('train', 'sample_length', 0, '>= 0'),
    ('train', 'final_sample_length', 0, '>= 0 (0: none)'),
    ('optim', 'decay_after_epochs', 0, '>= 0'),
    ('optim', 'warmup_steps', 0, '>= 0'),
]
# (section, field, low, low allowed, high, high allowed) for real numbers; None: unbounded.
REALS = [
    ('model', 'dropout', 0, True, 1, False),
    ('train', 'minutes', 0, True, None, False),
    ('model', 'input_dropout', 0, True, 1, False),
    ('model', 'embed_dropout', 0, True, 1, False),
    ('model', 'weight_drop', 0, True, 1, False),
    ('optim', 'lr', 0, False, None, False),
    ('optim', 'clip', 0, True, None, False),
    ('optim', 'weight_decay', 0, True, None, False),
    ('optim', 'momentum', 0, True, 1, False),
    ('optim', 'rmsprop_decay', 0, False, 1, False),
    ('optim', 'decay_rate', 0, False, 1, True),
    ('optim', 'min_lr_ratio', 0, True, 1, True),
]
STRINGS = [('data', 'name'), ('data', 'path'), ('data', 'cache_dir'), ('train', 'sample_prime'),
           ('train', 'hparams')]
CACHE_FLAG = '--config.data.cache_dir=DIR or $CHARLM_CACHE'  # How a message gives a cache.
# A file whose first bytes are at least this fraction NUL is not UTF-8 text.
NUL_FRACTION = 0.25
HEAD_BYTES = 1 << 16


def _field(config, section, field):
  """config.section.field, or None where the config lacks it (the reader's default applies)."""
  part = config.get(section)
  return None if part is None else part.get(field)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _interval(low, low_in, high, high_in) -> str:
  if high is None:
    return f'{">=" if low_in else ">"} {low}'
  return f'in {"[" if low_in else "("}{low}, {high}{"]" if high_in else ")"}'


def check_environment():
  """$JAX_NUM_CPU_DEVICES, which JAX reads when imported: a whole number >= 1 if set."""
  value = os.environ.get('JAX_NUM_CPU_DEVICES')
  if value and not (value.strip().isdigit() and int(value) >= 1):
    raise UserError(f'JAX_NUM_CPU_DEVICES is {value!r}; set it to a whole number of devices >= 1 '
                    'or unset it')


def validate(config, workdir: str | None = None):
  """Checks every config field charlm reads, and `workdir` and the cache, before any work.

  Fields a config lacks (an older one) are skipped: their readers' defaults apply.
  """
  _check_fields(config, ('model', 'train', 'optim'))
  seed = _field(config, 'train', 'seed')
  if seed is not None and not _is_int(seed):
    raise UserError(f'train.seed is {seed!r}; use a whole number')
  _check_hparams(config)
  _check_sampling(config.train)
  from charlm import model as model_lib  # Imports JAX (after check_environment).
  model_lib.resolve(config.model, None, backend='tpu')  # Any backend's errors; builds nothing.
  validate_data(config)
  if workdir is not None:
    check_writable(workdir, 'the workdir', '--workdir=DIR')


def validate_data(config):
  """Checks the data fields and the cache directory: all that a tool reading a config's
  corpus without training on it (charlm.ngram) needs. Imports no JAX."""
  _check_fields(config, ('data',))
  from charlm import data as data_lib
  data_lib.check_split(_field(config, 'data', 'split'))
  path = _field(config, 'data', 'path')
  if path and os.path.isdir(os.path.expanduser(path)):
    raise UserError(f'data.path {path} is a directory; give a text file '
                    '(--config.data.path=FILE)')
  # A read-only cache that already holds the corpus serves: data.prepare says in one line when
  # it must encode the text into it; a named corpus must have been fetched into it.
  cache = os.path.abspath(os.path.expanduser(
      default_cache_dir(_field(config, 'data', 'cache_dir') or '')))
  check_writable(cache, 'the cache directory', CACHE_FLAG, read_only_ok=True)
  name = _field(config, 'data', 'name')
  if not path and name and os.path.isdir(cache) and not os.access(cache, os.W_OK | os.X_OK):
    from charlm.corpora import core
    if not os.path.isfile(os.path.join(core.corpus_dir(cache, name), 'meta.json')):
      raise UserError(f'the cache directory {cache} is not writable, and corpus {name} is not '
                      f'fetched into it; give a writable directory with {CACHE_FLAG}')


def _check_fields(config, sections):
  """The table-driven checks (INTEGERS, REALS, STRINGS, choices) of the fields in `sections`."""
  for section, field, least, allowed in INTEGERS:
    value = _field(config, section, field) if section in sections else None
    if value is not None and not (_is_int(value) and value >= least):
      raise UserError(f'{section}.{field} is {value!r}; use a whole number {allowed} '
                      f'(--config.{section}.{field}=...)')
  for section, field, low, low_in, high, high_in in REALS:
    value = _field(config, section, field) if section in sections else None
    if value is None:
      continue
    ok = _is_real(value) and (value >= low if low_in else value > low) and (
        high is None or (value <= high if high_in else value < high))
    if not ok:
      raise UserError(f'{section}.{field} is {value!r}; use a finite number '
                      f'{_interval(low, low_in, high, high_in)}')
  for section, field in STRINGS:
    value = _field(config, section, field) if section in sections else None
    if value is not None and not isinstance(value, str):
      raise UserError(f'{section}.{field} is {value!r}; use a string')
  choices = [('data', 'level', LEVELS)]
  if 'optim' in sections:
    from charlm import trainer  # Its makers name the choices; imports JAX.
    choices += [('optim', 'name', trainer.OPTIMIZERS),
                ('optim', 'schedule', [*trainer.SCHEDULES, 'auto'])]
  for section, field, allowed in choices:
    value = _field(config, section, field) if section in sections else None
    if value is not None and value not in allowed:
      raise UserError(f'unknown {section}.{field} {value!r}; use one of {", ".join(allowed)}')
  if 'optim' in sections:
    decay, optimizer = _field(config, 'optim', 'weight_decay'), _field(config, 'optim', 'name')
    if decay and optimizer != 'adamw':
      raise UserError(f"optim.weight_decay={decay!r} acts with optim.name='adamw' only, not "
                      f"{optimizer!r}; set --config.optim.name=adamw or optim.weight_decay=0")


def _check_hparams(config):
  """train.hparams: comma-separated names of the config's own fields."""
  from charlm import overrides
  names = [n.strip() for n in (_field(config, 'train', 'hparams') or '').split(',') if n.strip()]
  fields = overrides.field_names(config)
  for name in names:
    if name not in fields:
      raise UserError(f'train.hparams names {name!r}, which is not a config field; give '
                      'comma-separated fields: --config.train.hparams=model.hidden,optim.lr')


def _check_sampling(train):
  prime = train.get('sample_prime')
  if prime is not None and not isinstance(prime, str):
    raise UserError(f'train.sample_prime is {prime!r}; use a string')
  if not train.get('sample_every'):
    return
  temperatures = train.get('sample_temperatures')
  if (not isinstance(temperatures, (tuple, list)) or not temperatures
      or not all(_is_real(t) and t >= 0 for t in temperatures)):
    raise UserError(f'train.sample_temperatures is {temperatures!r}; with train.sample_every > 0 '
                    'use a non-empty tuple of finite numbers >= 0, such as "(0.5,1.0)"')


def check_writable(path: str, what: str, flag: str, read_only_ok: bool = False):
  """`path` is a writable directory, or can be made one: its nearest existing ancestor is.
  With `read_only_ok`, a `path` that is a directory already may be read-only: it may hold all
  that is needed, and whatever must write there says so when it must."""
  path = os.path.abspath(os.path.expanduser(path))
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = '' if existing == path else f' (in {path})'
    raise UserError(f'{what} {existing}{where} is a file, not a directory; give a directory '
                    f'with {flag}')
  if read_only_ok and existing == path:
    return
  if not os.access(existing, os.W_OK | os.X_OK):
    where = '' if existing == path else f' (to make {path})'
    raise UserError(f'{what} {existing}{where} is not writable; give a writable directory with '
                    f'{flag}')


def check_text_file(path: str, level: str):
  """A char-level text that is mostly NUL bytes is UTF-16 or UTF-32 without a byte-order
  mark, which passes as UTF-8 and would train on NUL-interleaved text: a UserError naming the
  likely encoding and the conversion."""
  if level != 'char' or not os.path.isfile(path):
    return
  with open(path, 'rb') as f:
    head = f.read(HEAD_BYTES)
  nuls = head.count(0)
  if not head or nuls < NUL_FRACTION * len(head):
    return
  at = [head[k::4].count(0) / max(1, len(head[k::4])) for k in range(4)]
  if min(at[1], at[2], at[3]) > 0.9:
    encoding = 'UTF-32LE'
  elif min(at[0], at[1], at[2]) > 0.9:
    encoding = 'UTF-32BE'
  else:
    encoding = 'UTF-16LE' if at[1] + at[3] >= at[0] + at[2] else 'UTF-16BE'
  raise UserError(f'{path} is {100 * nuls // len(head)}% NUL bytes: probably {encoding} text '
                  f'without a byte-order mark; convert it with iconv -f {encoding} -t UTF-8 '
                  f'{path} > {path}.utf8 (or train on bytes with --config.data.level=byte)')


def check_splits(config, splits: dict):
  """Each split large enough for its use, once the corpus is known: train one batch of
  batch_size x seq_len, val (evaluated at the end, when there are steps to train) batch_size+1
  tokens; before anything is compiled, so that a small split fails before any step."""
  tc = config.train
  need = {'train': tc.batch_size * tc.seq_len + 1}
  if tc.steps > 0:
    need['val'] = tc.batch_size + 1
  for name, least in need.items():
    have = len(splits[name])
    if have < least:
      raise UserError(
          f'data.split {tuple(config.data.split)} gives the {name} split {have:,} tokens, too few '
          f'for one batch of train.batch_size={tc.batch_size}' + (
              f' x train.seq_len={tc.seq_len}' if name == 'train' else '')
          + f' (needs at least {least:,}); give it a larger share, a larger file, or a smaller '
          'batch')


def warn_if_blank(vocab, tokens, path: str):
  """A text of only whitespace (newlines) trains a loss of 0 that means nothing: one warning."""
  import numpy as np
  if vocab.level == 'char':
    chars = vocab.chars
  elif len(tokens) <= 1 << 28:
    chars = [chr(b) for b in np.flatnonzero(np.bincount(tokens, minlength=256))]
  else:
    return
  if chars and all(c.isspace() for c in chars):
    print(f'warning: {path} holds only whitespace ({", ".join(map(repr, chars))}); the model '
          'will learn nothing useful from it', file=sys.stderr, flush=True)


def check_meta(meta, workdir: str, keys=('config', 'vocab', 'data', 'progress'),
               sections=('model', 'train', 'optim')):
  """A checkpoint's metadata has the `keys` and config `sections` this charlm reads; an older
  layout is one line instead of a KeyError."""
  meta = meta if isinstance(meta, dict) else {}
  missing = [k for k in keys if k not in meta]
  if not missing:
    config = meta['config'] if isinstance(meta['config'], dict) else {}
    missing = [f'config.{s}' for s in sections if s not in config]
  if missing:
    raise UserError(f'{workdir} holds checkpoints of an older charlm layout (no '
                    f'{", ".join(missing)} in their metadata); use a new --workdir or the charlm '
                    'that trained it')
