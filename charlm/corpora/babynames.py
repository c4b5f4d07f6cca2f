"""US first names from the 1990 census lists shipped in the PyPI package `names==0.3.0`."""
import os
import random
import tarfile

from charlm.corpora.core import Recipe, walk_files
from charlm.errors import UserError

LISTS = ('dist.male.first', 'dist.female.first')


def build(source: str, out: str) -> str:
  """One name per line, capitalised ('JAMES' -> 'James'), both lists whole (5,494 lines, 5,163
  distinct names), shuffled with a fixed seed so that the validation split is a fair sample
  rather than the rarest female names."""
  found = {}
  if os.path.isdir(source):
    for rel, full in walk_files(source):
      if os.path.basename(rel) in LISTS:
        with open(full, 'rb') as f:
          found.setdefault(os.path.basename(rel), f.read())
  elif tarfile.is_tarfile(source):
    with tarfile.open(source) as tar:
      for m in tar.getmembers():
        if m.isfile() and os.path.basename(m.name) in LISTS:
          found.setdefault(os.path.basename(m.name), tar.extractfile(m).read())
  missing = [name for name in LISTS if name not in found]
  if missing:
    raise UserError(f'{source} holds no {" or ".join(missing)}; give the sdist '
                    'names-0.3.0.tar.gz or a directory with both lists')
  names = [line.split()[0].decode('ascii').capitalize()
           for name in LISTS for line in found[name].splitlines() if line.strip()]
  random.Random(0).shuffle(names)
  with open(out, 'w', encoding='utf-8') as f:
    f.write(''.join(n + '\n' for n in names))
  return out


RECIPE = Recipe(
    name='names',
    about='US first names, one per line: the male and female lists of the 1990 census in the '
          'PyPI sdist names==0.3.0',
    licence='public domain (US Census Bureau data); the names package is MIT',
    build=build,
    pypi='names',
    filename='names-0.3.0.tar.gz',
    sha256='726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671')
