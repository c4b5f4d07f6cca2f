"""One LSTM layer's recurrence with a hand-written backward pass, for fast training (impl='fused').

`lstm(gx, w_h, c0, h0, options)` runs the recurrence over time-major gate inputs gx [T, B, 4H]
(the input projection of every timestep, computed before as one large matmul) and returns the
hidden states hs [T, B, H] and the final (c, h), each [B, H].

Why not autodiff through `lax.scan`: its backward loop accumulates the recurrent weight
gradient with a small matmul per step and carries it, and it saves more than it needs. Here
the forward loop saves the gate activations and the previous cell state; the backward loop
carries only (dh, dc) and emits the gate gradients dz of every step; the weight gradient is
then one large matmul over all timesteps, h_prev^T dz, and dz itself is the gradient of gx,
so the input projection's gradients are large matmuls too. `lstm_states_into` is the forward
loop alone, writing what each step computed.

The loops run as `options` (lstm_cell.LoopOptions) says: natively on a CPU (`lstm_cpu`, one
call per layer and direction), or as XLA's loops over the cell in `lstm_cell`, with the state
feature-major ([H, B], as CPUs like it) or batch-major ([B, H], as GPUs like it).
Measurements behind each choice: docs/speed.md.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from charlm import lstm_cell, lstm_cpu
from charlm.lstm_cell import LoopOptions


def _cell(w, s, c, h, gx_t, feature_major):
  """One step; returns the new (c, h) and t = tanh(s * z), all in the state's layout.

  Feature-major: states [H, B], w = w_h^T [4H, H]. Batch-major: states [B, H], w = w_h [H, 4H].
  """
  if feature_major:
    z = gx_t.T + jnp.dot(w, h.astype(w.dtype), preferred_element_type=jnp.float32)
  else:
    z = gx_t + jnp.dot(h.astype(w.dtype), w, preferred_element_type=jnp.float32)
  return lstm_cell.gates(z, s, c, axis=0 if feature_major else -1)


def _forward(gx, w_h, c0, h0, options: LoopOptions, save: bool):
  """The forward loop: (hs, or with `save` (hs, gate activations, previous cell states)), cT, hT
  and cT in the loop's layout."""
  feature_major = options.feature_major
  s = lstm_cell.gate_scale(h0.shape[-1], feature_major)
  w, layout = (w_h.T, jnp.transpose) if feature_major else (w_h, lambda x: x)
  t_dtype = jnp.dtype(options.saved_gates)

  def step(carry, gx_t):
    c_prev, h = carry
    c, h, t = _cell(w, s, c_prev, h, gx_t, feature_major)
    return (c, h), (layout(h), t.astype(t_dtype), c_prev) if save else layout(h)

  (c, h), out = lstm_cell.loop(step, (layout(c0), layout(h0)), gx, len(gx), options.unroll,
                               options)
  return out, layout(c), layout(h), c


def _check_native(gx, w_h, options: LoopOptions) -> bool:
  if options.native and not gx.dtype == w_h.dtype == jnp.float32:
    raise ValueError('the native CPU loops take float32 gate inputs and weights, got '
                     f'{gx.dtype} and {w_h.dtype}')
  return options.native


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm(gx, w_h, c0, h0, options: LoopOptions):
  """gx [T, B, 4H], w_h [H, 4H], c0 and h0 [B, H] float32 -> (hs [T, B, H], cT, hT), float32.

  gx is float32 or the matmul dtype (w_h's); its gradient comes back in its dtype, rounded
  inside the backward loop. The loops compute in float32 either way.
  """
  if _check_native(gx, w_h, options):
    return lstm_cpu.forward(gx, w_h, c0, h0)
  hs, c, h, _ = _forward(gx, w_h, c0, h0, options, save=False)
  return hs, c, h


def _lstm_fwd(gx, w_h, c0, h0, options):
  gx_like = jnp.zeros((0,), gx.dtype)  # Residuals are arrays: an empty one holds the dtype.
  if _check_native(gx, w_h, options):
    hs, c, h, ts, c_prevs = lstm_cpu.forward_saving(gx, w_h, c0, h0)
    return (hs, c, h), (hs, ts, c_prevs, c, w_h, h0, gx_like)
  (hs, ts, c_prevs), c, h, c_state = _forward(gx, w_h, c0, h0, options, save=True)
  return (hs, c, h), (hs, ts, c_prevs, c_state, w_h, h0, gx_like)


