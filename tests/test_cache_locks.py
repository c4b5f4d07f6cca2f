"""The token cache under concurrency: many processes preparing one file, rebuilds under
readers, old cache layouts, and the umask's permissions."""
import gc
import hashlib
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, read_only, without_root_power, write_text

from charlm import data

WORKER = '''
import hashlib, json, sys, time
from charlm import data
start, step, cache, paths = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
for i, path in enumerate(paths):
  while time.time() < start + i * step:  # All workers start each round together.
    time.sleep(0.001)
  corpus = data.prepare(path, 'char', cache)
  print(json.dumps([path, hashlib.sha256(corpus.tokens.tobytes()).hexdigest(),
                    corpus.vocab.chars, corpus.cache]), flush=True)
'''


def prepare_at_once(cache, paths, workers=6):
  """`workers` processes prepare each of `paths`, all at the same moment; their results."""
  start = time.time() + 1.5
  procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(start), '0.25', cache, *paths],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(workers)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    results.append([json.loads(line) for line in out.splitlines()])
  for rows in results:  # One process encoded each file; the others found its build.
    assert [row[3] for row in rows] == [row[3] for row in results[0]]
  return results


def digest(corpus):
  return hashlib.sha256(corpus.tokens.tobytes()).hexdigest()


def test_processes_preparing_one_file_at_once_all_succeed_and_agree(tmp_path):
  cache = str(tmp_path / 'cache')
  paths = [write_text(tmp_path / f't{i}.txt', lines=3000, seed=i) for i in range(4)]
  first = prepare_at_once(cache, paths)
  held = {path: data.prepare(path, 'char', cache) for path in paths}  # Loaded by this process.
  before = {path: (digest(c), c.vocab.decode(c.tokens)) for path, c in held.items()}
  for path, corpus in held.items():
    assert corpus.vocab.decode(corpus.tokens) == open(path).read()
  for rows in first:
    assert [(p, h, chars) for p, h, chars, _ in rows] == [
        (p, before[p][0], held[p].vocab.chars) for p in paths]

  for i, path in enumerate(paths):  # New texts: every worker finds the cache stale at once.
    with open(path, 'a') as f:
      f.write(f'and {i} more ~\n')
  second = prepare_at_once(cache, paths)
  for path in paths:
    rebuilt = data.prepare(path, 'char', cache)
    assert rebuilt.vocab.decode(rebuilt.tokens) == open(path).read()
    assert all({p: h for p, h, *_ in rows}[path] == digest(rebuilt) for rows in second)
    builds = [rebuilt.cache, held[path].cache]  # The old one is in use here, so it stays.
    assert sorted(os.listdir(os.path.dirname(rebuilt.cache))) == sorted(
        ['meta.json', *map(os.path.basename, builds)])
    assert (digest(held[path]), held[path].vocab.decode(held[path].tokens)) == before[path]

  # Once no process has a build loaded, the next rebuild deletes it; a view of the tokens
  # (the train split, say) keeps its build in use as the whole corpus does.
  view, in_use = held[paths[0]].tokens[:1000], held[paths[0]].cache
  del held, rebuilt, corpus
  gc.collect()
  for path in paths:
    with open(path, 'a') as f:
      f.write('and more\n')
    newest = data.prepare(path, 'char', cache)
    kept = [newest.cache, *([in_use] if path == paths[0] else [])]
    assert sorted(os.listdir(os.path.dirname(newest.cache))) == sorted(
        ['meta.json', *map(os.path.basename, kept)])
  assert hashlib.sha256(view.tobytes()).hexdigest() == hashlib.sha256(
      open(os.path.join(in_use, 'tokens.bin'), 'rb').read()[:1000]).hexdigest()


def test_a_cache_of_the_old_layout_is_found_then_replaced(tmp_path):
  cache = str(tmp_path / 'cache')
  path = write_text(tmp_path / 't.txt')
  build = data.prepare(path, 'char', cache).cache
  entry = os.path.dirname(build)
  meta = json.load(open(os.path.join(entry, 'meta.json')))
  for name in ('tokens.bin', 'vocab.json'):  # As caches were before builds had directories.
    os.replace(os.path.join(build, name), os.path.join(entry, name))
  os.rmdir(build)
  del meta['build']
  with open(os.path.join(entry, 'meta.json'), 'w') as f:
    json.dump(meta, f)
  old = data.prepare(path, 'char', cache)
  assert old.cache == entry and old.vocab.decode(old.tokens) == open(path).read()
  with open(path, 'a') as f:
    f.write('~\n')
  new = data.prepare(path, 'char', cache)
  assert new.vocab.decode(new.tokens) == open(path).read()
  np.testing.assert_array_equal(old.tokens[:100], new.tokens[:100])  # In use, so kept.
  assert sorted(os.listdir(entry)) == sorted(
      ['meta.json', 'tokens.bin', 'vocab.json', os.path.basename(new.cache)])
  del old, new
  gc.collect()
  with open(path, 'a') as f:
    f.write('~\n')
  newest = data.prepare(path, 'char', cache)
  assert sorted(os.listdir(entry)) == sorted(['meta.json', os.path.basename(newest.cache)])


