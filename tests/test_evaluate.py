"""Evaluation: a file or a split scores exactly as training's validation; unknown characters."""
import json
import math

import numpy as np
import pytest
from conftest import run_cli, smoke_config

import charlm
from charlm import data as data_lib
from charlm import trainer
from charlm.errors import UserError


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A smoke run that scores its whole validation split: (workdir, summary, config)."""
  tmp = tmp_path_factory.mktemp('evaluate')
  config = smoke_config(tmp, train__steps=10, train__eval_every=10, train__ckpt_every=10,
                        train__eval_batches=0)
  workdir = str(tmp / 'run')
  return workdir, trainer.train_and_evaluate(config, workdir), config


@pytest.fixture(scope='module')
def model(run):
  return charlm.load(run[0])


@pytest.fixture(scope='module')
def val_text(run, model):
  corpus = data_lib.load_corpus(run[2].data)
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


def test_unknown_characters(model, val_text, tmp_path):
  path = tmp_path / 'odd.txt'
  path.write_text(val_text[:200] + 'é€' + val_text[200:400] + 'é')
  with pytest.raises(UserError, match=f"{path} has 3 characters .*'é', '€'"):
    model.evaluate(file=str(path))
  skipped = model.evaluate(file=str(path), unknown='skip')
  assert skipped['skipped'] == 3 and skipped['skipped_chars'] == ['é', '€']
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
