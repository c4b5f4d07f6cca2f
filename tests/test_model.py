"""The model: shapes, initial loss, and the fast LSTM paths against plain references."""
import dataclasses
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import assert_trees_close, smoke_config

from charlm import inference, lstm_cell, lstm_cpu, lstm_kernel, trainer
from charlm import model as model_lib
from charlm.errors import UserError
from charlm.lstm_cell import LoopOptions

VOCAB = 11


def init(model, seed=0):
  return jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32),
                             model.initial_carry(1))['params']


def random_like(tree, scale=0.5, seed=0):
  """Random normal arrays shaped like `tree` (numpy: quick, where model.init compiles slowly)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), tree)


def random_tokens(shape, vocab=VOCAB, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def random_params(model, seed=0, scale=0.5):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                          model.initial_carry(1))['params']
  return random_like(shapes, scale, seed=seed)


def random_carry(model, batch, seed=1):
  return random_like(model.initial_carry(batch), seed=seed)


def reference_step(cell, p, state, gx):
  """One step of each cell as textbooks write it: a sigmoid or tanh per gate."""
  sig = jax.nn.sigmoid
  if cell == 'lstm':
    c, h = state
    i, f, g, o = jnp.split(gx + h @ p['recurrent'], 4, axis=-1)
    c = sig(f) * c + sig(i) * jnp.tanh(g)
    return c, sig(o) * jnp.tanh(c)
  (h,) = state
  if cell == 'gru':
    xr, xz, xn = jnp.split(gx, 3, axis=-1)
    hr, hz, hn = jnp.split(h @ p['recurrent'] + p['recurrent_bias'], 3, axis=-1)
    r, z = sig(xr + hr), sig(xz + hz)
    return ((1 - z) * jnp.tanh(xn + r * hn) + z * h,)
  return (jnp.tanh(gx + h @ p['recurrent']),)


def reference_apply(cell, params, tokens, carry):
  """The model written plainly: embedding, then per layer a scan of `reference_step`."""
  x = jnp.swapaxes(params['embed']['embedding'][tokens], 0, 1)
  new_carry = []
  for layer, state in enumerate(carry):
    p = params[f'layer{layer}']
    step = lambda s, x_t, p=p: (reference_step(cell, p, s, x_t @ p['input']['kernel']
                                                + p['input']['bias']),) * 2
    state, states = jax.lax.scan(step, tuple(state), x)
    new_carry.append(state)
    x = states[-1]
  out = params['output']
  return jnp.swapaxes(x @ out['kernel'] + out['bias'], 0, 1), tuple(new_carry)


def fused(options: LoopOptions):
  """lstm_kernel.lstm(gx, w_h, c0, h0) with its loops run as `options` say."""
  return lambda *args: lstm_kernel.lstm(*args, options)


# XLA's loops as CPUs and GPUs run them (model.CPU_LOOPS, OTHER_LOOPS), here on any backend.
CPU_XLA_LOOPS = LoopOptions(feature_major=True, unroll=2, unroll_backward=1)
GPU_XLA_LOOPS = LoopOptions(feature_major=False, unroll=8, unroll_backward=8)


def lstm_loss(weights, lstm):
  """A loss of an LSTM's (hs, final c, final h) that reaches all three; `weights` like hs."""
  def loss(*args):
    hs, c, h = lstm(*args)
    return jnp.sum(hs * weights) + jnp.sum(jnp.cos(c)) + jnp.sum(h ** 2)
  return loss


def loss_with_carry(apply, tokens, targets):
  """A loss that reaches every output: the logits and the final carry."""
  def loss(params, carry):
    logits, new_carry = apply(params, tokens, carry)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()
    return nll + sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(new_carry))
  return loss


