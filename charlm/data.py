"""Text to tokens to batches: vocabulary, streaming encoding, token cache, splits, TBPTT streams.

A corpus is encoded once into a flat token file in a cache directory; training memory-maps
it, so memory does not grow with the corpus. Batches follow char-rnn: the split is cut into
`batch_size` contiguous streams and consecutive batches continue every stream, so the model's
hidden state can be carried from one batch to the next.
"""
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator

import numpy as np

from charlm import atomic, locks
from charlm.cache import CHUNK_BYTES, WHERE, default_cache_dir, sha256_file
from charlm.errors import UserError, disk_full_is_user_error

MAX_CODE_POINT = 0x110000
LARGE_VOCAB_WARNING = 5000


class Vocab:
  """Maps characters (or bytes) to token ids and back."""

  def __init__(self, level: str, chars: list[str] | None = None):
    if level not in ('char', 'byte'):
      raise UserError(f"unknown data level {level!r}; use --config.data.level=char or =byte")
    self.level = level
    self.chars = list(chars) if level == 'char' else []
    self._index = {c: i for i, c in enumerate(self.chars)}

  @property
  def size(self) -> int:
    return len(self.chars) if self.level == 'char' else 256

  @property
  def dtype(self):
    return np.uint8 if self.size <= 256 else np.uint16 if self.size <= 65536 else np.uint32

  def unknown(self, text: str) -> list[str]:
    """Characters of `text` that this vocabulary cannot encode, in order of first appearance."""
    if self.level == 'byte':
      return []
    return list(dict.fromkeys(c for c in text if c not in self._index))

  def encode(self, text: str) -> np.ndarray:
    if self.level == 'byte':
      return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)
    missing = self.unknown(text)
    if missing:
      raise UserError(f'text has characters outside the vocabulary: {show_chars(missing)}')
    return np.array([self._index[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    if self.level == 'byte':
      return bytes(ids.astype(np.uint8).tolist()).decode('utf-8', errors='replace')
    return ''.join(self.chars[i] for i in ids.tolist())

  def to_json(self) -> dict:
    return {'level': self.level, 'chars': self.chars}

  @classmethod
  def from_json(cls, d: dict) -> 'Vocab':
    return cls(d['level'], d.get('chars'))

  def __eq__(self, other):
    return isinstance(other, Vocab) and self.to_json() == other.to_json()


def show_chars(chars, limit=10) -> str:
  """Characters for a message: repr'd, at most `limit`, then how many more."""
  shown = ', '.join(repr(c) for c in chars[:limit])
  return shown + (f' and {len(chars) - limit} more' if len(chars) > limit else '')


# ---------------------------------------------------------------------------------------------
# Streaming encoding: a text file -> token ids, a chunk at a time.

NOT_UTF8_FIX = 'train on bytes with --config.data.level=byte, or convert the file to UTF-8'


def encode_chunks(path: str, vocab: Vocab, chunk_bytes: int = CHUNK_BYTES,
                  on_unknown: Callable[[list[str], int], None] | None = None,
                  validate: bool = True, not_utf8_fix: str = NOT_UTF8_FIX) -> Iterator[np.ndarray]:
  """Yields the token ids of `path` (arrays of vocab.dtype), one chunk of about `chunk_bytes`
  at a time (0: CHUNK_BYTES), so memory does not grow with the file.

  Characters outside the vocabulary are dropped: `on_unknown(chars, count)` hears, for each
  chunk that had some, its unknown characters in order of first appearance and how many it
  dropped; without `on_unknown` they are a UserError. Invalid UTF-8 is a UserError naming its
  byte offset and ending in `not_utf8_fix`; `validate=False` skips that check, for a file read
  and checked before.

  Works on UTF-8 bytes rather than decoded text: most characters of most files are ASCII, which
  `bytes.translate` maps at memory speed, so only the multi-byte sequences go through numpy.
  """
  chunk_bytes = chunk_bytes or CHUNK_BYTES
  if vocab.level == 'byte':
    with open(path, 'rb') as f:
      while chunk := f.read(chunk_bytes):
        yield np.frombuffer(chunk, np.uint8)
    return
  points = np.array([ord(c) for c in vocab.chars], np.int64)
  ids_of = np.zeros(MAX_CODE_POINT, vocab.dtype)
  ids_of[points] = np.arange(len(points))
  known = np.zeros(MAX_CODE_POINT, bool)
  known[points] = True
  # bytes.translate maps ASCII to ids at memory speed where their ids are below 0xFF, which
  # marks unknown ASCII characters; a vocabulary sorted by code point, as prepare makes it,
  # gives ASCII the smallest ids. Any other vocabulary takes numpy's lookup for ASCII too.
  ascii_table = None
  if ids_of[:128][known[:128]].max(initial=0) < 0xFF:
    ascii_table = np.zeros(256, np.uint8)
    ascii_table[:128] = np.where(known[:128], ids_of[:128], 0xFF)
    ascii_table = ascii_table.tobytes()
  for chunk in _utf8_chunks(path, chunk_bytes, validate, not_utf8_fix):
    b = np.frombuffer(chunk, np.uint8)
    if ascii_table is None:
      ids = ids_of[b]  # Right at ASCII; lead bytes are overwritten and the rest dropped below.
      unknown = not known[b[b < 0x80]].all()
    else:
      translated = chunk.translate(ascii_table)
      ids, unknown = np.frombuffer(translated, np.uint8), b'\xff' in translated
    if chunk.isascii():
      ids = ids.astype(vocab.dtype, copy=False)
    else:
      lead = np.flatnonzero(b >= 0xC0)
      lead_points = _lead_code_points(b, lead)
      ids = ids.astype(vocab.dtype)  # A writable copy.
      ids[lead] = ids_of[lead_points]
      starts = (b < 0x80) | (b >= 0xC0)
      ids = ids[starts]  # Drops continuation bytes.
      unknown = unknown or not known[lead_points].all()
    if unknown:
      if chunk.isascii():
        chunk_points = b
      else:
        chunk_points = b.astype(np.uint32)
        chunk_points[lead] = lead_points
        chunk_points = chunk_points[starts]
      unknown_at = ~known[chunk_points]
      new, first = np.unique(chunk_points[unknown_at], return_index=True)
      chars = [chr(p) for p in new[np.argsort(first)]]
      if on_unknown is None:
        raise UserError(f'{path} has characters outside the vocabulary: {show_chars(chars)}')
      on_unknown(chars, int(unknown_at.sum()))
      ids = ids[~unknown_at]
    yield ids


def _utf8_chunks(path: str, chunk_bytes: int, validate: bool = True,
                 not_utf8_fix: str = NOT_UTF8_FIX) -> Iterator[bytes]:
  """Yields `path` in chunks of about `chunk_bytes` that end between characters. With
  `validate`, invalid UTF-8 is a UserError naming its byte offset, then `not_utf8_fix`."""
  offset, carry = 0, b''
  with open(path, 'rb') as f:
    while True:
      raw = f.read(chunk_bytes)
      chunk = carry + raw
      cut = len(chunk) if not raw else _last_boundary(chunk)
      chunk, carry = chunk[:cut], chunk[cut:]
      if validate and not chunk.isascii():
        try:
          chunk.decode('utf-8')
        except UnicodeDecodeError as e:
          raise UserError(
              f'{path} is not valid UTF-8 (byte {offset + e.start}); {not_utf8_fix}') from None
      if chunk:
        yield chunk
      if not raw:
        return
      offset += len(chunk)


def _last_boundary(data: bytes) -> int:
  """The offset after the last whole UTF-8 sequence: before a trailing incomplete one, if any."""
  for back in range(1, min(4, len(data)) + 1):
    byte = data[-back]
    if byte < 0x80:
      return len(data)
    if byte >= 0xC0:  # A lead byte: its sequence is 2, 3 or 4 bytes long.
      length = 2 + (byte >= 0xE0) + (byte >= 0xF0)
      return len(data) - back if back < length else len(data)
  return len(data)


def _code_points(text: str) -> np.ndarray:
  return np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)


def _lead_code_points(b: np.ndarray, lead: np.ndarray) -> np.ndarray:
  """Code points of the multi-byte UTF-8 sequences starting at `lead` in valid UTF-8 `b`."""
  last = len(b) - 1
  b0 = b[lead].astype(np.uint32)
  c1, c2, c3 = (b[np.minimum(lead + k, last)].astype(np.uint32) & 0x3F for k in (1, 2, 3))
  return np.where(b0 < 0xE0, ((b0 & 0x1F) << 6) | c1,
                  np.where(b0 < 0xF0, ((b0 & 0x0F) << 12) | (c1 << 6) | c2,
                           ((b0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3))


# ---------------------------------------------------------------------------------------------
# Preparation: source text file -> cached token file.

@dataclasses.dataclass
class Corpus:
  """A prepared corpus: memory-mapped tokens and their vocabulary."""
  tokens: np.ndarray  # np.memmap of token ids, one per character (or byte).
  vocab: Vocab
  source: str
  cache: str


def _source_fingerprint(path: str) -> dict:
  st = os.stat(path)
  return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def _file_vocab(path: str, chunk_bytes: int, digest=None) -> tuple[Vocab, int]:
  """The characters of `path`, sorted by code point, and how many it has; a streaming pass that
  checks the UTF-8 and feeds the bytes to `digest` (a hashlib object) if given."""
  present = np.zeros(MAX_CODE_POINT, bool)
  seen_ascii, count = b'', 0
  for chunk in _utf8_chunks(path, chunk_bytes):
    if digest is not None:
      digest.update(chunk)
    count += len(chunk)
    new = chunk.translate(None, seen_ascii)  # Multi-byte sequences stay whole.
    if new:
      if not new.isascii():
        count -= int(np.count_nonzero(np.frombuffer(chunk, np.uint8) & 0xC0 == 0x80))
      points = _code_points(new.decode('utf-8'))
      for i in range(0, len(points), 1 << 22):
        present[points[i:i + (1 << 22)]] = True
      seen_ascii = bytes(np.flatnonzero(present[:128]).tolist())
  return Vocab('char', [chr(c) for c in np.flatnonzero(present)]), count


def _encode_file(path: str, out_path: str, level: str, chunk_bytes: int,
                 after_first_pass: Callable[[], None] | None = None) -> tuple[Vocab, dict, str]:
  """Writes the token file for `path`; returns its vocabulary and the fingerprint and sha256 of
  the source it encoded. Two streaming passes in char mode, one in byte mode.

  A source that changes meanwhile (its size or mtime, a character the first pass did not see,
  a token count that does not fit) is read again once, then is a UserError: the tokens are
  never a mix of two versions. `after_first_pass` (for tests) runs between the passes of each
  try.
  """
  for _ in range(2):
    before, digest = _source_fingerprint(path), hashlib.sha256()
    changed = False
    if level == 'byte':
      vocab, count = Vocab('byte'), 0
      with open(path, 'rb') as src, open(out_path, 'wb') as dst:
        while chunk := src.read(chunk_bytes):
          digest.update(chunk)
          dst.write(chunk)
          count += len(chunk)
      if after_first_pass:
        after_first_pass()
    else:
      vocab, count = _file_vocab(path, chunk_bytes, digest)
      if after_first_pass:
        after_first_pass()
      def on_unknown(chars, dropped):
        nonlocal changed
        changed = True
      with open(out_path, 'wb') as dst:
        for ids in encode_chunks(path, vocab, chunk_bytes, on_unknown, validate=False):
          dst.write(memoryview(ids))  # Not ids.tofile, whose errors drop the errno (ENOSPC).
    written = os.path.getsize(out_path) // np.dtype(vocab.dtype).itemsize
    if not changed and written == count and _source_fingerprint(path) == before:
      break
  else:
    raise UserError(f'{path} changed while it was being encoded, twice; prepare it again once '
                    'nothing is writing to it')
  if level != 'byte' and vocab.size > LARGE_VOCAB_WARNING:
    print(f'warning: {path} has {vocab.size:,} distinct characters, so the embedding and output '
          f'layers have {vocab.size:,} rows; consider --config.data.level=byte (256).', flush=True)
  return vocab, before, digest.hexdigest()


def prepare(path: str, level: str = 'char', cache_dir: str = '',
            chunk_bytes: int = CHUNK_BYTES) -> Corpus:
  """Encodes `path` into a cached token file (reused while the source is unchanged), reading
  it `chunk_bytes` at a time (0: CHUNK_BYTES).

  Many processes may prepare one file at once (a sweep, a multi-process run): the entry's lock
  file lets one build while the others wait, then find its build. Each build is a new
  directory inside the entry, named by meta.json (replaced atomically); a build is deleted only
  under the exclusive lock and only when no process has it loaded: a process holds a shared
  lock on a build's token file while its tokens live. Files get the umask's permissions.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise UserError(f'text file not found: {path}; set --config.data.path to an existing file')
  fingerprint = _source_fingerprint(path)
  if fingerprint['size'] == 0:
    raise UserError(f'text file is empty: {path}; give a file with some text in it')
  key = hashlib.sha1(f'{path}|{level}'.encode()).hexdigest()[:12]
  stem = os.path.splitext(os.path.basename(path))[0]
  root = default_cache_dir(cache_dir)
  entry = os.path.join(root, f'{stem}-{level}-{key}')
  # A full disk: one line, and no build of it left (see _build). A read-only cache serves the
  # builds it holds; one that must take a new build is one line (see _unwritable_cache).
  with disk_full_is_user_error(entry, WHERE):
    with _unwritable_cache(root, path):
      os.makedirs(root, exist_ok=True)
    with locks.flock(entry + '.lock', exclusive=False):
      corpus = _cached(entry, path, fingerprint)
    if corpus is None:
      with contextlib.ExitStack() as held:
        with _unwritable_cache(root, path):
          held.enter_context(locks.flock(entry + '.lock'))
        # Another process may have built it meanwhile.
        corpus = _cached(entry, path, fingerprint, warn=False)
        if corpus is None:
          corpus = _build(entry, path, level, fingerprint, chunk_bytes or CHUNK_BYTES)
  return corpus


@contextlib.contextmanager
def _unwritable_cache(root: str, source: str):
  """Turns a permission error writing into the cache `root` (a read-only cache that must take a
  new build of `source`) into one UserError naming what cannot be written and how to give
  another cache. Wrap only writes into the cache: reading the source fails for its own reasons."""
  try:
    yield
  except OSError as e:
    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not e.filename:
      raise
    root, path = os.path.abspath(root), os.path.abspath(e.filename)
    where = os.path.dirname(path)
    if os.path.lexists(path) and os.access(where, os.W_OK | os.X_OK):
      what = f'the cache file {path}'  # A lock file another user made, in a writable cache.
    else:
      inside = where == root or where.startswith(root + os.sep)
      what = f'the cache directory {where}' + ('' if inside else f' (to make {root})')
    raise UserError(f'{what} is not writable, and the cache holds no up-to-date tokens of '
                    f'{source}; give a writable directory with --config.data.cache_dir=DIR or '
                    '$CHARLM_CACHE') from None


def _cached(entry: str, source: str, fingerprint: dict, warn: bool = True) -> Corpus | None:
  """The entry's build if it was made from `source` as it is now; call under the entry's lock.
  A build a crash left damaged counts as none (rebuilt from the source, which is here), with a
  warning unless `warn` is off."""
  meta_path = os.path.join(entry, 'meta.json')
  if not os.path.exists(meta_path):
    return None
  try:
    meta = _read_meta(meta_path)
    if ({k: meta.get(k) for k in fingerprint} != fingerprint
        or sha256_file(source) != meta.get('sha256')):
      return None
    # Caches from before builds had their own directories hold the files in the entry itself.
    build = os.path.join(entry, meta['build']) if 'build' in meta else entry
    return _load(build, source, meta.get('num_tokens'))
  except _CorruptCache as e:
    if warn:
      print(f'warning: the token cache {entry} is corrupt ({e}); rebuilding it from {source}',
            flush=True)
    return None


def _build(entry: str, source: str, level: str, fingerprint: dict, chunk_bytes: int) -> Corpus:
  """Encodes `source` into a new build of `entry`, points meta.json at it and deletes the
  entry's other builds; call under the entry's exclusive lock."""
  name = f'build-{secrets.token_hex(6)}'
  build = os.path.join(entry, name)
  with _unwritable_cache(os.path.dirname(entry), source):
    os.makedirs(entry, exist_ok=True)
    os.mkdir(build)  # Mode 0o777 less the umask, so that a private corpus stays private.
  try:
    tokens = os.path.join(build, 'tokens.bin')
    # The source as encoded, which may be newer than `fingerprint`, read before the lock.
    vocab, fingerprint, digest = _encode_file(source, tokens, level, chunk_bytes)
    meta = {**fingerprint, 'sha256': digest, 'source': source, 'level': level,
            'dtype': np.dtype(vocab.dtype).name, 'build': name,
            'num_tokens': os.path.getsize(tokens) // np.dtype(vocab.dtype).itemsize}
    _write_json(os.path.join(build, 'vocab.json'), vocab.to_json())
    _write_json(os.path.join(entry, 'meta.json'), meta)  # Atomic: the switch to this build.
  except BaseException:
    shutil.rmtree(build, ignore_errors=True)
    with contextlib.suppress(OSError):
      os.rmdir(entry)  # Only if empty: a failed first build leaves no entry.
    raise
  _sweep(entry, keep=name)
  return _load(build, source, meta['num_tokens'])


def _sweep(entry: str, keep: str) -> None:
  """Deletes the entry's builds but `keep` that no process has loaded: older builds, a crashed
  build's leftovers, the files of the old layout; call under the entry's exclusive lock, so
  that no process is between reading meta.json and loading a build."""
  kept = {'meta.json', keep}
  if _in_use(os.path.join(entry, 'tokens.bin')):  # The old layout's build, in the entry itself.
    kept |= {'tokens.bin', 'vocab.json'}
  for other in os.listdir(entry):
    other = os.path.join(entry, other)
    if os.path.basename(other) in kept:
      continue
    if os.path.isdir(other) and not os.path.islink(other):
      if not _in_use(os.path.join(other, 'tokens.bin')):
        shutil.rmtree(other, ignore_errors=True)
    else:
      with contextlib.suppress(OSError):
        os.unlink(other)


class _CorruptCache(Exception):
  """A cache entry that a crash left incomplete; its message says what is wrong."""


def _read_meta(meta_path: str) -> dict:
  try:
    with open(meta_path, 'rb') as f:
      meta = json.loads(f.read().decode('utf-8'))
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are.
    raise _CorruptCache(f'meta.json is not valid JSON: {e}') from None
  if not isinstance(meta, dict):
    raise _CorruptCache('meta.json is not a JSON object')
  return meta


def _load(cache: str, source: str, num_tokens: int | None = None) -> Corpus:
  """The cached corpus; checks the token file against the length meta.json recorded."""
  try:
    with open(os.path.join(cache, 'vocab.json'), 'rb') as f:
      vocab = Vocab.from_json(json.loads(f.read().decode('utf-8')))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise _CorruptCache(f'vocab.json is unreadable: {e}') from None
  tokens_path = os.path.join(cache, 'tokens.bin')
  size = os.path.getsize(tokens_path) if os.path.exists(tokens_path) else None
  expected = None if num_tokens is None else int(num_tokens) * np.dtype(vocab.dtype).itemsize
  if size is None or (expected is not None and size != expected):
    raise _CorruptCache(f'tokens.bin has {size} bytes, meta.json records {expected}')
  tokens = np.memmap(tokens_path, dtype=vocab.dtype, mode='r')
  # A shared lock on the token file while any view of the tokens lives (views keep the memmap
  # alive, and it the open file): a rebuild deletes only builds no process holds this way.
  tokens._charlm_lock = open(tokens_path, 'rb')
  fcntl.flock(tokens._charlm_lock, fcntl.LOCK_SH)
  return Corpus(tokens=tokens, vocab=vocab, source=source, cache=cache)


def _in_use(tokens: str) -> bool:
  """Whether some process has the token file `tokens` loaded (see _load)."""
  try:
    with open(tokens, 'rb') as f:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except FileNotFoundError:
    return False
  except OSError:
    return True
  return False


def _write_json(path, obj):
  atomic.write_json(path, obj)


# ---------------------------------------------------------------------------------------------
# Splits and batches.

def check_split(split):
  """data.split, before the corpus is known: three non-negative fractions summing to 1, or
  three token counts (None: the reader's default)."""
  example = 'for example --config.data.split="(0.9,0.05,0.05)"'
  if split is None:
    return
  if not isinstance(split, (tuple, list)) or len(split) != 3 or not all(
      isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool)
      and np.isfinite(p) for p in split):
    raise UserError(f'data.split is {split!r}; give three train/val/test fractions or token '
                    f'counts, {example}')
  if min(split) < 0:
    raise UserError(f'data.split is {tuple(split)}; its parts must be >= 0, {example}')
  if not _is_counts(split) and abs(sum(split) - 1) > 1e-6:
    raise UserError(f'data.split is {tuple(split)}, summing to {sum(split):g}; give fractions '
                    f'summing to 1 or three whole token counts, {example}')


def split(tokens: np.ndarray, fractions) -> dict[str, np.ndarray]:
  """Contiguous train/val/test views of `tokens` by `fractions` (which must sum to 1), or by
  three integer token counts summing to len(tokens): a published split, kept exactly."""
  check_split(tuple(fractions))
  n = len(tokens)
  if _is_counts(fractions):
    a, b, c = (int(x) for x in fractions)
    if a + b + c != n:
      raise UserError(f'data.split gives token counts {(a, b, c)} summing to {a + b + c:,}, but '
                      f'the corpus has {n:,} tokens; give counts that sum to that, or fractions '
                      'such as --config.data.split="(0.9,0.05,0.05)"')
    return {'train': tokens[:a], 'val': tokens[a:a + b], 'test': tokens[a + b:]}
  fractions = tuple(float(f) for f in fractions)
  a = int(round(n * fractions[0]))
  b = int(round(n * (fractions[0] + fractions[1])))
  return {'train': tokens[:a], 'val': tokens[a:b], 'test': tokens[b:]}


def _is_counts(parts) -> bool:
  """Three integers summing to more than 1 are token counts; (1, 0, 0) is still fractions."""
  parts = tuple(parts)
  return (len(parts) == 3 and sum(parts) > 1 if all(
      isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in parts) else False)


@dataclasses.dataclass
class Batch:
  inputs: np.ndarray  # [rows, seq_len] int32
  targets: np.ndarray  # [rows, seq_len] int32
  weights: np.ndarray  # [rows, seq_len] float32; 0 marks padding
  reset: bool  # True on the first batch of a pass: start from a zero hidden state.


class Streams:
  """`batch_size` contiguous streams over `tokens`, read `seq_len` characters at a time.

  Stream b covers tokens[b*L : (b+1)*L + 1] with L = (len(tokens) - 1) // batch_size. Batch k of
  a pass holds, for every stream, inputs at offsets [k*T, (k+1)*T) and targets shifted by one.
  `rows` selects the streams this process feeds (all of them on one host). With `pad_last`, a
  final partial window is padded and masked, so a pass scores every stream's characters.
  """

  def __init__(self, tokens, batch_size: int, seq_len: int, rows=None, pad_last=False,
               what='the training split'):
    self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
    self.length = (len(tokens) - 1) // batch_size
    need = batch_size * (1 if pad_last else seq_len) + 1
    if self.length < (1 if pad_last else seq_len):
      raise UserError(
          f'{what} has {len(tokens)} characters, too few for one batch of {batch_size} streams '
          f'x {seq_len if not pad_last else 1} characters (needs at least {need}); use a larger '
          'file or lower --config.train.batch_size / --config.train.seq_len')
    self.rows = np.arange(batch_size) if rows is None else np.asarray(rows)
    self.starts = self.rows * self.length
    self.pad_last = pad_last
    self.num_batches = (-(-self.length // seq_len) if pad_last else self.length // seq_len)

  def batch(self, index: int) -> Batch:
    t = self.seq_len
    offsets = np.arange(index * t, (index + 1) * t + 1)
    valid = offsets <= self.length
    idx = self.starts[:, None] + np.minimum(offsets, self.length)[None, :]
    window = np.asarray(self.tokens[idx.reshape(-1)], np.int32).reshape(idx.shape)
    weights = np.broadcast_to(valid[1:].astype(np.float32), (len(self.rows), t)).copy()
    return Batch(window[:, :-1], window[:, 1:], weights, reset=index == 0)

  def __iter__(self) -> Iterator[Batch]:
    for k in range(self.num_batches):
      yield self.batch(k)


class TrainIterator:
  """Endless TBPTT batches over the train split; its position is a small, exact state."""

  def __init__(self, streams: Streams):
    self.streams = streams
    self.epoch, self.index = 0, 0

  @property
  def steps_per_epoch(self) -> int:
    return self.streams.num_batches

  def __next__(self) -> Batch:
    batch = self.streams.batch(self.index)
    self.index += 1
    if self.index == self.streams.num_batches:
      self.epoch, self.index = self.epoch + 1, 0
    return batch

  def __iter__(self):
    return self

  def get_state(self) -> dict:
    return {'epoch': self.epoch, 'index': self.index}

  def set_state(self, state: dict):
    if not 0 <= state['index'] < self.streams.num_batches:
      raise UserError('the checkpoint\'s data position does not fit this corpus; the corpus, '
                      'batch size or sequence length changed: use a new --workdir')
    self.epoch, self.index = int(state['epoch']), int(state['index'])


if __name__ == '__main__':
  # `python -m charlm.data` is an alias of `python -m charlm.corpora`, the command line that
  # prepares corpora. This is the one place data names corpora: it runs only as a script, so
  # importing charlm.data never imports charlm.corpora.
  from charlm.corpora.__main__ import main
  main(prog='python -m charlm.data')
