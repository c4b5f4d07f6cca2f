import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from charlm import data
from charlm.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vocab_round_trip_non_ascii(tmp_path):
  text = 'Grüße, Ελληνικά, 日本語 — naïve café ☕\n' * 3
  path = tmp_path / 'u.txt'
  path.write_text(text, encoding='utf-8')
  corpus = data.prepare(str(path), 'char', str(tmp_path / 'cache'))
  assert corpus.vocab.chars == sorted(set(text))
  assert corpus.vocab.decode(corpus.tokens) == text
  assert corpus.vocab.decode(corpus.vocab.encode('café')) == 'café'
  restored = data.Vocab.from_json(corpus.vocab.to_json())
  assert restored == corpus.vocab


def test_byte_level_round_trip(tmp_path):
  text = 'naïve ☕ bytes\n'
  path = tmp_path / 'b.txt'
  path.write_text(text, encoding='utf-8')
  corpus = data.prepare(str(path), 'byte', str(tmp_path / 'cache'))
  assert corpus.vocab.size == 256
  assert bytes(np.asarray(corpus.tokens)) == text.encode('utf-8')
  assert corpus.vocab.decode(corpus.vocab.encode('日本')) == '日本'
  assert corpus.vocab.unknown('anything ✓') == []


def test_token_dtype_grows_with_vocabulary(tmp_path):
  small = tmp_path / 's.txt'
  small.write_text('abcabc')
  large = tmp_path / 'l.txt'
  large.write_text(''.join(chr(0x4E00 + i) for i in range(3000)) * 2)
  assert data.prepare(str(small), cache_dir=str(tmp_path / 'c')).tokens.dtype == np.uint8
  corpus = data.prepare(str(large), cache_dir=str(tmp_path / 'c'))
  assert corpus.tokens.dtype == np.uint16
  assert corpus.vocab.size == 3000
  assert corpus.vocab.decode(corpus.tokens[:3]) == '一丁丂'


def test_chunked_encoding_matches_whole_file(tmp_path):
  text = 'héllo wörld ☕ ' * 50
  path = tmp_path / 't.txt'
  path.write_text(text, encoding='utf-8')
  # 7-byte chunks split multi-byte characters across chunks.
  corpus = data.prepare(str(path), cache_dir=str(tmp_path / 'c'), chunk_bytes=7)
  assert corpus.vocab.decode(corpus.tokens) == text


def token_file(corpus) -> tuple[int, int]:
  """Which token file `corpus` reads: a rebuild writes a new one (while the old is still open)."""
  st = os.stat(os.path.join(corpus.cache, 'tokens.bin'))
  return st.st_ino, st.st_mtime_ns


def test_cache_reused_then_rebuilt_when_source_changes(tmp_path):
  path = tmp_path / 't.txt'
  path.write_text('abc' * 100)
  first = data.prepare(str(path), cache_dir=str(tmp_path / 'c'))
  built = token_file(first)
  again = data.prepare(str(path), cache_dir=str(tmp_path / 'c'))
  assert token_file(again) == built and again.cache == first.cache
  path.write_text('abd' * 100)  # Same size: only the mtime and the hash tell.
  changed = data.prepare(str(path), cache_dir=str(tmp_path / 'c'))
  assert token_file(changed) != built
  assert changed.vocab.chars == ['a', 'b', 'd']
  assert changed.vocab.decode(changed.tokens[:3]) == 'abd'


# A source rewritten between the vocabulary pass and the encoding pass: the same size with a
# new character (with its mtime set back: only the characters tell, so char mode only), a longer
# text of the same characters, a shorter one.
REWRITES = ['héllo wrld\n' * 50, 'hello world\n' * 80, 'hello\n' * 3]


@pytest.mark.parametrize('level,rewrite', [('char', r) for r in REWRITES] +
                         [('byte', r) for r in REWRITES[1:]])
def test_a_source_rewritten_during_encoding_is_read_again(tmp_path, level, rewrite):
  path, out = tmp_path / 'text.txt', tmp_path / 'tokens.bin'
  path.write_text('hello world\n' * 50)
  mtime = os.stat(path).st_mtime_ns
  tries = []

  def rewrite_once():
    if not tries:
      path.write_text(rewrite)
      if len(rewrite.encode()) == 600:
        os.utime(path, ns=(mtime, mtime))
    tries.append(1)

  vocab, fingerprint, digest = data._encode_file(str(path), str(out), level, 64, rewrite_once)
  assert len(tries) == 2
  tokens = np.fromfile(out, vocab.dtype)
  assert (vocab.decode(tokens) if level == 'char' else bytes(tokens).decode()) == rewrite
  assert fingerprint == data._source_fingerprint(str(path))
  assert digest == data.sha256_file(str(path))