@pytest.mark.parametrize('cell', ['lstm', 'gru', 'rnn'])
def test_shapes(cell):
  model = model_lib.CharRNN(VOCAB, cell, num_layers=2, hidden=8, embed=5)
  params = init(model) if cell == 'lstm' else random_params(model)
  logits, carry = jax.jit(model.apply)({'params': params}, jnp.zeros((3, 7), jnp.int32),
                                       model.initial_carry(3))
  assert logits.shape == (3, 7, VOCAB)
  per_layer = 2 if cell == 'lstm' else 1
  assert [len(c) for c in carry] == [per_layer] * 2
  assert all(x.shape == (3, 8) for x in jax.tree.leaves(carry))
  assert jax.tree.structure(carry) == jax.tree.structure(model.initial_carry(3))
  assert params['embed']['embedding'].shape == (VOCAB, 5)
  if cell == 'lstm':
    np.testing.assert_array_equal(params['layer0']['input']['bias'],
                                  np.repeat([0.0, 1.0, 0.0, 0.0], 8))  # i, f, g, o


def test_initial_loss_is_about_ln_vocab():
  vocab = 65
  model = model_lib.CharRNN(vocab, 'lstm', num_layers=2, hidden=64)
  tokens = random_tokens((8, 32), vocab, seed=2)
  logits, _ = jax.jit(model.apply)({'params': init(model)}, tokens, model.initial_carry(8))
  loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.roll(tokens, -1, 1)[..., None],
                              -1).mean()
  assert abs(float(loss) - math.log(vocab)) < 0.1


NATIVE = LoopOptions(native=True)


@pytest.mark.parametrize('loops,t,b,h', [
    (CPU_XLA_LOOPS, 7, 3, 5), (LoopOptions(unroll=2), 7, 3, 5),
    (LoopOptions(unroll=3, unroll_backward=4), 7, 3, 5),
    # Native: rows and columns that fill its register blocks (up to 6 or 12 rows, panels of 16
    # or 32 columns) and vectors (8 or 16 floats, then 8, then one), and that don't.
    (NATIVE, 7, 3, 5), (NATIVE, 9, 13, 12), (NATIVE, 5, 16, 32), (NATIVE, 4, 25, 24)],
    ids=['feature-major', 'batch-major', 'batch-major-unrolled', 'native-tails',
         'native-partial-blocks', 'native-full-blocks', 'native-wide-blocks'])
def test_fused_lstm_matches_autodiff_of_plain_lstm(loops, t, b, h):
  """The hand-written backward pass against jax.grad of a textbook LSTM, all inputs, in each
  loop layout (the CPU's and the GPU's XLA loops, run here on whichever backend this is, and
  the native CPU loops)."""
  if loops.native:
    if jax.default_backend() != 'cpu':
      pytest.skip('the native loops run on CPUs only')
    assert lstm_cpu.available()
  gx, w_h, c0, h0, weights = random_like(
      [jnp.zeros((t, b, 4 * h)), jnp.zeros((h, 4 * h)), jnp.zeros((b, h)), jnp.zeros((b, h)),
       jnp.zeros((t, b, h))], scale=1.0, seed=3)

  def plain(gx, w_h, c0, h0):
    step = lambda state, gx_t: (reference_step('lstm', {'recurrent': w_h}, state, gx_t),) * 2
    (c, hh), (_, hs) = jax.lax.scan(step, (c0, h0), gx)
    return hs, c, hh

  args = (gx, w_h, c0, h0)
  # Sums over more rows and steps round more: at 16 x 32 both sides' gradients are up to 2e-5
  # off float64 autodiff (gradients up to 18).
  atol = 2e-6 if b * h < 100 else 2e-5
  assert_trees_close(jax.jit(fused(loops))(*args), jax.jit(plain)(*args), atol=atol)
  grad = lambda fn: jax.jit(jax.grad(lstm_loss(weights, fn), argnums=(0, 1, 2, 3)))
  assert_trees_close(grad(fused(loops))(*args), grad(plain)(*args), atol=atol)


@pytest.mark.parametrize('length,unroll,expected', [
    (100, 8, 10), (64, 8, 8), (102, 8, 6), (30, 8, 10), (100, 32, 25), (97, 8, 8), (5, 8, 5),
    (7, 3, 3), (100, 1, 1)])
