"""Where charlm caches what it builds, and how it streams big files: shared by the token cache
(data), the named corpora and the native kernel build, so none of them imports another."""
import hashlib
import os

CHUNK_BYTES = 16 << 20  # Files are read, hashed and copied this much at a time.
WHERE = '--config.data.cache_dir (or $CHARLM_CACHE)'  # Where a message says the cache is set.


def default_cache_dir(config_dir: str = '') -> str:
  """`config_dir` if set, else $CHARLM_CACHE, else ~/.cache/charlm."""
  return config_dir or os.environ.get('CHARLM_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'charlm')


def sha256_file(path: str) -> str:
  """The file's sha256 in hex, read in chunks so memory does not grow with its size."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()
