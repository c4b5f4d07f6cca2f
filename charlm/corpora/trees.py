"""Source trees: the Stacks project's LaTeX and the Linux kernel's C, from a directory or a
tarball, as one file.

Files are concatenated in sorted order of their path in the tree, so a directory and a tarball
of the same tree give the same text. Each file ends with a newline; byte-order marks and CRLF
line ends are normalised, and the rare file that is not UTF-8 is read as Latin-1.
"""
import functools
import glob
import os
import re
import tarfile
import tempfile

from charlm.corpora.core import Recipe, as_utf8, clean, walk_files
from charlm.errors import UserError


def concat_tree(source: str, out: str, suffixes: tuple[str, ...], subdirs: tuple[str, ...] = ()):
  """Writes every file of the tree at `source` whose name ends with one of `suffixes` (and, with
  `subdirs`, lies under one of them) to `out`."""
  what = '/'.join(f'*{s}' for s in suffixes) + ' files'
  what += f' under {", ".join(subdirs)}' if subdirs else ''
  with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as tmp:
    root = source if os.path.isdir(source) else _extract(source, tmp, suffixes, subdirs)
    root = _tree_root(root)
    files = [(rel, full) for rel, full in walk_files(root)
             if rel.endswith(suffixes) and (not subdirs or rel.startswith(subdirs))]
    if not files:
      raise UserError(f'{source} holds no {what}; give the right directory or tarball with '
                      '--source')
    converted = 0
    with open(out, 'wb') as f:
      for _, full in files:
        with open(full, 'rb') as src:
          data, latin1 = as_utf8(clean(src.read()))
        converted += latin1
        f.write(data if data.endswith(b'\n') or not data else data + b'\n')
  print(f'{len(files):,} {what}', flush=True)
  if converted:
    print(f'note: {converted} of them were not UTF-8 and were read as Latin-1', flush=True)
  return out


def _extract(tarball: str, tmp: str, suffixes, subdirs) -> str:
  """Extracts the matching regular files of `tarball` into `tmp` in one streaming pass."""
  if not tarfile.is_tarfile(tarball):
    raise UserError(f'{tarball} is neither a directory nor a tar archive; give a source '
                    'directory or tarball with --source')
  with tarfile.open(tarball, 'r|*') as tar:
    for member in tar:
      name = os.path.normpath(member.name).replace(os.sep, '/').lstrip('/')
      if not member.isfile() or not name.endswith(suffixes) or name.startswith('..'):
        continue
      # The tree's root is known only after extraction: keep files under a subdir at depth 0 or 1.
      if subdirs and not (name.startswith(subdirs) or name.partition('/')[2].startswith(subdirs)):
        continue
      path = os.path.join(tmp, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with tar.extractfile(member) as src, open(path, 'wb') as dst:
        dst.write(src.read())
  return tmp


def _tree_root(path: str) -> str:
  """Descends through directories that hold nothing but one directory (a tarball's top level)."""
  while True:
    entries = os.listdir(path)
    if len(entries) != 1 or not os.path.isdir(os.path.join(path, entries[0])):
      return path
    path = os.path.join(path, entries[0])


def _version_key(path: str):
  return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', path)]


def debian_linux_sources() -> list[str]:
  """The tarballs Debian's linux-source-X.Y packages install, newest first."""
  return sorted(glob.glob('/usr/src/linux-source-*.tar.*'), key=_version_key, reverse=True)


LATEX = Recipe(
    name='latex',
    about='the LaTeX source of the Stacks project (an open algebraic geometry book): all its '
          '.tex files',
    licence='GNU Free Documentation License (the Stacks project)',
    build=functools.partial(concat_tree, suffixes=('.tex',)),
    url='https://github.com/stacks/stacks-project/archive/refs/heads/master.tar.gz',
    filename='stacks-project-master.tar.gz',
    hint='or clone https://github.com/stacks/stacks-project and pass its directory with --source')

# kernel.org's published sha256 of linux-6.1.tar.xz (its v6.x/sha256sums.asc). Debian's
# linux-source-6.1 tarball, found by `local`, is another file: it is used as given, with a note.
_LINUX_URL = 'https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.1.tar.xz'
_LINUX_SHA256 = '2ca1f17051a430f6fed1196e4952717507171acfd97d96577212502703b25deb'
_LINUX_HINT = ('or `apt-get install linux-source-6.1` (Debian; it installs '
               '/usr/src/linux-source-6.1.tar.xz, which is then found by itself)')

LINUX = Recipe(
    name='linux',
    about='all .c and .h files of a Linux kernel source tree (about 1.2 GB for 6.1)',
    licence='GPL-2.0 (the Linux kernel)',
    build=functools.partial(concat_tree, suffixes=('.c', '.h')),
    url=_LINUX_URL,
    filename='linux-6.1.tar.xz',
    sha256=_LINUX_SHA256,
    local=debian_linux_sources,
    hint=_LINUX_HINT,
    level='byte')

LINUX_SMALL = Recipe(
    name='linux_small',
    about="the .c and .h files of a Linux tree's kernel/ and mm/ (about 17 MB for 6.1): a subset "
          'that trains on a CPU',
    licence='GPL-2.0 (the Linux kernel)',
    build=functools.partial(concat_tree, suffixes=('.c', '.h'), subdirs=('kernel/', 'mm/')),
    url=_LINUX_URL,
    filename='linux-6.1.tar.xz',
    sha256=_LINUX_SHA256,
    folder='linux',
    local=debian_linux_sources,
    hint=_LINUX_HINT,
    level='byte')