def test_unroll_rounds_to_a_nearby_divisor(length, unroll, expected):
  assert lstm_cell.unroll_for(length, unroll) == expected
  assert lstm_cell.unroll_for(length, unroll, divides=False) == unroll


def test_gpu_loops_split_no_sequence_for_a_remainder():
  """With the GPU's unroll of 8, 100 steps run as 10 x 10: lax.scan splits off no [96, ...]
  part of the inputs and joins no outputs (which costs full copies), as it does with 8."""
  args = (jnp.zeros((100, 2, 12)), jnp.zeros((3, 12)), jnp.zeros((2, 3)), jnp.zeros((2, 3)))
  lowered = {}
  for divides in (True, False):
    options = dataclasses.replace(GPU_XLA_LOOPS, unroll_divides=divides)
    loss = lambda *a, options=options: jnp.sum(lstm_kernel.lstm(*a, options)[0])
    lowered[divides] = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).as_text()
  assert 'tensor<96x' not in lowered[True]
  assert 'tensor<96x' in lowered[False]


def test_project_gradients_match_autodiff_of_a_product():
  """lstm_cell.project's weight gradient (a copied transpose on CPUs) and input gradient."""
  x, w, weights = random_like([jnp.zeros((4, 3, 5)), jnp.zeros((5, 7)), jnp.zeros((4, 3, 7))],
                              scale=1.0, seed=5)
  loss = lambda fn: lambda x, w: jnp.sum(jnp.sin(fn(x, w)) * weights)
  grad = lambda fn: jax.jit(jax.grad(loss(fn), argnums=(0, 1)))
  assert_trees_close(jax.jit(lstm_cell.project)(x, w), x @ w)
  assert_trees_close(grad(lstm_cell.project)(x, w), grad(jnp.matmul)(x, w))


@pytest.mark.parametrize('cell,impl,batch,seq', [
    ('lstm', 'fused', 2, 6),  # The first layer looks its input projection up in a table ...
    ('lstm', 'fused', 1, 3),  # ... unless the vocabulary is larger than the batch (3 < VOCAB).
    ('lstm', 'wavefront', 2, 6), ('lstm', 'wavefront', 1, 3),
    ('lstm', 'scan', 2, 6), ('gru', 'scan', 2, 6), ('rnn', 'scan', 2, 6)])
def test_model_and_gradients_match_reference(cell, impl, batch, seq):
  model = model_lib.CharRNN(VOCAB, cell, num_layers=2, hidden=6, embed=4, impl=impl)
  params = random_params(model)
  tokens = random_tokens((batch, seq), VOCAB, seed=4)
  targets = jnp.roll(tokens, -1, axis=1)
  carry = random_carry(model, batch)
  apply = lambda p, x, c: model.apply({'params': p}, x, c)
  ref = lambda p, x, c: reference_apply(cell, p, x, c)
  assert_trees_close(jax.jit(apply)(params, tokens, carry), jax.jit(ref)(params, tokens, carry))
  grad = lambda f: jax.jit(jax.grad(loss_with_carry(f, tokens, targets), argnums=(0, 1)))
  assert_trees_close(grad(apply)(params, carry), grad(ref)(params, carry))


def test_fused_and_scan_agree_with_dropout():
  """Same masks (same rng), same gradients: dropout sits outside the fused recurrence."""
  tokens = random_tokens((4, 6), VOCAB, seed=5)
  targets = jnp.roll(tokens, -1, axis=1)
  results = []
  for impl in ('fused', 'scan'):
    model = model_lib.CharRNN(VOCAB, 'lstm', num_layers=2, hidden=8, dropout=0.5, impl=impl)
    apply = lambda p, x, c, model=model: model.apply(
        {'params': p}, x, c, train=True, rngs={'dropout': jax.random.PRNGKey(6)})
    params, carry = random_params(model), random_carry(model, 4)
    results.append(jax.jit(jax.value_and_grad(loss_with_carry(apply, tokens, targets)))(
        params, carry))
  assert_trees_close(*results)


