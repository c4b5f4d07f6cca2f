"""enwik8: the first 10^8 bytes of the English Wikipedia XML dump of March 2006 (Hutter Prize)."""
import os
import shutil
import zipfile

from charlm.cache import CHUNK_BYTES
from charlm.corpora.core import Recipe
from charlm.errors import UserError

ENWIK8_BYTES = 100_000_000


def build(source: str, out: str, size: int = ENWIK8_BYTES) -> str:
  """Unzips enwik8.zip; an already unzipped enwik8 is used where it is. It must hold `size`
  bytes (tests build a tiny enwik8)."""
  if zipfile.is_zipfile(source):
    with zipfile.ZipFile(source) as z:
      members = [m for m in z.infolist() if os.path.basename(m.filename) == 'enwik8']
      if not members:
        raise UserError(f'{source} holds no file named enwik8; give enwik8.zip from the Hutter '
                        'Prize page, or the unzipped enwik8')
      _check(source, members[0].file_size, z.open(members[0]).read(16), size)
      with z.open(members[0]) as src, open(out, 'wb') as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)
    return out
  with open(source, 'rb') as f:
    _check(source, os.path.getsize(source), f.read(16), size)
  return source


def _check(source, size, head, expected_size):
  if size != expected_size:
    raise UserError(f'{source} holds {size:,} bytes of text, but enwik8 is exactly '
                    f'{expected_size:,}; give enwik8.zip from the Hutter Prize page, or its enwik8')
  if not head.startswith(b'<mediawiki'):
    raise UserError(f'{source} does not start with <mediawiki, so it is not enwik8; give '
                    'enwik8.zip from the Hutter Prize page, or its enwik8')


RECIPE = Recipe(
    name='wikipedia',
    about='enwik8: the first 10^8 bytes of an English Wikipedia XML dump, the Hutter Prize file; '
          'bytes, split 90M/5M/5M as the literature reports bits per character',
    licence='Wikipedia text: CC BY-SA 3.0 / GFDL',
    build=build,
    url='https://mattmahoney.net/dc/enwik8.zip',
    filename='enwik8.zip',
    # The archive's published sha256 (36,445,475 bytes; its one member is the 10^8-byte enwik8).
    sha256='547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc',
    level='byte',
    split=(0.9, 0.05, 0.05))
