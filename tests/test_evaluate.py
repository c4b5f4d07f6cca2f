"""Evaluation: a file or a split scores exactly as training's validation; unknown characters."""
import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, run_cli, smoke_config, write_text

import charlm
from charlm import api, corpora, evaluation, trainer
from charlm import data as data_lib
from charlm.errors import UserError


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A smoke run that scores its whole validation split: (workdir, summary, config). Its text
  has characters of 2, 3 and 4 UTF-8 bytes."""
  tmp = tmp_path_factory.mktemp('evaluate')
  path = tmp / 'text.txt'
  text = open(write_text(path)).read()
  path.write_text(text.replace('love', 'lové').replace(' art ', ' — ').replace('night', 'night😀'))
  config = smoke_config(tmp, str(path), train__steps=10, train__eval_every=10,
                        train__ckpt_every=10, train__eval_batches=0)
  workdir = str(tmp / 'run')
  return workdir, trainer.train_and_evaluate(config, workdir), config


@pytest.fixture(scope='module')
def model(run):
  return charlm.load(run[0])


@pytest.fixture(scope='module')
def val_text(run, model):
  data = run[2].data
  corpus = data_lib.prepare(corpora.text_path(data), data.level, data.cache_dir)
  return model.vocab.decode(data_lib.split(corpus.tokens, run[2].data.split)['val'])


def test_file_scores_as_training_validation(run, model, val_text, tmp_path):
  path = tmp_path / 'val.txt'
  path.write_text(val_text)
  result = model.evaluate(file=str(path))
  assert result['loss'] == pytest.approx(run[1]['val_loss'], rel=1e-6)
  assert result['bpc'] == pytest.approx(result['loss'] / math.log(2))
  assert result['perplexity'] == pytest.approx(math.exp(result['loss']))
  assert result['skipped'] == 0 and result['step'] == 10
  batch = run[2].train.batch_size
  assert result['chars'] == (len(val_text) - 1) // batch * batch
  assert model.evaluate(split='val')['loss'] == pytest.approx(run[1]['val_loss'], rel=1e-6)


@pytest.mark.parametrize('chunk_bytes', [1, 7, 64])
def test_file_read_in_chunks_scores_as_the_whole_text(model, val_text, tmp_path, chunk_bytes):
  assert {'é', '—', '😀'} <= set(val_text)  # So some cross the ends of chunks.
  path = tmp_path / 'val.txt'
  path.write_text(val_text)
  tokens = model.vocab.encode(val_text)  # What evaluation scored when it read the whole file.
  batch = min(model.config.train.batch_size, len(tokens) - 1)
  mesh = jax.tree.leaves(model.params)[0].sharding.mesh
  expected = evaluation.Evaluator(model.module, mesh, batch, model.config.train.seq_len)(
      model.params, tokens)
  result = model.evaluate(file=str(path), chunk_bytes=chunk_bytes)
  assert (result['loss'], result['chars']) == (expected['loss'], expected['chars'])


def test_token_file_reads_the_streams_of_an_array(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 300, 101).astype(np.uint16)
  path = tmp_path / 'tokens.bin'
  tokens.tofile(path)
  with open(path, 'rb') as f:
    token_file = api._TokenFile(f, np.uint16)
    assert len(token_file) == 101
    for batch_size, seq_len in ((1, 7), (3, 5), (4, 16), (100, 3)):
      streams = [data_lib.Streams(t, batch_size, seq_len, pad_last=True)
                 for t in (tokens, token_file)]
      for want, got in zip(*streams, strict=True):
        np.testing.assert_array_equal(got.inputs, want.inputs)
        np.testing.assert_array_equal(got.targets, want.targets)
        np.testing.assert_array_equal(got.weights, want.weights)


@pytest.mark.parametrize('chunk_bytes', [7, api.FILE_CHUNK_BYTES])
def test_unknown_characters(model, val_text, tmp_path, chunk_bytes):
  path = tmp_path / 'odd.txt'
  path.write_text(val_text[:200] + '€✓' + val_text[200:400] + '€')  # After the first chunks.
  with pytest.raises(UserError, match=f"{path} has 3 characters .*: '€', '✓'; .*unknown='skip'"):
    model.evaluate(file=str(path), chunk_bytes=chunk_bytes)
  skipped = model.evaluate(file=str(path), unknown='skip', chunk_bytes=chunk_bytes)
  assert skipped['skipped'] == 3 and skipped['skipped_chars'] == ['€', '✓']
  clean = tmp_path / 'clean.txt'
  clean.write_text(val_text[:400])
  assert skipped['loss'] == model.evaluate(file=str(clean))['loss']


def test_short_file_and_bad_input(model, tmp_path):
  short = tmp_path / 'short.txt'
  short.write_text('the')  # Fewer characters than the run had streams: fewer streams.
  assert model.evaluate(file=str(short))['chars'] == 2
  short.write_text('t')
  with pytest.raises(UserError, match='at least 2'):
    model.evaluate(file=str(short))
  with pytest.raises(UserError, match='cannot read'):
    model.evaluate(file=str(tmp_path / 'missing.txt'))
  short.write_bytes(b'the \xff')
  with pytest.raises(UserError, match='not valid UTF-8'):
    model.evaluate(file=str(short))
  short.write_bytes('the é'.encode() * 3 + b'\xc3')  # A character cut short by the end.
  for chunk_bytes in (7, api.FILE_CHUNK_BYTES):
    with pytest.raises(UserError, match=r'not valid UTF-8 \(byte 18\)'):
      model.evaluate(file=str(short), chunk_bytes=chunk_bytes)


def test_cli(run, tmp_path):
  result = run_cli('charlm.evaluate', f'--workdir={run[0]}', '--split=val', '--json')
  assert result.returncode == 0, result.stderr
  scores = json.loads(result.stdout)
  assert scores['loss'] == pytest.approx(run[1]['val_loss'], rel=1e-6)
  assert scores['perplexity'] == pytest.approx(np.exp(scores['loss']))
  table = run_cli('charlm.evaluate', f'--workdir={run[0]}')  # The test split.
  assert table.returncode == 0, table.stderr
  for words in ('test split', 'characters scored', 'nats/char', 'bits per char', 'perplexity'):
    assert words in table.stdout
  both = run_cli('charlm.evaluate', f'--workdir={run[0]}', '--split=val', '--file=x.txt')
  assert both.returncode == 1 and both.stderr == 'error: give --split or --file, not both\n'
  odd = tmp_path / 'odd.txt'
  odd.write_text('the night\n' * 10 + '€')
  bad = run_cli('charlm.evaluate', f'--workdir={run[0]}', f'--file={odd}')
  assert bad.returncode == 1 and bad.stdout == ''  # No partial result before the error.
  assert bad.stderr == (f"error: {odd} has 1 character outside the model's vocabulary: '€'; "
                        'remove them, or pass --unknown=skip to drop them\n')
  skip = run_cli('charlm.evaluate', f'--workdir={run[0]}', f'--file={odd}', '--unknown=skip')
  assert skip.returncode == 0
  assert "skipped            1 character outside the vocabulary: '€'\n" in skip.stdout


INFERENCE_ONLY = '''
import sys
import charlm.api
charlm.api.load(sys.argv[1]).evaluate(split='val')
charlm.api.load(sys.argv[1]).sample(length=5, seed=0)
from charlm import inference
inference.load_checkpoint(sys.argv[1])
print(sorted(m for m in sys.modules if m == 'charlm.trainer' or m.split('.')[0] == 'optax'))
'''


def test_inference_imports_neither_the_trainer_nor_the_optimizer(run):
  result = subprocess.run([sys.executable, '-c', INFERENCE_ONLY, run[0]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == '[]'


@pytest.mark.slow
def test_large_file_memory_is_bounded(run, val_text, tmp_path):
  from test_data_scale import load_bench
  measure = load_bench().measure
  peaks = {}
  # Two files large enough that the fixed costs of a long evaluation are paid in both (a 1 MB
  # file peaked 30 MB lower than 48 MB and 96 MB ones, which peaked within 2 MB of each other).
  for size in (16 << 20, 64 << 20):
    path = tmp_path / f'{size}.txt'
    with open(path, 'w') as f:
      for _ in range(size // len(val_text.encode())):
        f.write(val_text)
    peaks[size] = measure([sys.executable, '-m', 'charlm.evaluate', f'--workdir={run[0]}',
                           f'--file={path}', '--batch_size=4096', '--json'])['peak_rss_mb']
    path.unlink()
  assert peaks[64 << 20] - peaks[16 << 20] < 12, peaks  # The 48 MB more text stays on disk.