@pytest.mark.parametrize('layers,batch,seq,embed,dropout,unroll,dtype', [
    (3, 4, 6, 0, 0.5, (2, 1), 'float32'),  # Dropout between layers, same rngs.
    (3, 2, 2, 5, 0.0, (2, 1), 'float32'),  # Fewer steps than layers; embedded (4 < VOCAB).
    (4, 3, 8, 0, 0.3, (3, 2), 'float32'),  # 11 loop steps: unrolls 3, 2 leave remainders.
    (2, 8, 5, 6, 0.0, (8, 8), 'float32'),  # The GPU's loops.
    (3, 4, 6, 0, 0.5, (8, 8), 'bfloat16')])
def test_wavefront_matches_layer_by_layer(layers, batch, seq, embed, dropout, unroll, dtype):
  """impl='wavefront' against impl='fused' (whose gradients the tests above check), both on
  batch-major XLA loops: the same parameters at init, and the same outputs, carry, loss and
  gradients, with dropout."""
  loops = LoopOptions(unroll=unroll[0], unroll_backward=unroll[1])
  tokens = random_tokens((batch, seq), VOCAB, seed=12)
  targets = jnp.roll(tokens, -1, axis=1)
  models = [model_lib.CharRNN(VOCAB, 'lstm', num_layers=layers, hidden=8, embed=embed,
                              dropout=dropout, impl=impl, dtype=dtype, loops=loops)
            for impl in ('wavefront', 'fused')]
  assert_trees_close(*(init(m) for m in models), rtol=0, atol=0)
  params, carry = random_params(models[0], seed=13), random_carry(models[0], batch, seed=14)
  results = []
  for model in models:
    apply = lambda p, x, c, model=model: model.apply(
        {'params': p}, x, c, train=True, rngs={'dropout': jax.random.PRNGKey(15)})
    results.append((jax.jit(apply)(params, tokens, carry),
                    jax.jit(jax.value_and_grad(loss_with_carry(apply, tokens, targets),
                                               argnums=(0, 1)))(params, carry)))
  tol = {'rtol': 2e-5, 'atol': 1e-5} if dtype == 'float32' else {'rtol': 2e-2, 'atol': 2e-2}
  assert_trees_close(*results, **tol)
  grads = jax.tree.leaves(results[0][1][1])
  assert all(float(jnp.abs(g).max()) > 0 for g in grads)  # Every input gets a gradient.


def test_carry_continues_a_sequence():
  model = model_lib.CharRNN(VOCAB, 'lstm', num_layers=2, hidden=8)
  params = random_params(model)
  tokens = random_tokens((2, 12), VOCAB, seed=7)
  apply = jax.jit(lambda x, c: model.apply({'params': params}, x, c))
  whole, carry = apply(tokens, model.initial_carry(2))
  first, mid = apply(tokens[:, :6], model.initial_carry(2))
  second, end = apply(tokens[:, 6:], mid)
  assert_trees_close(jnp.concatenate([first, second], axis=1), whole)
  assert_trees_close(end, carry)


def test_bfloat16_matmuls_stay_close():
  tokens = random_tokens((4, 8), VOCAB, seed=8)
  targets = jnp.roll(tokens, -1, axis=1)
  losses = []
  for dtype in ('float32', 'bfloat16'):
    model = model_lib.CharRNN(VOCAB, 'lstm', num_layers=2, hidden=16, dtype=dtype)
    params = jax.tree.map(lambda x: 0.2 * x, random_params(model))
    apply = lambda p, x, c, model=model: model.apply({'params': p}, x, c)
    loss, grads = jax.jit(jax.value_and_grad(loss_with_carry(apply, tokens, targets)))(
        params, model.initial_carry(4))
    assert jax.tree.map(lambda x: x.dtype, grads) == jax.tree.map(lambda x: x.dtype, params)
    losses.append(float(loss))
  assert abs(losses[0] - losses[1]) < 2e-2


