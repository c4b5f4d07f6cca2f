"""The regularisers: model.dropout with locked_dropout, input_dropout, embed_dropout, weight_drop
and adamw's weight decay. Each acts in training only; its masks are as specified (one per
sequence over time, one per batch); every impl gives the scan reference's gradients."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import assert_trees_close
from test_model import (
  CPU_XLA_LOOPS,
  loss_with_carry,
  random_carry,
  random_like,
  random_params,
  random_tokens,
)

from charlm import lstm_cpu, trainer
from charlm import model as model_lib
from charlm.lstm_cell import LoopOptions

VOCAB, BATCH, SEQ, HIDDEN = 11, 4, 6, 8
EACH = {
    'dropout': {'dropout': 0.3},
    'locked_dropout': {'dropout': 0.3, 'locked_dropout': True},
    'input_dropout': {'input_dropout': 0.3},
    'locked_input_dropout': {'input_dropout': 0.3, 'locked_dropout': True},
    'embed_dropout': {'embed_dropout': 0.3},
    'weight_drop': {'weight_drop': 0.4},
}
TOKENS = random_tokens((BATCH, SEQ), VOCAB, seed=30)  # 24 characters > VOCAB: a lookup table.
TARGETS = jnp.roll(TOKENS, -1, axis=1)
RNG = jax.random.PRNGKey(31)  # The 'dropout' rng.


def make(cell='lstm', layers=2, **fields):
  return model_lib.CharRNN(VOCAB, cell, num_layers=layers, hidden=HIDDEN, **fields)


def train_apply(model, rng=RNG):
  return lambda p, x, c: model.apply({'params': p}, x, c, train=True, rngs={'dropout': rng})


def eval_apply(model):
  return lambda p, x, c: model.apply({'params': p}, x, c)


def _active_dropout(module, _):
  return isinstance(module, nn.Dropout) and module.rate > 0


def dropout_outputs(model, params, carry, rngs=(RNG,), tokens=TOKENS):
  """For each 'dropout' rng, what each active nn.Dropout of a training call returned, by module
  path ('layer0/weight_drop')."""
  @jax.jit
  def run(params, carry, rng):
    _, state = model.apply({'params': params}, tokens, carry, train=True, rngs={'dropout': rng},
                           capture_intermediates=_active_dropout, mutable=['intermediates'])
    return state['intermediates']

  def by_path(got):
    flat = jax.tree_util.tree_flatten_with_path(got)[0]
    return {'/'.join(k.key for k in path[:-2]): x for path, x in flat
            if path[-2].key == '__call__'}
  return [by_path(run(params, carry, rng)) for rng in rngs]


@functools.cache
def plain(cell):
  """A model of `cell` without regularisers, its parameters, carry and outputs (in training as
  in evaluation)."""
  model = make(cell)
  params, carry = random_params(model, seed=32), random_carry(model, BATCH, seed=33)
  return model, params, carry, jax.jit(eval_apply(model))(params, TOKENS, carry)


# Each regulariser on an LSTM; on the other cells the one that acts inside their layers, and one
# of the others.
CASES = [('lstm', name) for name in EACH] + [
    ('gru', 'weight_drop'), ('rnn', 'weight_drop'), ('gru', 'locked_input_dropout')]


@pytest.mark.parametrize('cell,name', CASES)
def test_each_regulariser_acts_in_training_only(cell, name):
  """On, each regulariser changes the training outputs, and leaves evaluation exactly as it is
  without it (for an LSTM on the default impl, 'fused')."""
  model, params, carry, expected = plain(cell)
  regularised = model.clone(**EACH[name])
  logits, _ = jax.jit(train_apply(regularised))(params, TOKENS, carry)
  assert float(jnp.abs(logits - expected[0]).max()) > 1e-3
  evaluated = jax.jit(eval_apply(regularised))(params, TOKENS, carry)
  for got, plain_out in zip(jax.tree.leaves(evaluated), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(got, plain_out)


@pytest.mark.parametrize('locked', [True, False])
def test_locked_masks_hold_over_time_and_differ_across_rows(locked):
  """With locked_dropout, the input mask and each dropout mask (between layers, before the
  output) is one per sequence: the same at every step, another in each batch row. Without it,
  one per step."""
  model = make(layers=2, dropout=0.5, input_dropout=0.5, locked_dropout=locked)
  outputs, = dropout_outputs(model, random_params(model, seed=34), random_carry(model, BATCH))
  assert set(outputs) == {'input_dropout', 'Dropout_0', 'Dropout_1'}
  for path, x in outputs.items():
    dropped = np.asarray(x == 0)  # [T, B, F]; the inputs themselves are never 0.
    assert 0.2 < dropped.mean() < 0.8, path
    same_over_time = (dropped == dropped[:1]).all()
    assert same_over_time == locked, path
    assert any((dropped[:, b] != dropped[:, 0]).any() for b in range(1, BATCH)), path


@pytest.mark.parametrize('cell', ['lstm', pytest.param('gru', marks=pytest.mark.slow), 'rnn'])
def test_weight_drop_is_one_mask_per_batch(cell):
  """weight_drop masks each recurrent matrix once per call: the outputs and gradients are those
  of the model without it whose recurrent matrices are the masked ones (every row and step saw
  that one mask), the gradient reaching each matrix through the mask, scaled 1 / (1 - p); and
  another rng (the train step folds its number in) draws another mask."""
  p = 0.4
  loops = LoopOptions(native=jax.default_backend() == 'cpu' and lstm_cpu.available())
  plain = make(cell, loops=loops)
  model = plain.clone(weight_drop=p)
  params, carry = random_params(model, seed=35), random_carry(model, BATCH, seed=36)
  outputs, again, other = dropout_outputs(model, params, carry,
                                          (RNG, RNG, jax.random.fold_in(RNG, 1)))
  assert set(outputs) == {'layer0/weight_drop', 'layer1/weight_drop'}
  dropped_params = jax.tree.map(lambda x: x, params)
  scale = {}
  for layer in ('layer0', 'layer1'):
    w, got = params[layer]['recurrent'], outputs[f'{layer}/weight_drop']
    kept = np.asarray(got != 0)
    assert 0.2 < 1 - kept.mean() < 0.6
    np.testing.assert_allclose(got[kept], w[kept] / (1 - p), rtol=1e-6)
    dropped_params[layer]['recurrent'] = got
    scale[layer] = kept / (1 - p)
  loss, grads = jax.jit(jax.value_and_grad(loss_with_carry(train_apply(model), TOKENS, TARGETS)))(
      params, carry)
  plain_loss, plain_grads = jax.jit(jax.value_and_grad(loss_with_carry(
      train_apply(plain), TOKENS, TARGETS)))(dropped_params, carry)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  for layer in ('layer0', 'layer1'):
    plain_grads[layer]['recurrent'] = plain_grads[layer]['recurrent'] * scale[layer]
  assert_trees_close(grads, plain_grads)
  for path, x in outputs.items():
    np.testing.assert_array_equal(again[path], x)
    assert ((other[path] == 0) != (x == 0)).any()


@pytest.mark.parametrize('tokens', [TOKENS, pytest.param(TOKENS[:1, :5], marks=pytest.mark.slow)],
                         ids=['lookup', 'embedded'])
def test_embed_dropout_drops_whole_characters(tokens):
  """embed_dropout drops whole rows of the embedding, once per call: every occurrence of a
  character in the batch is dropped or kept alike, the kept ones scaled 1 / (1 - p); through
  the lookup table (more characters than vocabulary) and without it (fewer)."""
  p = 0.5
  plain = make()
  model = plain.clone(embed_dropout=p)
  params, carry = random_params(model, seed=37), random_carry(model, tokens.shape[0])
  rng = jax.random.PRNGKey(38)
  table = dropout_outputs(model, params, carry, (rng,), tokens)[0]['embed_dropout']
  kept = np.asarray((table != 0).all(axis=1))
  assert kept.any() and not kept.all()
  assert not np.asarray(table[~kept]).any()
  np.testing.assert_allclose(table[kept], params['embed']['embedding'][kept] / (1 - p),
                             rtol=1e-6)
  dropped = dict(params, embed={'embedding': table})
  assert_trees_close(jax.jit(train_apply(model, rng))(params, tokens, carry),
                     jax.jit(train_apply(plain))(dropped, tokens, carry))


# Every regulariser on; 'locked' also reads the embedded inputs (input dropout), 'per_step'
# the lookup table (no input dropout).
ALL = {'locked': dict(dropout=0.3, locked_dropout=True, input_dropout=0.2, embed_dropout=0.25,
                      weight_drop=0.4),
       'per_step': dict(dropout=0.3, embed_dropout=0.25, weight_drop=0.4)}
IMPLS = {'fused_xla': ('fused', CPU_XLA_LOOPS), 'fused_native': ('fused', LoopOptions(native=True)),
         'wavefront': ('wavefront', LoopOptions())}


def regularised_grads(impl, loops, fields):
  model = make(layers=2, embed=5, impl=impl, loops=loops, **fields)
  params, carry = random_params(model, seed=39), random_carry(model, BATCH, seed=40)
  grad = jax.value_and_grad(loss_with_carry(train_apply(model), TOKENS, TARGETS), argnums=(0, 1))
  return jax.jit(grad)(params, carry)


@pytest.fixture(scope='module', params=[
    'locked', pytest.param('per_step', marks=pytest.mark.slow)])
def reference(request):
  return request.param, regularised_grads('scan', LoopOptions(), ALL[request.param])


@pytest.mark.parametrize('path', IMPLS)
def test_every_impl_gives_the_reference_gradients(reference, path):
  """With every regulariser on and the same rng, 'fused' (XLA's loops and the native ones) and
  'wavefront' give impl='scan''s loss and gradients: the same masks, reaching the same inputs."""
  impl, loops = IMPLS[path]
  if loops.native:
    if jax.default_backend() != 'cpu':
      pytest.skip('the native loops run on CPUs only')
    assert lstm_cpu.available()
  name, expected = reference
  got = regularised_grads(impl, loops, ALL[name])
  assert_trees_close(got, expected, rtol=2e-5, atol=1e-5)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got[1]))


