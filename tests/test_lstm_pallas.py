"""The Pallas LSTM steps (lstm_pallas), forward and backward: against XLA's steps in interpret
mode, inside the LSTM's loops with PALLAS_CELL, and lowered for CUDA (their compilation and
speed need a GPU)."""
import functools

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_trees_close, use_xla_loops

from charlm import lstm_kernel, lstm_pallas


def random_args(batch, hidden, dtype=jnp.float32, steps=None, seed=0):
  """(w_h, c, h, gx) of a step, or with `steps` (gx [steps, ...], w_h, c0, h0) of a layer."""
  k = jax.random.split(jax.random.key(seed), 4)
  w = (0.3 * jax.random.normal(k[0], (hidden, 4 * hidden))).astype(dtype)
  c, h = (jax.random.normal(key, (batch, hidden)) for key in k[1:3])
  gx = jax.random.normal(k[3], ((steps,) if steps else ()) + (batch, 4 * hidden))
  return (w, c, h, gx) if steps is None else (gx, w, c, h)


def small_blocks(monkeypatch):
  """Blocks of 16, the least the kernel takes, so that tiny shapes have several of each."""
  for name in ('BLOCK_B', 'BLOCK_H', 'BLOCK_K'):
    monkeypatch.setattr(lstm_pallas, name, 16)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('batch,hidden,small', [(32, 48, True), (128, 64, False), (16, 16, False)])
def test_cell_matches_the_xla_step(batch, hidden, small, dtype, monkeypatch):
  if small:  # A 2 x 3 grid, 3 chunks of the product.
    small_blocks(monkeypatch)
  assert lstm_pallas.supported(batch, hidden)
  w, c, h, gx = random_args(batch, hidden, dtype)
  want = lstm_kernel._cell(w, lstm_kernel._scale(hidden, False), c, h, gx, False)
  got = jax.jit(lstm_pallas.cell)(w, c, h, gx)
  assert [x.shape for x in got] == [x.shape for x in want]
  assert all(x.dtype == jnp.float32 for x in got)
  assert_trees_close(got, want)


def random_grad_args(batch, hidden, dtype=jnp.float32, seed=0):
  """(w_h, dz_next, dh_out, t, c, c_prev, dc) of a backward step."""
  k = jax.random.split(jax.random.key(seed), 7)
  w = (0.3 * jax.random.normal(k[0], (hidden, 4 * hidden))).astype(dtype)
  dz_next, t = (jax.random.normal(key, (batch, 4 * hidden)) for key in k[1:3])
  return (w, 0.5 * dz_next, *(jax.random.normal(key, (batch, hidden)) for key in k[3:4]),
          jnp.tanh(t), *(jax.random.normal(key, (batch, hidden)) for key in k[4:]))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('batch,hidden,small', [(32, 48, True), (128, 64, False), (16, 16, False)])
def test_cell_grad_matches_the_xla_step(batch, hidden, small, dtype, monkeypatch):
  if small:  # A 2 x 3 grid, 3 chunks of the product for each of the 4 gates.
    small_blocks(monkeypatch)
  w, dz_next, dh_out, t, c, c_prev, dc = random_grad_args(batch, hidden, dtype)
  dh = dh_out + jnp.dot(dz_next.astype(dtype), w.T, preferred_element_type=jnp.float32)
  s = lstm_kernel._scale(hidden, False)
  want = lstm_kernel._gates_grad(t, s, c, c_prev, dh, dc, axis=-1)
  got = jax.jit(lstm_pallas.cell_grad)(w, dz_next, dh_out, t, c, c_prev, dc)
  assert [x.shape for x in got] == [(batch, 4 * hidden), (batch, hidden)]
  assert all(x.dtype == jnp.float32 for x in got)
  assert_trees_close(got, want)


def test_smaller_batches_get_smaller_blocks_to_fill_the_gpu():
  assert lstm_pallas._blocks(512, 512) == (64, 32, 64)  # 8 x 16 programs.
  assert lstm_pallas._blocks(128, 512) == (16, 32, 64)  # 8 x 16.
  assert lstm_pallas._blocks(64, 512) == (16, 16, 64)  # 4 x 32.
  assert lstm_pallas._blocks(96, 512) == (16, 16, 64)  # Powers of two that divide the batch.


def test_supported_shapes():
  assert lstm_pallas.supported(512, 512) and lstm_pallas.supported(64, 512)
  assert lstm_pallas.supported(16, 16) and lstm_pallas.supported(128, 768)
  assert not lstm_pallas.supported(8, 512)  # Too few rows for a product.
  assert lstm_pallas.supported(48, 512) and lstm_pallas.supported(96, 512)  # Blocks of 16 rows.
  assert not lstm_pallas.supported(40, 512)  # No power of two from 16 up divides 40.
  assert not lstm_pallas.supported(64, 40)