@pytest.mark.parametrize('loops', [CPU_XLA_LOOPS, GPU_XLA_LOOPS],
                         ids=['feature-major', 'batch-major'])
def test_bfloat16_gate_inputs_give_float32_results_rounded(loops):
  """lstm_kernel.lstm with bfloat16 gate inputs and weights, against float32 inputs of the same
  values: the same outputs and gradients of w_h, c0 and h0, and the gate inputs' gradient
  rounded to bfloat16 (the loops compute in float32 and round dz before each product anyway)."""
  t, b, h = 9, 4, 8
  gx, w_h, c0, h0, weights = random_like(
      [jnp.zeros((t, b, 4 * h), jnp.bfloat16), jnp.zeros((h, 4 * h), jnp.bfloat16),
       jnp.zeros((b, h)), jnp.zeros((b, h)), jnp.zeros((t, b, h))], scale=1.0, seed=4)
  loss = lstm_loss(weights, fused(loops))
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  loss16, grads16 = grad(gx, w_h, c0, h0)
  loss32, grads32 = grad(gx.astype(jnp.float32), w_h, c0, h0)
  assert grads16[0].dtype == jnp.bfloat16 and grads32[0].dtype == jnp.float32
  assert_trees_close((loss16, grads16[1:]), (loss32, grads32[1:]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grads16[0].astype(jnp.float32),  # Within one bfloat16 step.
                             grads32[0].astype(jnp.bfloat16).astype(jnp.float32), rtol=2 ** -7)


@pytest.mark.parametrize('loops', [CPU_XLA_LOOPS, LoopOptions(unroll=2, unroll_backward=2)],
                         ids=['feature-major', 'batch-major'])
def test_float16_saved_gates_move_gradients_by_float16_rounding(loops):
  """Gate activations saved in float16 with bfloat16 weights: the float32 gradients (of gx, c0
  and h0) move by float16's rounding (2^-11), not bfloat16's (2^-8; 0.4-0.7% here)."""
  t, b, h = 9, 4, 8
  gx, w_h, c0, h0, weights = random_like(
      [jnp.zeros((t, b, 4 * h)), jnp.zeros((h, 4 * h), jnp.bfloat16), jnp.zeros((b, h)),
       jnp.zeros((b, h)), jnp.zeros((t, b, h))], scale=1.5, seed=5)
  grads = {}
  for saved in ('float32', 'float16'):
    loss = lstm_loss(weights, fused(dataclasses.replace(loops, saved_gates=saved)))
    grads[saved] = jax.jit(jax.grad(loss, argnums=(0, 2, 3)))(gx, w_h, c0, h0)
  for narrow, wide in zip(grads['float16'], grads['float32'], strict=True):
    assert 0 < float(jnp.linalg.norm(narrow - wide)) <= 2e-3 * float(jnp.linalg.norm(wide))


def model_config(**changes):
  """config.model of configs/default.py, with `changes`."""
  from configs import default
  config = default.get_config().model
  config.update(changes)
  return config


def test_auto_settings_resolve_to_each_backends_measured_defaults():
  """'auto' and 0 become what measured fastest on each backend: with bfloat16 matmuls, GPUs
  get bfloat16 gate inputs and float16 saved gates, CPUs float32 for both; CPUs run native or
  feature-major loops unrolled 2 / 1, GPUs batch-major ones unrolled 8 / 8. An explicit value
  wins over 'auto'."""
  gpu = model_lib.resolve(model_config(dtype='bfloat16'), 64, backend='gpu')
  assert (gpu.impl, gpu.gate_inputs, gpu.loops) == ('wavefront', 'bfloat16', LoopOptions(
      native=False, feature_major=False, unroll=8, unroll_backward=8, saved_gates='float16'))
  cpu = model_lib.resolve(model_config(dtype='bfloat16'), 64, backend='cpu')
  assert (cpu.impl, cpu.gate_inputs, cpu.loops) == ('fused', 'float32', LoopOptions(
      native=False, feature_major=True, unroll=2, unroll_backward=1, saved_gates='float32'))
  assert model_lib.resolve(model_config(), 64, backend='cpu').loops.native == (
      lstm_cpu.available())
  f32 = model_lib.resolve(model_config(), 64, backend='gpu')
  assert (f32.gate_inputs, f32.loops.saved_gates) == ('float32', 'float32')
  chosen = model_lib.resolve(model_config(
      impl='fused', dtype='bfloat16', gate_inputs='float32', saved_gates='float32',
      loop_layout='feature_major', unroll=3, unroll_backward=5, unroll_divides=False), 64,
      backend='gpu')
  assert (chosen.impl, chosen.gate_inputs, chosen.loops) == ('fused', 'float32', LoopOptions(
      feature_major=True, unroll=3, unroll_backward=5, unroll_divides=False))
  assert not model_lib.resolve(model_config(native_cpu=False), 64, backend='cpu').loops.native
  wavefront = model_lib.resolve(model_config(impl='wavefront'), 64, backend='cpu')
  assert not wavefront.loops.feature_major and 'batch-major' in wavefront.describe()
  assert chosen.to_json()['loop_layout'] == 'feature_major'
  assert "model.impl='fused' (XLA's loops, feature-major, unroll 3/5" in chosen.describe()


def lowered_step(config, batch=4, seq=12):
  """The StableHLO text of the gradient of a model built from `config` (config.model)."""
  model = model_lib.from_config(config, VOCAB, batch)
  tokens = random_tokens((batch, seq), VOCAB, seed=20)
  targets = jnp.roll(tokens, -1, axis=1)
  apply = lambda p, x, c: model.apply({'params': p}, x, c)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, model.initial_carry(batch))
  grad = jax.jit(jax.grad(loss_with_carry(apply, tokens, targets), argnums=(0, 1)))
  return grad.lower(params['params'], model.initial_carry(batch)).as_text()


