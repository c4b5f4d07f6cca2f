"""A stack of LSTM layers in one loop, as a wavefront: loop step k runs layer l at time k - l.

Layer by layer, L layers over T steps take L x T loop steps, each a small recurrent product and
a few elementwise kernels. On a GPU each of those is a kernel launch that the batch hardly
fills, so launches and idle multiprocessors, not FLOPs, set the speed. Here the loop takes
T + L - 1 steps and each runs every layer at once: layer 0's recurrent product, one batched
product for the upper layers ([input, state] @ [W_x; W_h]) and one set of elementwise kernels
over [L, B, 4H]. The upper layers' input projections move into the loop, because their inputs
are the layer below's outputs of the step before; on a CPU that loses, so this is an option
for GPUs: model.impl='wavefront' (measurements: docs/speed.md).

The backward loop runs the wavefront in reverse: layer l at time t takes the gradient of its
output from layer l + 1, which handled time t one step earlier. As in `lstm_kernel.lstm`, the
forward loop saves the gate activations, and the weight gradients are large products over all
timesteps after the loops; the cell's arithmetic is `lstm_cell`'s. Outside its T steps a
layer's state passes through unchanged.
"""
import functools

import jax
import jax.numpy as jnp

from charlm import lstm_cell
from charlm.lstm_cell import LoopOptions


def _skew(x, layer: int, layers: int):
  """x [T, ...] placed at loop steps layer .. layer + T - 1 of T + layers - 1 (zeros elsewhere)."""
  return jnp.pad(x, [(layer, layers - 1 - layer)] + [(0, 0)] * (x.ndim - 1))


def _unskew(x, layer: int, steps: int):
  """Layer `layer`'s T = `steps` entries of x [T + L - 1, L, ...]."""
  return x[layer:layer + steps, layer]


def _active(k, layers: int, steps: int):
  """[L, 1, 1]: whether each layer has a timestep at loop step k."""
  layer = jnp.arange(layers)[:, None, None]
  return (k >= layer) & (k < layer + steps)


def _skewed_keep(keep, layers):
  if keep is None:
    return None
  return jnp.stack([_skew(keep[n - 1], n, layers) for n in range(1, layers)], axis=1)


def _forward(gx0, w_x, b_x, w_h, c0, h0, keep, options: LoopOptions, save: bool):
  steps, layers, hidden = gx0.shape[0], w_h.shape[0], w_h.shape[1]
  s = lstm_cell.gate_scale(hidden, feature_major=False)
  w_up = jnp.concatenate([w_x, w_h[1:]], axis=1)  # [L - 1, 2H, 4H]
  dtype, t_dtype = w_h.dtype, jnp.dtype(options.saved_gates)

  def step(carry, xs):
    c, h = carry
    k, gx_k, keep_k = xs
    x = h[:-1] if keep_k is None else h[:-1] * keep_k  # The layers below, one step back.
    z0 = gx_k + jnp.dot(h[0].astype(dtype), w_h[0], preferred_element_type=jnp.float32)
    up = jnp.concatenate([x, h[1:]], axis=-1).astype(dtype)
    z_up = b_x[:, None] + jnp.einsum('lbi,lio->lbo', up, w_up,
                                     preferred_element_type=jnp.float32)
    c_new, h_new, t = lstm_cell.gates(jnp.concatenate([z0[None], z_up]), s, c, axis=-1)
    active = _active(k, layers, steps)
    carry = jnp.where(active, c_new, c), jnp.where(active, h_new, h)
    return carry, (h_new, t.astype(t_dtype), c) if save else h_new

  xs = (jnp.arange(steps + layers - 1), _skew(gx0, 0, layers), _skewed_keep(keep, layers))
  (c, h), out = lstm_cell.loop(step, (c0, h0), xs, steps + layers - 1, options.unroll, options)
  return out, c, h


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def stack(gx0, w_x, b_x, w_h, c0, h0, keep, options: LoopOptions):
  """L >= 2 LSTM layers over T steps; returns the top layer's hs [T, B, H] and the final c and h
  of every layer [L, B, H].

  gx0 [T, B, 4H] is layer 0's input projection, float32 or the matmul dtype (its gradient comes
  back in its dtype); w_x [L - 1, H, 4H] and b_x [L - 1, 4H] (float32) are the upper layers'
  input kernels and biases; w_h [L, H, 4H] the recurrent kernels (w_x and w_h in the matmul
  dtype); c0 and h0 [L, B, H] float32; keep [L - 1, T, B, H] multiplies each upper layer's
  input (dropout: the mask over the keep probability), or None. The loops are batch-major and
  unrolled as `options` says.
  """
  hs, c, h = _forward(gx0, w_x, b_x, w_h, c0, h0, keep, options, save=False)
  return _unskew(hs, w_h.shape[0] - 1, gx0.shape[0]), c, h