@pytest.mark.parametrize('level', ['char', 'byte'])
def test_a_source_that_keeps_changing_during_encoding_is_one_error(tmp_path, level):
  path = tmp_path / 'text.txt'
  path.write_text('hello world\n' * 50)

  def append():
    with open(path, 'a') as f:
      f.write('more\n')

  with pytest.raises(UserError, match=r'text.txt changed while it was being encoded, twice'):
    data._encode_file(str(path), str(tmp_path / 'tokens.bin'), level, 64, append)


def test_invalid_utf8_names_offset_and_leaves_no_cache(tmp_path):
  path = tmp_path / 'bad.txt'
  path.write_bytes(b'hello world \xff\xfe more')
  with pytest.raises(UserError) as e:
    data.prepare(str(path), cache_dir=str(tmp_path / 'c'), chunk_bytes=5)
  message = str(e.value)
  assert 'byte 12' in message and 'level=byte' in message and '\n' not in message
  assert [p for p in os.listdir(tmp_path / 'c') if not p.endswith('.lock')] == []
  corpus = data.prepare(str(path), 'byte', cache_dir=str(tmp_path / 'c'))
  assert len(corpus.tokens) == path.stat().st_size


SCRIPTS = 'naïve café ☕ at 日本 — 😀 ok\n' * 5  # 1 to 4 UTF-8 bytes a character.


@pytest.mark.parametrize('chunk_bytes', [1, 3, 7, 1 << 20])
@pytest.mark.parametrize('order', ['sorted', 'unsorted'])
def test_encode_chunks_drops_and_reports_unknown_characters(tmp_path, chunk_bytes, order):
  path = tmp_path / 't.txt'
  path.write_text(SCRIPTS, encoding='utf-8')
  chars = sorted(set('naïve f😀\n日'))
  if order == 'unsorted':  # ASCII ids past a byte: numpy's lookup rather than bytes.translate.
    chars = [chr(0x4E01 + i) for i in range(300)] + chars[::-1]
  vocab = data.Vocab('char', chars)
  reported = []
  ids = np.concatenate(list(data.encode_chunks(
      str(path), vocab, chunk_bytes, on_unknown=lambda *found: reported.append(found))))
  kept = ''.join(c for c in SCRIPTS if c in chars)
  assert ids.dtype == vocab.dtype
  np.testing.assert_array_equal(ids, vocab.encode(kept))
  unknown = list(dict.fromkeys(c for c in SCRIPTS if c not in chars))
  assert list(dict.fromkeys(c for found, _ in reported for c in found)) == unknown
  assert sum(count for _, count in reported) == len(SCRIPTS) - len(kept)
  with pytest.raises(UserError, match="outside the vocabulary: 'c'"):
    list(data.encode_chunks(str(path), vocab, chunk_bytes))


def test_encode_chunks_words_invalid_utf8_with_the_callers_fix(tmp_path):
  path = tmp_path / 'bad.txt'
  path.write_bytes(b'abc \xff def')
  vocab = data.Vocab('char', list('abc def'))
  with pytest.raises(UserError, match=r'bad.txt is not valid UTF-8 \(byte 4\); do this$'):
    list(data.encode_chunks(str(path), vocab, 3, not_utf8_fix='do this'))
  raw = bytes(range(256))  # A byte vocabulary takes anything, as it is.
  path.write_bytes(raw)
  chunks = data.encode_chunks(str(path), data.Vocab('byte'), 7)
  assert b''.join(ids.tobytes() for ids in chunks) == raw


@pytest.mark.parametrize('content,expect', [(None, 'not found'), (b'', 'empty')])
def test_missing_and_empty_files(tmp_path, content, expect):
  path = tmp_path / 'x.txt'
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(UserError, match=expect):
    data.prepare(str(path), cache_dir=str(tmp_path / 'c'))


def test_splits_are_contiguous_and_cover_everything():
  tokens = np.arange(1000)
  parts = data.split(tokens, (0.9, 0.05, 0.05))
  assert [len(p) for p in parts.values()] == [900, 50, 50]
  np.testing.assert_array_equal(np.concatenate(list(parts.values())), tokens)
  with pytest.raises(UserError, match='summing to 1'):
    data.split(tokens, (0.9, 0.2, 0.05))


