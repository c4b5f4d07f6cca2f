"""The LSTM recurrence with a hand-written backward pass, for fast training.

`lstm(gx, w_h, c0, h0)` runs the recurrence over time-major gate inputs gx [T, B, 4H] (the
input projection of every timestep, computed before as one large matmul) and returns the
hidden states hs [T, B, H] and the final (c, h). Gates are ordered i, f, g, o, as in
`model.lstm_step`, and the result equals it up to float rounding.

Why not autodiff through `lax.scan`: its backward loop accumulates the recurrent weight
gradient with a small matmul per step and carries it, and it saves more than it needs. Here
the forward loop saves the gate activations and the previous cell state; the backward loop
carries only (dh, dc) and emits the gate gradients dz of every step; the weight gradient is
then one large matmul over all timesteps, h_prev^T dz, and dz itself is the gradient of gx,
so the input projection's gradients are large matmuls too.

The gates use tanh alone: sigmoid(x) = (1 + tanh(x / 2)) / 2, so one tanh over all 4H
columns replaces three sigmoids (exp and divide, slower on a CPU) and a tanh.
"""
import jax
import jax.numpy as jnp


def _scale(hidden: int, dtype):
  """Per gate column: 1/2 for the sigmoid gates i, f, o and 1 for the tanh gate g."""
  half, one = jnp.full((hidden,), 0.5, dtype), jnp.ones((hidden,), dtype)
  return jnp.concatenate([half, half, one, half])


def _split(a):
  return jnp.split(a, 4, axis=-1)


def _cell(w_h, s, c, h, gx):
  """One step; returns the new (c, h) and t = tanh(s * z), from which the gates follow."""
  z = gx + jnp.dot(h.astype(w_h.dtype), w_h, preferred_element_type=jnp.float32)
  t = jnp.tanh(z * s)
  i, f, g, o = _split(t * s + (1 - s))
  c = f * c + i * g
  return c, o * jnp.tanh(c), t


@jax.custom_vjp
def lstm(gx, w_h, c0, h0):
  """gx [T, B, 4H] float32, w_h [H, 4H], c0 and h0 [B, H] -> (hs [T, B, H], cT, hT)."""
  s = _scale(h0.shape[-1], gx.dtype)

  def step(carry, gx_t):
    c, h, _ = _cell(w_h, s, *carry, gx_t)
    return (c, h), h

  (c, h), hs = jax.lax.scan(step, (c0, h0), gx)
  return hs, c, h


def _lstm_fwd(gx, w_h, c0, h0):
  s = _scale(h0.shape[-1], gx.dtype)

  def step(carry, gx_t):
    c_prev, h = carry
    c, h, t = _cell(w_h, s, c_prev, h, gx_t)
    return (c, h), (h, t, c_prev)

  (c, h), (hs, ts, c_prevs) = jax.lax.scan(step, (c0, h0), gx)
  return (hs, c, h), (hs, ts, c_prevs, c, w_h, h0)


def _lstm_bwd(residuals, cotangents):
  hs, ts, c_prevs, c_last, w_h, h0 = residuals
  dhs, dc_last, dh_last = cotangents
  hidden = h0.shape[-1]
  s = _scale(hidden, ts.dtype)
  w_t = w_h.T  # Transposed once, so that the loop's matmul is a plain [B, 4H] x [4H, H].

  def step(carry, xs):
    dh, dc, c = carry  # c is this step's cell state; the loop reads the previous one.
    dh_out, t, c_prev = xs
    i, f, g, o = _split(t * s + (1 - s))
    dh = dh + dh_out
    tc = jnp.tanh(c)
    dc = dc + dh * o * (1 - tc * tc)
    da = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tc], axis=-1)
    dz = da * (s * s) * (1 - t * t)  # d/dz of (tanh(s z) s + 1 - s).
    dh = jnp.dot(dz.astype(w_t.dtype), w_t, preferred_element_type=jnp.float32)
    return (dh, dc * f, c_prev), dz

  (dh0, dc0, _), dzs = jax.lax.scan(step, (dh_last, dc_last, c_last), (dhs, ts, c_prevs),
                                     reverse=True)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  rows = h_prev.shape[0] * h_prev.shape[1]
  dw = jnp.dot(h_prev.reshape(rows, hidden).T.astype(w_h.dtype),
               dzs.reshape(rows, 4 * hidden).astype(w_h.dtype),
               preferred_element_type=jnp.float32)
  return dzs, dw.astype(w_h.dtype), dc0, dh0


lstm.defvjp(_lstm_fwd, _lstm_bwd)
