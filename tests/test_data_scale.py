"""Corpora of any size in bounded memory: chunked encoding, large vocabularies, memory-mapped
tokens, and (slow) the peak memory of preparation."""
import importlib.util
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from charlm import data
from charlm.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
  spec = importlib.util.spec_from_file_location(
      'bench_data', os.path.join(ROOT, 'experiments', 'bench_data.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write(tmp_path, content, name='t.txt'):
  path = tmp_path / name
  if isinstance(content, str):
    content = content.encode('utf-8')
  path.write_bytes(content)
  return str(path)


@pytest.mark.parametrize('chunk', [1, 2, 3, 5, 64, 1 << 20])
def test_char_encoding_in_chunks_matches_the_text(chunk, tmp_path):
  pool = list('ab \n') * 8 + list('éßΩ') + list('日—€') + ['😀', '𝄞']  # 1 to 4 UTF-8 bytes.
  text = ''.join(random.Random(chunk).choice(pool) for _ in range(3000))
  corpus = data.prepare(write(tmp_path, text), cache_dir=str(tmp_path / 'c'), chunk_bytes=chunk)
  assert corpus.vocab.chars == sorted(set(text))
  assert corpus.vocab.decode(corpus.tokens) == text


def test_a_large_vocabulary_works_with_a_clear_warning(tmp_path, capsys):
  chars = [chr(0x4E00 + i) for i in range(20_000)]  # Chinese text, say.
  random.Random(0).shuffle(chars)
  text = ''.join(chars) + '\n' + ''.join(reversed(chars))
  corpus = data.prepare(write(tmp_path, text), cache_dir=str(tmp_path / 'c'))
  assert corpus.vocab.size == 20_001 and corpus.tokens.dtype == np.uint16
  assert corpus.vocab.decode(corpus.tokens) == text
  out = capsys.readouterr().out
  assert 'warning:' in out and '20,001 distinct characters' in out and 'level=byte' in out


def test_more_than_65536_characters_take_uint32_tokens(tmp_path):
  points = [c for c in range(0x100, 0x100 + 72_000) if not 0xD800 <= c < 0xE000]
  text = ''.join(map(chr, points))  # Reaches past U+FFFF: 4-byte UTF-8.
  corpus = data.prepare(write(tmp_path, text), cache_dir=str(tmp_path / 'c'))
  assert corpus.vocab.size == len(points) > 65_536 and corpus.tokens.dtype == np.uint32
  assert corpus.vocab.decode(corpus.tokens) == text


def test_byte_mode_needs_no_vocabulary_pass(tmp_path):
  called, profiler = set(), sys.getprofile()
  sys.setprofile(lambda frame, event, arg: event == 'call' and called.add(frame.f_code.co_name))
  raw = bytes(range(256)) * 3  # Not UTF-8, and every byte value.
  try:
    corpus = data.prepare(write(tmp_path, raw), 'byte', str(tmp_path / 'c'))
  finally:
    sys.setprofile(profiler)
  assert '_encode_file' in called and not called & {'_utf8_chunks', '_file_vocab'}, called
  assert corpus.vocab.size == 256 and bytes(np.asarray(corpus.tokens)) == raw


@pytest.mark.parametrize('raw,offset', [
    (b'abc' + '日'.encode()[:2], 3),  # Truncated at the end of the file.
    (b'abcdefg\xe6\x97X' + b'y' * 20, 7),  # Broken across a chunk boundary.
    (b'ab\x80cd', 2),  # A stray continuation byte.
])
def test_invalid_utf8_names_its_offset(raw, offset, tmp_path):
  with pytest.raises(UserError) as e:
    data.prepare(write(tmp_path, raw), cache_dir=str(tmp_path / 'c'), chunk_bytes=8)
  assert f'(byte {offset})' in str(e.value) and '\n' not in str(e.value)


def test_training_data_is_memory_mapped(tmp_path):
  corpus = data.prepare(write(tmp_path, 'hello world\n' * 1000), cache_dir=str(tmp_path / 'c'))
  assert isinstance(corpus.tokens, np.memmap)
  parts = data.split(corpus.tokens, (0.9, 0.05, 0.05))
  assert all(np.shares_memory(part, corpus.tokens) for part in parts.values() if len(part))
  batch = data.Streams(parts['train'], batch_size=4, seq_len=16).batch(0)
  assert batch.inputs.shape == (4, 16)


@pytest.mark.slow
def test_preparation_memory_is_bounded_and_independent_of_size(tmp_path):
  bench = load_bench()
  peaks = {}
  for size in (24 << 20, 96 << 20):
    path = str(tmp_path / f'{size}.txt')
    bench.write_text(path, size)
    for level in ('byte', 'char'):
      cache = str(tmp_path / f'cache-{size}-{level}')
      result = bench.measure([sys.executable, '-m', 'charlm.data', 'prepare', path,
                              '--level', level, '--cache_dir', cache])
      peaks[size, level] = result['peak_rss_mb']
    os.remove(path)
  for level in ('byte', 'char'):
    small, large = peaks[24 << 20, level], peaks[96 << 20, level]
    assert large < 300 and large - small < 40, peaks


@pytest.mark.slow
def test_bench_data_runs_and_writes_its_table(tmp_path):
  out = tmp_path / 'bench.json'
  bench = load_bench()
  result = subprocess.run(
      [sys.executable, 'experiments/bench_data.py', '--sizes', '1M,2M', '--levels', 'byte,char',
       '--steps', '3', '--tmp', str(tmp_path), '--out', str(out)],
      cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  assert bench.HEADER in result.stdout and 'peak memory' in result.stdout
  rows = json.loads(out.read_text())['rows']
  assert [(round(r['size_mb']), r['level']) for r in rows] == [
      (1, 'byte'), (1, 'char'), (2, 'byte'), (2, 'char')]
  assert all(r['prepare_peak_rss_mb'] > 0 and r['train_peak_rss_mb'] > 0 for r in rows)