def test_streams_are_contiguous_and_targets_shifted():
  tokens = np.arange(1001)
  streams = data.Streams(tokens, batch_size=4, seq_len=10)
  assert streams.length == 250 and streams.num_batches == 25
  b0, b1 = streams.batch(0), streams.batch(1)
  np.testing.assert_array_equal(b0.inputs[:, 0], [0, 250, 500, 750])
  np.testing.assert_array_equal(b0.targets, b0.inputs + 1)
  np.testing.assert_array_equal(b1.inputs[:, 0], b0.inputs[:, -1] + 1)  # Each stream continues.
  assert b0.reset and not b1.reset
  seen = np.concatenate([streams.batch(k).inputs for k in range(25)], axis=1)
  np.testing.assert_array_equal(seen.reshape(-1), np.arange(1000))


def test_padded_streams_score_every_character():
  tokens = np.arange(1003)
  streams = data.Streams(tokens, batch_size=4, seq_len=64, pad_last=True)
  batches = list(streams)
  assert len(batches) == 4  # 250 targets per stream: 3 full windows and one of 58.
  assert sum(b.weights.sum() for b in batches) == 4 * 250
  last = batches[-1]
  valid = last.weights[0] > 0
  np.testing.assert_array_equal(last.targets[:, valid], last.inputs[:, valid] + 1)


def test_train_iterator_state_restores_exactly():
  streams = data.Streams(np.arange(10_001) % 7, batch_size=5, seq_len=20)
  a = data.TrainIterator(streams)
  for _ in range(123):
    next(a)
  state = a.get_state()
  assert state == {'epoch': 1, 'index': 23}
  b = data.TrainIterator(streams)
  b.set_state(state)
  for _ in range(150):
    x, y = next(a), next(b)
    np.testing.assert_array_equal(x.inputs, y.inputs)
    assert x.reset == y.reset


def test_too_small_for_one_batch_says_how_small():
  with pytest.raises(UserError) as e:
    data.Streams(np.arange(100), batch_size=8, seq_len=16)
  assert 'needs at least 129' in str(e.value) and 'batch_size' in str(e.value)


def test_stream_rows_select_this_process_share():
  tokens = np.arange(801)
  full = data.Streams(tokens, 8, 10).batch(3)
  part = data.Streams(tokens, 8, 10, rows=[4, 5, 6, 7]).batch(3)
  np.testing.assert_array_equal(part.inputs, full.inputs[4:])


@pytest.mark.parametrize('module,allowed', [
    ('charlm.data', {'charlm.atomic', 'charlm.cache', 'charlm.errors', 'charlm.locks'}),
    ('charlm.corpora', {'charlm.atomic', 'charlm.cache', 'charlm.errors', 'charlm.locks'}),
    ('charlm.cache', {'charlm.errors'}),
    ('charlm.atomic', set()),
    ('charlm.locks', {'charlm.errors'})])
def test_data_corpora_and_cache_do_not_import_each_other(module, allowed):
  """In a fresh interpreter: data and corpora share only the leaf module cache."""
  code = f'import sys, {module}; print(*sys.modules)'
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stderr
  others = {m for m in result.stdout.split() if m.startswith('charlm.')
            and m != module and not m.startswith(module + '.')}
  assert others <= allowed, others


def imported_modules(path: str) -> set[str]:
  """Every module `path` imports, in functions too, but not under `if __name__ == '__main__'`."""
  with open(path) as f:
    tree = ast.parse(f.read())
  script = [node for node in tree.body if isinstance(node, ast.If)
            and ast.unparse(node.test) == "__name__ == '__main__'"]
  skipped = {id(n) for block in script for n in ast.walk(block)}
  names = set()
  for node in ast.walk(tree):
    if id(node) in skipped:
      continue
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ''  # charlm imports absolutely; relative ones count by name.
      names.update([module] + [f'{module}.{alias.name}' for alias in node.names])
  return names


def test_no_import_of_the_other_even_inside_functions():
  def mentions(names, package):
    return {n for n in names if n == package or n.startswith(package + '.')}
  assert not mentions(imported_modules(os.path.join(ROOT, 'charlm', 'data.py')), 'charlm.corpora')
  corpora_dir = os.path.join(ROOT, 'charlm', 'corpora')
  for name in os.listdir(corpora_dir):
    if name.endswith('.py') and name != '__main__.py':  # The command line uses both.
      names = imported_modules(os.path.join(corpora_dir, name))
      assert not mentions(names, 'charlm.data'), name
