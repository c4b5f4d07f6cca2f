"""The LSTM recurrence with a hand-written backward pass, for fast training.

Two forms of one layer; gates are ordered i, f, g, o, as in `model.lstm_step`, and both equal
it up to float rounding:

- `lstm(gx, w_h, c0, h0)`: the input projection of every timestep is computed before, as one
  large matmul, and comes in as gx [T, B, 4H]; returns hs [T, B, H] and the final (c, h).
- `lstm_in_loop(xs, w_x, b, w_h, c0, h0)`: feature-major throughout (xs [T, E, B] -> hs
  [T, H, B], states [H, B]); each step multiplies [W_x; W_h]^T by [x_t; h] in one matmul.

Why not autodiff through `lax.scan`: its backward loop accumulates the weight gradients with a
small matmul per step, and it saves more than it needs. Here the forward loop saves the gate
activations and the previous cell state; the backward loop carries only (dh, dc) and emits the
gate gradients dz of every step; the weight gradients are then one large matmul over all
timesteps (and dz is the gradient of gx).

Inside the loops the state is feature-major, [H, B]: each step multiplies the weights from the
left, W^T [4H, H] @ h [H, B]. A CPU matmul library packs its right-hand operand, and h @ W
repacks the whole weight matrix every step; this way it packs only the small state, which made
the steps up to 1.5x faster at H = 512 on a 2-core CPU, where such a step then runs on both
cores near the machine's matmul peak once H >= 256. That is why `lstm_in_loop` moves the input
projection into the loop for those sizes: it joins a matmul that is as fast as a large one,
and gx, its [T, B, 4H] transposes and the separate input-gradient matmul disappear (2x512 and
3x512 trained 5-12% faster). Below H = 256 the step's matmul is too small for two threads, and
`lstm` with the projection hoisted out wins (2x128: 7%).

The gates use tanh alone: sigmoid(x) = (1 + tanh(x / 2)) / 2, so one tanh over all 4H rows
replaces three sigmoids (exp and divide, slower on a CPU) and a tanh.
"""
import functools

import jax
import jax.numpy as jnp


def _scale(hidden: int, dtype=jnp.float32):
  """Per gate row: 1/2 for the sigmoid gates i, f, o and 1 for the tanh gate g."""
  return jnp.repeat(jnp.asarray([0.5, 0.5, 1.0, 0.5], dtype), hidden)[:, None]


def _matmul(a, b):
  return jnp.dot(a, b.astype(a.dtype), preferred_element_type=jnp.float32)


def _gates(s, c, z):
  """The new (c, h) [H, B] from the pre-activations z [4H, B]; and t = tanh(s z)."""
  t = jnp.tanh(z * s)
  i, f, g, o = jnp.split(t * s + (1 - s), 4)
  c = f * c + i * g
  return c, o * jnp.tanh(c), t


def _gates_grad(s, t, c, c_prev, dh, dc):
  """Through one step's gates: dz [4H, B] and the carried dc, from dh and dc of the outputs."""
  i, f, g, o = jnp.split(t * s + (1 - s), 4)
  tc = jnp.tanh(c)
  dc = dc + dh * o * (1 - tc * tc)
  da = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tc])
  return da * (s * s) * (1 - t * t), dc * f  # d/dz of (tanh(s z) s + 1 - s).


# ---------------------------------------------------------------------------------------------
# The input projection hoisted out of the loop: batch-major sequences.

@jax.custom_vjp
def lstm(gx, w_h, c0, h0):
  """gx [T, B, 4H] float32, w_h [H, 4H], c0 and h0 [B, H] -> (hs [T, B, H], cT, hT)."""
  s, w_t = _scale(h0.shape[-1]), w_h.T

  def step(carry, gx_t):
    c, h = carry
    c, h, _ = _gates(s, c, gx_t.T + _matmul(w_t, h))
    return (c, h), h.T

  (c, h), hs = jax.lax.scan(step, (c0.T, h0.T), gx)
  return hs, c.T, h.T


def _lstm_fwd(gx, w_h, c0, h0):
  s, w_t = _scale(h0.shape[-1]), w_h.T

  def step(carry, gx_t):
    c_prev, h = carry
    c, h, t = _gates(s, c_prev, gx_t.T + _matmul(w_t, h))
    return (c, h), (h.T, t, c_prev)

  (c, h), (hs, ts, c_prevs) = jax.lax.scan(step, (c0.T, h0.T), gx)
  return (hs, c.T, h.T), (hs, ts, c_prevs, c, w_h, h0)


