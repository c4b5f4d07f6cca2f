"""Dynamic evaluation: with lr 0 it is static evaluation; no score looks ahead; it adapts."""
import json
import random

import jax
import numpy as np
import pytest
from conftest import run_cli, smoke_config

import charlm
from charlm import dynamic, evaluation, trainer
from charlm.errors import UserError


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A smoke model trained a little (on the conftest text), loaded: (workdir, model)."""
  tmp = tmp_path_factory.mktemp('dynamic')
  config = smoke_config(tmp, train__steps=30, train__log_every=10, train__eval_every=30,
                        train__ckpt_every=30, optim__lr=1e-2)
  workdir = str(tmp / 'run')
  trainer.train_and_evaluate(config, workdir)
  return workdir, charlm.load(workdir)


def rms(model, batch, seq_len):
  return dynamic.gradient_rms(model.module, model.params, model.split_tokens('train'), batch,
                              seq_len, 5)


SHAPES = [(1, 16), (3, 10)]  # (streams, segment length): the tests share their compilations.


@pytest.mark.parametrize('batch,seq_len', SHAPES)
def test_learning_rate_zero_is_static_evaluation_exactly(run, batch, seq_len):
  model = run[1]
  tokens = model.split_tokens('val')
  mesh = jax.tree.leaves(model.params)[0].sharding.mesh
  static = evaluation.Evaluator(model.module, mesh, batch, seq_len)(model.params, tokens)
  scores = dynamic.evaluate(model.module, model.params, tokens, rms(model, batch, seq_len), 0.0,
                            0.5, seq_len, batch)
  assert scores == static  # Bit for bit, whatever the decay.


@pytest.mark.parametrize('batch,seq_len', SHAPES)
def test_no_score_depends_on_a_later_character(run, batch, seq_len):
  model = run[1]
  tokens = np.asarray(model.split_tokens('val'))[:301].copy()
  ms = rms(model, batch, seq_len)
  score = lambda t: dynamic.evaluate(model.module, model.params, t, ms, 1e-2, 1e-2, seq_len,
                                     batch, per_char=True)['char_losses']
  before = score(tokens)
  length = (len(tokens) - 1) // batch  # Characters per stream.
  stream, offset = batch - 1, 4 * seq_len + 3  # In the last stream, inside its 5th segment.
  changed = tokens.copy()
  position = stream * length + offset + 1  # The token that target `offset` of `stream` is.
  changed[position] = (changed[position] + 1) % model.vocab.size
  after = score(changed)
  grid_before, grid_after = before.reshape(batch, length), after.reshape(batch, length)
  # Every stream's scores up to that segment (scored before the step on it), and in its own
  # stream those before the character.
  others = [b for b in range(batch) if b != stream]
  np.testing.assert_array_equal(grid_after[others, :5 * seq_len], grid_before[others, :5 * seq_len])
  np.testing.assert_array_equal(grid_after[stream, :offset], grid_before[stream, :offset])
  assert not np.array_equal(grid_after[:, 5 * seq_len:], grid_before[:, 5 * seq_len:])
  if batch == 1:  # One stream: no score depends on any character after it in the text.
    np.testing.assert_array_equal(after[:position - 1], before[:position - 1])


def test_adapting_lowers_the_loss_of_a_repetitive_text(run, tmp_path):
  model = run[1]
  rng = random.Random(1)
  line = ''.join(rng.choice(model.vocab.chars) for _ in range(60))
  path = tmp_path / 'repeated.txt'
  path.write_text(line * 20)
  static = model.evaluate(file=str(path), batch_size=1)
  adapted = model.evaluate_dynamic(file=str(path), lr=1e-2, decay=0.0, seq_len=16,
                                   grad_batches=5)
  assert adapted['chars'] == static['chars'] and adapted['dynamic']['lr'] == 1e-2
  assert adapted['loss'] < static['loss'] - 0.5
  head = model.evaluate_dynamic(file=str(path), lr=1e-2, decay=0.0, seq_len=16, grad_batches=5,
                                max_chars=100, per_char=True)
  assert head['chars'] == 100 and len(head['char_losses']) == 100


def test_bad_settings_are_one_line(run):
  model = run[1]
  for kwargs, match in [({'lr': -1.0}, 'lr is -1.0; use a finite number >= 0'),
                        ({'decay': float('nan')}, 'decay is nan'),
                        ({'seq_len': 0}, 'seq_len is 0; use a whole number >= 1'),
                        ({'grad_batches': 0}, 'grad_batches is 0'),
                        ({'max_chars': -1}, 'max_chars is -1')]:
    with pytest.raises(UserError, match=match):
      model.evaluate_dynamic(split='val', **kwargs)


def test_cli(run):
  static = run[1].evaluate(split='val', batch_size=1, max_chars=200)
  out = run_cli('charlm.evaluate', f'--workdir={run[0]}', '--split=val', '--dynamic',
                '--dynamic_lr=0', '--dynamic_seq=16', '--max_chars=200', '--json')
  assert out.returncode == 0, out.stderr
  scores = json.loads(out.stdout)
  assert scores['chars'] == 200  # One stream and lr 0: static evaluation (to float rounding in
  assert scores['loss'] == pytest.approx(static['loss'], rel=1e-6)  # another process).
  assert scores['dynamic'] == {'lr': 0.0, 'decay': dynamic.DECAY, 'seq_len': 16,
                               'grad_batches': dynamic.GRAD_BATCHES}
  bad = run_cli('charlm.evaluate', f'--workdir={run[0]}', '--dynamic_lr=1e-3')
  assert bad.returncode == 1
  assert bad.stderr == 'error: --dynamic_lr set dynamic evaluation; add --dynamic\n'