@pytest.mark.parametrize('final_state,dtype,saved_float16', [
    (True, jnp.float32, False), (False, jnp.float32, False), (True, jnp.bfloat16, False),
    (True, jnp.bfloat16, True)])
def test_lstm_with_the_pallas_step_matches_xla_loops(final_state, dtype, saved_float16,
                                                     monkeypatch):
  """Forward and jax.grad with respect to all inputs, through the hand-written backward pass;
  with `final_state` the loss reads the final (c, h) too, so that their cotangents are not 0.
  In bfloat16 the gate inputs and weights are bfloat16, as model.GATE_INPUTS_BFLOAT16 passes
  them, and with `saved_float16` the loops save the gate activations in float16."""
  small_blocks(monkeypatch)
  monkeypatch.setattr(lstm_kernel, 'SAVED_GATES_FLOAT16', saved_float16)
  use_xla_loops(monkeypatch, (False, 2, 2))
  gx, w_h, c0, h0 = random_args(32, 32, dtype, steps=5, seed=1)
  args = (gx.astype(dtype), w_h, c0, h0)
  weights = jax.random.normal(jax.random.key(2), (5, 32, 32))

  def loss(gx, w_h, c0, h0):
    hs, c, h = lstm_kernel.lstm(gx, w_h, c0, h0)
    return jnp.sum(hs * weights) + (jnp.sum(jnp.cos(c)) + jnp.sum(h ** 2) if final_state else 0)

  def run(pallas):
    monkeypatch.setattr(lstm_kernel, 'PALLAS_CELL', pallas)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args))
    # One kernel in the forward loop's body, one in the backward's.
    assert jaxpr.count('pallas_call') == (2 if pallas else 0)
    assert ('lstm_cell_grad' in jaxpr) == pallas
    return jax.jit(lstm_kernel.lstm)(*args), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)

  tol = {} if dtype == jnp.float32 else {'rtol': 2e-2, 'atol': 2e-2}
  assert_trees_close(run(True), run(False), **tol)


# The operands after w of each kernel, as the model passes them: [B, n x H] of a dtype; T is
# the saved gate activations' (lstm_kernel.SAVED_GATES_FLOAT16).
F32, BF16, T = jnp.float32, jnp.bfloat16, 't'
STATE_WIDTHS = {'cell': ((1, F32), (1, F32), (4, BF16)),
                'cell_grad': ((4, BF16), (1, F32), (4, T), (1, F32), (1, F32), (1, F32))}


@pytest.mark.parametrize('saved', [jnp.float32, jnp.float16])
@pytest.mark.parametrize('kernel', ['cell', 'cell_grad'])
@pytest.mark.parametrize('batch', [512, 64])
def test_kernels_lower_to_triton_for_cuda(kernel, batch, saved, monkeypatch):
  """As on the GPU: 512 hidden, bfloat16 weights, Triton instead of interpret mode, with the
  gate activations saved in `saved`."""
  monkeypatch.setattr(lstm_pallas, '_interpret', lambda: False)
  hidden = 512
  assert lstm_pallas.supported(batch, hidden)
  args = [jax.ShapeDtypeStruct((hidden, 4 * hidden), jnp.bfloat16)] + [
      jax.ShapeDtypeStruct((batch, n * hidden), saved if dtype == T else dtype)
      for n, dtype in STATE_WIDTHS[kernel]]
  fn = getattr(lstm_pallas, kernel)
  if kernel == 'cell':
    fn = functools.partial(fn, t_dtype=saved)
  # jax 0.11 lowers Triton kernels for a GPU it knows, here an abstract H200 (sm_90).
  device = jax.sharding.AbstractDevice(device_kind='NVIDIA H200', num_cores=132, platform='gpu')
  with jax.sharding.use_abstract_mesh(
      jax.sharding.AbstractMesh((1,), ('x',), abstract_device=device)):
    lowered = jax.jit(fn).trace(*args).lower(
        lowering_platforms=('cuda',))
  text = lowered.as_text()
  assert 'stablehlo.custom_call @__gpu$xla.gpu.triton(' in text, text[:2000]
  rows, units, _ = lstm_pallas._blocks(batch, hidden)
  assert f'grid_x = {batch // rows} : i32, grid_y = {hidden // units} : i32' in text
  assert (batch // rows) * (hidden // units) >= 128  # Programs for the GPU's 132 SMs.