XLA = {'native_cpu': False}
BF16 = {'dtype': 'bfloat16', **XLA}


@pytest.mark.parametrize('field,values,shows', [
    ('saved_gates', ('float32', 'float16'), lambda hlo: 'xf16>' in hlo),
    ('gate_inputs', ('float32', 'bfloat16'), None),
    ('loop_layout', ('batch_major', 'feature_major'), None),
    ('unroll', (1, 4), lambda hlo: hlo.count('call @')),  # A loop step a call, 4 an iteration.
    ('unroll_backward', (1, 4), lambda hlo: hlo.count('call @')),
    ('unroll_divides', (True, False), lambda hlo: 'tensor<8x' in hlo),  # 12 = 8 + 4 with 8.
    ('native_cpu', (False, True), lambda hlo: 'charlm_lstm' in hlo)])
def test_each_speed_field_changes_the_compiled_step(field, values, shows):
  """Every speed setting of config.model reaches the compiled program: its two values lower to
  different programs, and where the difference has a mark (float16 arrays, more steps per loop
  iteration, a remainder loop's slices, the native loops' custom calls), it is there."""
  if field == 'native_cpu' and not (jax.default_backend() == 'cpu' and lstm_cpu.available()):
    pytest.skip('the native loops need a CPU and a C++ compiler')
  base = {'native_cpu': {}, 'unroll_divides': {**XLA, 'unroll': 8, 'unroll_backward': 8},
          'saved_gates': BF16, 'gate_inputs': BF16}.get(field, XLA)
  hlos = [lowered_step(model_config(impl='fused', **{**base, field: v})) for v in values]
  assert hlos[0] != hlos[1]
  if shows is not None:
    assert shows(hlos[1]) > shows(hlos[0])