def _lstm_bwd(residuals, cotangents):
  hs, ts, c_prevs, c_last, w_h, h0 = residuals
  dhs, dc_last, dh_last = cotangents
  steps, batch, hidden = hs.shape
  s = _scale(hidden)

  def step(carry, xs):
    dh, dc, c = carry  # c is this step's cell state; the loop reads the previous one.
    dh_out, t, c_prev = xs
    dz, dc = _gates_grad(s, t, c, c_prev, dh + dh_out.T, dc)
    return (_matmul(w_h, dz), dc, c_prev), dz.T

  (dh0, dc0, _), dzs = jax.lax.scan(step, (dh_last.T, dc_last.T, c_last),
                                     (dhs, ts, c_prevs), reverse=True)
  h_prev = jnp.concatenate([h0[None], hs[:-1]]).reshape(steps * batch, hidden)
  dw = _matmul(h_prev.T.astype(w_h.dtype), dzs.reshape(steps * batch, 4 * hidden))
  return dzs, dw.astype(w_h.dtype), dc0.T, dh0.T


lstm.defvjp(_lstm_fwd, _lstm_bwd)


# ---------------------------------------------------------------------------------------------
# The input projection inside the loop: feature-major sequences.

@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lstm_in_loop(xs, w_x, b, w_h, c0, h0, input_grad=True):
  """xs [T, E, B], w_x [E, 4H], b [4H], w_h [H, 4H], c0 and h0 [H, B] -> (hs [T, H, B], cT, hT).

  With input_grad=False the gradient of xs is zeros (for one-hot inputs), which saves the
  backward loop a third of its matmul.
  """
  s, w_t = _scale(h0.shape[0]), jnp.concatenate([w_x, w_h]).T

  def step(carry, x):
    c, h = carry
    c, h, _ = _gates(s, c, _matmul(w_t, jnp.concatenate([x, h])) + b[:, None])
    return (c, h), h

  (c, h), hs = jax.lax.scan(step, (c0, h0), xs)
  return hs, c, h


def _in_loop_fwd(xs, w_x, b, w_h, c0, h0, input_grad):
  s, w_t = _scale(h0.shape[0]), jnp.concatenate([w_x, w_h]).T

  def step(carry, x):
    c_prev, h = carry
    c, h, t = _gates(s, c_prev, _matmul(w_t, jnp.concatenate([x, h])) + b[:, None])
    return (c, h), (h, t, c_prev)

  (c, h), (hs, ts, c_prevs) = jax.lax.scan(step, (c0, h0), xs)
  return (hs, c, h), (xs, hs, ts, c_prevs, c, w_x, w_h, h0)


def _in_loop_bwd(input_grad, residuals, cotangents):
  xs, hs, ts, c_prevs, c_last, w_x, w_h, h0 = residuals
  dhs, dc_last, dh_last = cotangents
  width, hidden = xs.shape[1], hs.shape[1]
  s = _scale(hidden)
  w_back = jnp.concatenate([w_x, w_h]) if input_grad else w_h

  def step(carry, inputs):
    dh, dc, c = carry
    dh_out, t, c_prev = inputs
    dz, dc = _gates_grad(s, t, c, c_prev, dh + dh_out, dc)
    back = _matmul(w_back, dz)
    dx, dh = (back[:width], back[width:]) if input_grad else (None, back)
    return (dh, dc, c_prev), (dz, dx)

  (dh0, dc0, _), (dzs, dxs) = jax.lax.scan(step, (dh_last, dc_last, c_last),
                                            (dhs, ts, c_prevs), reverse=True)
  xh = jnp.concatenate([xs, jnp.concatenate([h0[None], hs[:-1]])], axis=1)
  dw = jnp.einsum('tkb,tgb->kg', xh.astype(jnp.float32), dzs)  # XLA:CPU has no bf16 form.
  if not input_grad:
    dxs = jnp.zeros_like(xs)
  return (dxs, dw[:width].astype(w_x.dtype), dzs.sum((0, 2)), dw[width:].astype(w_h.dtype),
          dc0, dh0)


lstm_in_loop.defvjp(_in_loop_fwd, _in_loop_bwd)