def _stack_fwd(gx0, w_x, b_x, w_h, c0, h0, keep, options):
  (hs, ts, c_prevs), c, h = _forward(gx0, w_x, b_x, w_h, c0, h0, keep, options, save=True)
  layers, steps = w_h.shape[0], gx0.shape[0]
  gx0_like = jnp.zeros((0,), gx0.dtype)  # Residuals are arrays: an empty one holds the dtype.
  return (_unskew(hs, layers - 1, steps), c, h), (hs, ts, c_prevs, c, w_x, w_h, h0, keep,
                                                  gx0_like)


def _stack_bwd(options, residuals, cotangents):
  hs, ts, c_prevs, c_last, w_x, w_h, h0, keep, gx0_like = residuals
  dhs, dc_last, dh_last = cotangents
  layers, hidden, dtype = w_h.shape[0], w_h.shape[1], w_h.dtype
  steps = dhs.shape[0]
  s = lstm_cell.gate_scale(hidden, feature_major=False)
  w_up = jnp.concatenate([w_x, w_h[1:]], axis=1)

  def step(carry, xs):
    dh, dc, c, dx = carry  # dx: the gradient of each lower layer's output at its time now.
    k, dh_top, t, c_prev, keep_k = xs
    dh = dh + jnp.concatenate([dx, dh_top[None]])
    dz, dc_prev = lstm_cell.gates_grad(t.astype(jnp.float32), s, c, c_prev, dh, dc, axis=-1)
    active = _active(k, layers, steps)
    dz = jnp.where(active, dz, 0)
    dzc = dz.astype(dtype)
    dh0_new = jnp.dot(dzc[0], w_h[0].T, preferred_element_type=jnp.float32)
    d_up = jnp.einsum('lbo,lio->lbi', dzc[1:], w_up, preferred_element_type=jnp.float32)
    dx, dh_up = jnp.split(d_up, 2, axis=-1)
    if keep_k is not None:
      dx = dx * keep_k
    carry = (jnp.where(active, jnp.concatenate([dh0_new[None], dh_up]), dh),
             jnp.where(active, dc_prev, dc), c_prev, dx)  # Outside its steps c_prev is c.
    return carry, dz.astype(gx0_like.dtype)

  xs = (jnp.arange(steps + layers - 1), _skew(dhs, layers - 1, layers), ts, c_prevs,
        _skewed_keep(keep, layers))
  dx0 = jnp.zeros((layers - 1,) + dh_last.shape[1:], jnp.float32)
  (dh0, dc0, _, _), dzs = lstm_cell.loop(step, (dh_last, dc_last, c_last, dx0), xs,
                                         steps + layers - 1, options.unroll_backward, options,
                                         reverse=True)
  dz = [_unskew(dzs, n, steps) for n in range(layers)]  # Each layer's [T, B, 4H] and [T, B, H].
  h = [_unskew(hs, n, steps) for n in range(layers)]
  h_prev = [jnp.concatenate([h0[n][None], h[n][:-1]]) for n in range(layers)]
  dw_h = jnp.stack([lstm_cell.weight_grad(h_prev[n], dz[n], dtype) for n in range(layers)])
  x = [h[n - 1] if keep is None else h[n - 1] * keep[n - 1] for n in range(1, layers)]
  dw_x = jnp.stack([lstm_cell.weight_grad(x[n - 1], dz[n], w_x.dtype)
                    for n in range(1, layers)])
  db_x = jnp.stack([dz[n].sum((0, 1), dtype=jnp.float32) for n in range(1, layers)])
  dkeep = None if keep is None else jnp.zeros_like(keep)
  return dz[0], dw_x, db_x, dw_h, dc0, dh0, dkeep


stack.defvjp(_stack_fwd, _stack_bwd)