def test_from_config_passes_the_regularisers_and_old_configs_mean_off():
  fields = {'cell': 'lstm', 'num_layers': 2, 'hidden': 8, 'embed': 0, 'dropout': 0.1,
            'impl': 'fused'}
  old = model_lib.from_config(ml_collections.ConfigDict(fields), VOCAB)
  assert {k: getattr(old, k) for k in model_lib.REGULARISERS} == model_lib.REGULARISERS
  on = {'locked_dropout': True, 'input_dropout': 0.1, 'embed_dropout': 0.2, 'weight_drop': 0.3}
  new = model_lib.from_config(ml_collections.ConfigDict({**fields, **on}), VOCAB)
  assert {k: getattr(new, k) for k in on} == on


def test_adamw_decays_matrices_and_embedding_not_biases():
  """optim.weight_decay shrinks every parameter of 2+ axes by lr * weight_decay of itself per
  step (decoupled, as PyTorch's AdamW) and leaves the biases alone."""
  config = ml_collections.ConfigDict({'name': 'adamw', 'lr': 0.01, 'weight_decay': 0.1,
                                      'schedule': 'constant', 'clip': 0.0})
  tx = trainer.make_optimizer(config, steps_per_epoch=10, total_steps=10)
  shapes = {'embed': {'embedding': (VOCAB, 3)}, 'layer0': {'recurrent': (3, 12), 'input': {
      'kernel': (3, 12), 'bias': (12,)}}, 'output': {'kernel': (3, VOCAB), 'bias': (VOCAB,)}}
  params = random_like(jax.tree.map(jnp.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple)))
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  for (path, p), u in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(updates),
                          strict=True):
    np.testing.assert_allclose(u, -0.01 * 0.1 * p if p.ndim == 2 else 0 * p, rtol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