@pytest.mark.parametrize('field,narrow', [('gate_inputs', 'bfloat16'),
                                          ('saved_gates', 'float16')])
@pytest.mark.parametrize('impl', ['fused', 'wavefront'])
def test_bfloat16_narrowing_saves_memory_and_trains_alike(impl, field, narrow):
  """model.gate_inputs='bfloat16' (the loops' gate inputs and their gradients in bfloat16) and
  model.saved_gates='float16' (the saved gate activations in float16), each set in config.model:
  each makes the compiled gradient need less scratch memory, and gives the same loss and
  gradients within bfloat16 rounding."""
  scratch, results = {}, {}
  for value in ('float32', narrow):
    config = model_config(impl=impl, num_layers=2, hidden=32, dropout=0.3, dtype='bfloat16',
                          loop_layout='batch_major', unroll=2, unroll_backward=2,  # As on GPUs.
                          **{field: value})
    model = model_lib.from_config(config, VOCAB, 8)
    tokens = random_tokens((8, 12), VOCAB, seed=16)
    targets = jnp.roll(tokens, -1, axis=1)
    params, carry = random_params(model, seed=17, scale=0.2), random_carry(model, 8, seed=18)
    apply = lambda p, x, c, model=model: model.apply({'params': p}, x, c, train=True,
                                                     rngs={'dropout': jax.random.PRNGKey(19)})
    grad = jax.value_and_grad(loss_with_carry(apply, tokens, targets), argnums=(0, 1))
    compiled = jax.jit(grad).lower(params, carry).compile()
    scratch[value] = compiled.memory_analysis().temp_size_in_bytes
    results[value] = compiled(params, carry)
  assert scratch[narrow] < 0.95 * scratch['float32'], scratch
  # Sums in bfloat16 differ in their last bits: compare each array as a whole.
  for narrowed, wide in zip(jax.tree.leaves(results[narrow]), jax.tree.leaves(results['float32']),
                            strict=True):
    assert float(jnp.linalg.norm(narrowed - wide)) <= 1e-2 * float(jnp.linalg.norm(wide))


def test_from_config_and_count_params(caplog):
  config = ml_collections.ConfigDict({'cell': 'lstm', 'num_layers': 2, 'hidden': 8, 'embed': 0,
                                      'dropout': 0.0, 'impl': 'fused', 'dtype': 'float32'})
  model = model_lib.from_config(config, VOCAB)
  params = random_params(model)
  matmul = 2 * 4 * 8 * (8 + 8) + 8 * VOCAB
  assert model_lib.count_params(params) == matmul + VOCAB * 8 + 2 * 4 * 8 + VOCAB
  for field, bad in (('cell', 'tree'), ('impl', 'pallas'), ('dtype', 'float16'),
                     ('gate_inputs', 'float16'), ('saved_gates', 'bfloat16'),
                     ('loop_layout', 'time_major'), ('unroll', -1), ('unroll_backward', 2.5),
                     ('unroll_divides', 'yes'), ('native_cpu', 1)):
    with pytest.raises(UserError, match=f'model.{field}') as error:
      model_lib.from_config(ml_collections.ConfigDict({**config.to_dict(), field: bad}), VOCAB)
    assert '\n' not in str(error.value) and repr(bad) in str(error.value)
  for field, narrow in (('gate_inputs', 'bfloat16'), ('saved_gates', 'float16')):
    with pytest.raises(UserError, match=f"model.{field}='{narrow}' goes with bfloat16 matmuls"):
      model_lib.from_config(ml_collections.ConfigDict({**config.to_dict(), field: narrow}), VOCAB)
  with pytest.raises(UserError, match="model.impl='cudnn' was removed.*use model.impl='auto'"):
    model_lib.from_config(ml_collections.ConfigDict({**config.to_dict(), 'impl': 'cudnn'}), VOCAB)
  with pytest.raises(UserError, match="model.impl='wavefront' runs LSTM layers only"):
    model_lib.from_config(ml_collections.ConfigDict({**config.to_dict(), 'cell': 'gru',
                                                     'impl': 'wavefront'}), VOCAB)
  with caplog.at_level(logging.WARNING):
    model_lib.from_config(ml_collections.ConfigDict({**config.to_dict(), 'impl': 'wavefront'}),
                          VOCAB)
  warned = [r.getMessage() for r in caplog.records if 'wavefront' in r.getMessage()]
  assert warned == ([] if jax.default_backend() != 'cpu' else
                    ["charlm: model.impl='wavefront' is made for GPUs; on a CPU "
                     "model.impl='fused' trains faster"])
  # A config saved before a field existed means that field's default.
  legacy = ml_collections.ConfigDict({k: v for k, v in config.items()
                                      if k not in ('impl', 'dtype')})
  assert model_lib.resolve(legacy, backend='cpu') == model_lib.resolve(
      model_config(num_layers=2, hidden=8), backend='cpu')