def test_the_cache_keeps_the_umask_private(tmp_path):
  path = write_text(tmp_path / 't.txt')
  code = ('import os, sys; from charlm import data; os.umask(0o077); '
          'print(data.prepare(sys.argv[1], "char", sys.argv[2]).cache)')
  result = subprocess.run([sys.executable, '-c', code, path, str(tmp_path / 'cache')],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  build = result.stdout.strip()
  entry = os.path.dirname(build)
  made = [tmp_path / 'cache', entry, build, *(os.path.join(build, n) for n in os.listdir(build)),
          *(os.path.join(entry, n) for n in os.listdir(entry))]
  for made_path in made:
    assert stat.S_IMODE(os.stat(made_path).st_mode) & 0o077 == 0, made_path


# Prepares argv[1] into the cache argv[2] in a process that file permissions bind (see
# conftest.without_root_power): one line, what it read or its UserError.
PREPARE = """
import os, sys
from charlm import data
from charlm.errors import UserError
path, cache = sys.argv[1], sys.argv[2]
existing = cache
while not os.path.exists(existing):
  existing = os.path.dirname(existing)
assert not os.access(existing, os.W_OK), 'file permissions do not bind this process'
try:
  corpus = data.prepare(path, 'char', cache)
except UserError as e:
  print(f'error: {e}')
else:
  print(corpus.vocab.decode(corpus.tokens) == open(path, encoding='utf-8').read(), corpus.cache)
"""


def prepare_without_root(path, cache) -> str:
  """What PREPARE printed, where root too cannot write to a read-only directory."""
  result = subprocess.run(without_root_power([sys.executable, '-c', PREPARE, path, str(cache)]),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'Traceback' not in result.stderr and result.stdout.count('\n') == 1, result
  return result.stdout.strip()


def tree(directory) -> dict:
  """Every path under `directory` with its size and mtime."""
  return {os.path.join(root, name): (os.lstat(os.path.join(root, name)).st_size,
                                     os.lstat(os.path.join(root, name)).st_mtime_ns)
          for root, dirs, files in os.walk(directory) for name in dirs + files}


@pytest.mark.parametrize('lock_files', ['kept', 'none'])
def test_a_read_only_cache_is_still_read(tmp_path, lock_files):
  path = write_text(tmp_path / 't.txt')
  cache = tmp_path / 'cache'
  build = data.prepare(path, 'char', str(cache)).cache
  if lock_files == 'none':  # As if an older charlm, which had no lock files, had prepared it.
    for lock in cache.glob('*.lock'):
      lock.unlink()
  before = tree(cache)
  with read_only(cache):
    assert prepare_without_root(path, cache) == f'True {build}'
  assert tree(cache) == before


def test_a_read_only_cache_that_must_encode_is_one_line(tmp_path):
  cache = tmp_path / 'cache'
  data.prepare(write_text(tmp_path / 'other.txt', seed=1), 'char', str(cache))
  path = write_text(tmp_path / 't.txt')
  data.prepare(path, 'char', str(cache))
  with open(path, 'a') as f:  # Its tokens in the cache are out of date.
    f.write('and more\n')
  new = write_text(tmp_path / 'new.txt', seed=2)  # Not in the cache.
  before = tree(cache)
  with read_only(cache):
    for text in (path, new):
      assert prepare_without_root(text, cache) == (
          f'error: the cache directory {cache} is not writable, and the cache holds no '
          f'up-to-date tokens of {text}; give a writable directory with '
          '--config.data.cache_dir=DIR or $CHARLM_CACHE')
  assert tree(cache) == before
  with read_only(tmp_path):  # A cache to make in a read-only directory.
    message = prepare_without_root(new, tmp_path / 'new' / 'cache')
  assert message.startswith(f'error: the cache directory {tmp_path} (to make '
                            f'{tmp_path}/new/cache) is not writable, and the cache holds'), message
  assert not (tmp_path / 'new').exists()
