"""Crash-safe file writes: a file is either its old or its new content, never a torn mix.

Writes a temporary file beside the target, fsyncs it, renames it over the target and fsyncs
the directory, so that a kill -9 or a power loss at any moment leaves one whole version.
"""
import json
import os
import secrets


def write_text(path: str, text: str):
  """Replaces `path` with `text` (UTF-8) atomically."""
  write_bytes(path, text.encode('utf-8'))


def write_json(path: str, obj, **dump_kwargs):
  """Replaces `path` with `obj` as JSON atomically (keywords go to json.dumps)."""
  write_text(path, json.dumps(obj, **{'ensure_ascii': False, **dump_kwargs}))


def write_bytes(path: str, data: bytes):
  """Replaces `path` with `data` atomically; an existing file keeps its mode."""
  directory = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.{secrets.token_hex(4)}.tmp')
  mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666  # Less the umask.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_directory(directory)


def fsync_directory(directory: str):
  """Makes a rename in `directory` durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)



class AppendOnly:
  """A log file grown by whole records only: a write or sync that fails (a full disk) cuts the
  file back to its last whole record before the error goes on, so it never ends torn."""

  def __init__(self, path: str):
    self.path = path
    self._file = open(path, 'ab', buffering=0)  # Each write reaches the file, or raises.
    self._whole = self._synced = self._file.seek(0, os.SEEK_END)

  def write(self, data: bytes):
    view = memoryview(data)
    try:
      while view:
        view = view[self._file.write(view):]
    except BaseException:
      self._cut(self._whole)
      raise
    self._whole += len(data)

  def sync(self):
    """fsync, where some filesystems (NFS, quotas) first report a full disk."""
    if self._synced == self._whole:
      return
    try:
      os.fsync(self._file.fileno())
    except BaseException:
      self._cut(self._synced)  # What was written since may be lost: drop it whole.
      raise
    self._synced = self._whole

  def _cut(self, size: int):
    try:
      os.ftruncate(self._file.fileno(), size)
    except OSError:
      pass
    self._whole, self._synced = size, min(self._synced, size)

  def close(self):
    self._file.close()


def append_bytes(path: str, data: bytes):
  """Appends `data` to `path` whole or, where that fails, not at all."""
  log = AppendOnly(path)
  try:
    log.write(data)
    log.sync()
  finally:
    log.close()