def _lstm_bwd(options, residuals, cotangents):
  hs, ts, c_prevs, c_last, w_h, h0, gx_like = residuals
  dhs, dc_last, dh_last = cotangents
  loop_args = (dhs, ts, c_prevs, c_last, dc_last, dh_last, w_h)
  if options.native:
    dzs, dc0, dh0 = lstm_cpu.backward(*loop_args)
  else:
    dzs, dc0, dh0 = _xla_backward(*loop_args, options, gx_like.dtype)
  h_prev = jnp.concatenate([h0[None], hs[:-1]])
  return dzs, lstm_cell.weight_grad(h_prev, dzs, w_h.dtype), dc0, dh0


def _xla_backward(dhs, ts, c_prevs, c_last, dc_last, dh_last, w_h, options, dz_dtype):
  """The backward loop of XLA's steps: (dzs in `dz_dtype`, dc0, dh0)."""
  feature_major = options.feature_major
  s = lstm_cell.gate_scale(w_h.shape[0], feature_major)
  axis = 0 if feature_major else -1
  layout = jnp.transpose if feature_major else lambda x: x

  def step(carry, xs):
    dh, dc, c = carry  # c is this step's cell state; the loop reads the previous one.
    dh_out, t, c_prev = xs
    dz, dc = lstm_cell.gates_grad(t.astype(jnp.float32), s, c, c_prev, dh + layout(dh_out), dc,
                                  axis)
    if feature_major:
      dh = jnp.dot(w_h, dz.astype(w_h.dtype), preferred_element_type=jnp.float32)
    else:
      dh = jnp.dot(dz.astype(w_h.dtype), w_h.T, preferred_element_type=jnp.float32)
    return (dh, dc, c_prev), layout(dz).astype(dz_dtype)

  (dh0, dc0, _), dzs = lstm_cell.loop(step, (layout(dh_last), layout(dc_last), c_last),
                                      (dhs, ts, c_prevs), len(dhs), options.unroll_backward,
                                      options, reverse=True)
  return dzs, layout(dc0), layout(dh0)


lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_states_into(gx, w_h, c0, h0, options: LoopOptions, begin, into: dict):
  """`lstm`'s forward loop writing what every step computed into the arrays of `into`, to look
  inside (charlm.internals).

  into: {kind: array [B, P, H] float32} for kinds among 'h', 'c' (each step's new cell state)
  and the gates 'i', 'f', 'g', 'o' after their sigmoid or tanh. Step t goes to [:, begin + t].
  Returns (hs, cT, hT, {kind: array written}). The native loops write the arrays as they go
  (in place where the caller's jit donates them); XLA's keep what the forward pass saves for
  the backward one (in float32 whatever options.saved_gates says) and write it after. No
  gradient.
  """
  if _check_native(gx, w_h, options):
    empty, kinds = jnp.zeros((0,), jnp.float32), lstm_cpu.INTO_KINDS
    hs, c, h, written = lstm_cpu.forward_into(gx, w_h, c0, h0, begin,
                                              [into.get(kind, empty) for kind in kinds])
    return hs, c, h, {kind: a for kind, a in zip(kinds, written, strict=True) if kind in into}
  options = dataclasses.replace(options, saved_gates='float32')
  (hs, ts, c_prevs), c, h, _ = _forward(gx, w_h, c0, h0, options, save=True)
  if options.feature_major:  # Saved in the loop's layout, [T, 4H, B] and [T, H, B].
    ts, c_prevs = jnp.swapaxes(ts, 1, 2), jnp.swapaxes(c_prevs, 1, 2)
  i, f, g, o = lstm_cell.gate_values(ts, lstm_cell.gate_scale(h0.shape[-1], False), axis=-1)
  states = {'h': hs, 'c': jnp.concatenate([c_prevs[1:], c[None]]), 'i': i, 'f': f, 'g': g,
            'o': o}
  return hs, c, h, {kind: lstm_cell.write_steps(a, states[kind], begin)
                    for kind, a in into.items()}