def test_auto_impl_picks_the_wavefront_where_it_measured_faster(monkeypatch, tmp_path):
  def config(**changes):
    fields = {'cell': 'lstm', 'num_layers': 3, 'hidden': 512, 'embed': 0, 'dropout': 0.0,
              'impl': 'auto', 'dtype': 'bfloat16'}
    return ml_collections.ConfigDict({**fields, **changes})

  auto = model_lib.auto_impl
  assert auto(config(), 64, 'gpu') == auto(config(), 128, 'gpu') == 'wavefront'
  assert auto(config(num_layers=2, hidden=256), 64, 'gpu') == 'wavefront'
  assert auto(config(dtype='float32'), 64, 'gpu') == 'wavefront'
  for fused, batch in ((config(), 256), (config(dtype='float32'), 512), (config(cell='gru'), 64),
                       (config(num_layers=1), 64), (config(), None)):
    assert auto(fused, batch, 'gpu') == 'fused', (fused, batch)
  assert auto(config(), 64, 'cpu') == 'fused'
  # from_config and trainer.build choose for the batch on each device.
  assert model_lib.from_config(config(), VOCAB, 64, backend='gpu').impl == 'wavefront'
  assert model_lib.from_config(config(), VOCAB, backend='gpu').impl == 'fused'
  assert model_lib.from_config(config(impl='fused'), VOCAB, 64, backend='gpu').impl == 'fused'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')  # For trainer.build: pose as a GPU.
  train = smoke_config(tmp_path, model__num_layers=2, model__hidden=256, model__dtype='bfloat16',
                       train__batch_size=64 * jax.device_count())
  assert trainer.build(train, VOCAB, 1)[0].impl == 'wavefront'
  train.train.batch_size *= 2
  assert trainer.build(train, VOCAB, 1)[0].impl == 'wavefront'  # 128 x 256 <= 64K
  train.train.batch_size *= 4
  assert trainer.build(train, VOCAB, 1)[0].impl == 'fused'


def test_a_run_saved_with_impl_cudnn_loads_as_fused(tmp_path):
  """impl='cudnn' left the product with the same parameters: a run whose checkpoint says it
  (made here by editing a fused run's saved config) loads as 'fused', with its parameters."""
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(smoke_config(tmp_path, model__impl='fused', train__steps=4),
                             str(workdir))
  _, _, _, params, step = inference.load_checkpoint(str(workdir))
  saved = [os.path.join(d, f) for d, _, files in os.walk(workdir / 'checkpoints' / str(step))
           for f in files if f == 'metadata' and os.path.basename(d) == 'meta']
  assert len(saved) == 1, saved
  with open(saved[0]) as f:
    meta = json.load(f)
  meta['config']['model']['impl'] = 'cudnn'
  with open(saved[0], 'w') as f:
    json.dump(meta, f)
  config, _, model, loaded, _ = inference.load_checkpoint(str(workdir))
  assert config.model.impl == 'fused' and model.impl == 'fused'
  assert_trees_close(loaded, params, rtol=0, atol=0)
