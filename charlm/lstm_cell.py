"""The LSTM cell, once: its gate arithmetic and gradient, the weight-gradient product, the loops.

Gates are ordered i, f, g, o. `step_states` is the cell as textbooks write it (a sigmoid per
gate), returning the gates too and able to hold cells (charlm.clamp); `step` is it without them.
impl='scan' (autodiff through lax.scan, the reference) and sampling run it. The fast loops
(`lstm_kernel` layer by layer, `lstm_wavefront` all layers at once) share `gates` and
`gates_grad`, the same function written with one tanh over all 4H rows:
sigmoid(x) = (1 + tanh(x / 2)) / 2. The native CPU loops (`lstm_cpu.cc`) are the one other
implementation, tested against these. `LoopOptions` says how the loops run; `model.resolve`
makes it once from config.model. Measurements behind the choices: docs/speed.md.
"""
import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """How the LSTM loops run; hashable, so that jit traces anew when it changes.

  native: the native CPU loops (lstm_cpu; float32 only). feature_major: XLA's loops keep the
  state as [H, B] (the weights multiply from the left, so a CPU matmul packs only the small
  state) instead of [B, H]. unroll, unroll_backward: lax.scan's unroll of the forward and
  backward loops. unroll_divides: round each unroll to a divisor of the loop's length
  (`unroll_for`). saved_gates: the dtype in which the forward loop saves the gate activations
  for the backward loop ('float32' or 'float16').
  """
  native: bool = False
  feature_major: bool = False
  unroll: int = 1
  unroll_backward: int = 1
  unroll_divides: bool = True
  saved_gates: str = 'float32'


def step_states(w_h, carry, gx, hold=None):
  """One LSTM step as textbooks write it, with what it computed: carry (c, h) [B, H], gx [B, 4H]
  -> ((c, h), {'h', 'c', 'i', 'f', 'g', 'o'}), the gates after their sigmoid or tanh.

  `hold(kind, x)`, if given, replaces the new c before h is computed from it and then the new h
  (charlm.clamp), so that a held c reaches h in the same step.
  """
  c, h = carry
  zi, zf, zg, zo = jnp.split(gx + h @ w_h, 4, axis=-1)
  i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
  c = f * c + i * g
  if hold:
    c = hold('c', c)
  h = o * jnp.tanh(c)
  if hold:
    h = hold('h', h)
  return (c, h), {'h': h, 'c': c, 'i': i, 'f': f, 'g': g, 'o': o}


def step(w_h, carry, gx):
  """One LSTM step as textbooks write it: carry (c, h) [B, H], gx [B, 4H] -> ((c, h), h)."""
  carry, states = step_states(w_h, carry, gx)
  return carry, states['h']


def write_steps(array, values, begin):
  """array [B, P, H] with values [T, B, H] (time-major) written at steps begin .. begin + T - 1:
  in place where the caller's jit donates the array."""
  update = jnp.swapaxes(values, 0, 1).astype(array.dtype)
  return jax.lax.dynamic_update_slice(array, update, (0, begin, 0))


def gate_scale(hidden: int, feature_major: bool):
  """Per gate row: 1/2 for the sigmoid gates i, f, o and 1 for the tanh gate g (float32)."""
  s = jnp.repeat(jnp.asarray([0.5, 0.5, 1.0, 0.5], jnp.float32), hidden)
  return s[:, None] if feature_major else s


def gate_values(t, s, axis):
  """The gates (i, f, g, o) from t = tanh(s * z), as `gates` computes them."""
  return jnp.split(t * s + (1 - s), 4, axis=axis)


def gates(z, s, c, axis):
  """The gate arithmetic of one step from the gate inputs z: the new (c, h) and t = tanh(s * z);
  the gates lie along `axis` (0 feature-major, -1 batch-major), s is `gate_scale`."""
  t = jnp.tanh(z * s)
  i, f, g, o = gate_values(t, s, axis)
  c = f * c + i * g
  return c, o * jnp.tanh(c), t


def gates_grad(t, s, c, c_prev, dh, dc, axis):
  """`gates` backward from the saved t, this step's c and the previous c_prev: the gradient dz
  of the gate inputs and the gradient that reaches c_prev, given those (dh, dc) of h and c."""
  i, f, g, o = gate_values(t, s, axis)
  tc = jnp.tanh(c)
  dc = dc + dh * o * (1 - tc * tc)
  da = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tc], axis=axis)
  return da * (s * s) * (1 - t * t), dc * f  # d/dz of (tanh(s z) s + 1 - s).


def unroll_for(length: int, unroll: int, divides: bool = True) -> int:
  """The unroll for a loop of `length` steps. With `divides`: the divisor of `length` nearest
  `unroll` within [unroll / 2, 2 unroll] (the larger on a tie), else `unroll` itself.

  lax.scan runs a length that its unroll does not divide as a loop plus a remainder, and copies
  every input and output sequence to split and join them.
  """
  if not divides or unroll <= 1 or length % unroll == 0:
    return unroll
  if unroll >= length:
    return length
  near = [d for d in range(max(2, -(-unroll // 2)), 2 * unroll + 1) if length % d == 0]
  return min(near, key=lambda d: (abs(d - unroll), -d)) if near else unroll


def loop(body, carry, xs, length: int, unroll: int, options: LoopOptions, reverse=False):
  """lax.scan over `length` steps with `unroll` rounded as `options` says."""
  return jax.lax.scan(body, carry, xs, length=length, reverse=reverse,
                      unroll=unroll_for(length, unroll, options.unroll_divides))


def _features_first(x):
  """x [..., in] as [in, ...], for a weight gradient's left operand; on a CPU, a copy."""
  x = jnp.moveaxis(x, -1, 0)
  if jax.default_backend() != 'cpu':
    return x
  return jax.lax.optimization_barrier(x)  # Keeps XLA from folding the transpose into the dot.


def weight_grad(x, dy, dtype):
  """x^T dy over all leading axes, x [..., in] and dy [..., out] -> [in, out] in `dtype`.

  On a CPU the left operand is an explicitly transposed copy: XLA:CPU's product with a
  transposed left operand is slower than a copy plus a plain product. The leading axes are
  contracted as they are, not flattened first: with the batch axis split over devices, a
  flattened [time * batch] axis has no sharding, and XLA would gather the whole batch onto
  every device to compute the product there.
  """
  lead = tuple(range(x.ndim - 1))
  x, dy = _features_first(x.astype(dtype)), dy.astype(dtype)
  return jax.lax.dot_general(x, dy, ((tuple(a + 1 for a in lead), lead), ((), ())),
                             preferred_element_type=jnp.float32).astype(dtype)


@jax.custom_vjp
def project(x, w):
  """x [..., in] @ w [in, out], with the weight gradient through `weight_grad`."""
  return x @ w


def _project_fwd(x, w):
  return x @ w, (x, w)


def _project_bwd(residuals, dy):
  x, w = residuals
  return dy @ w.T, weight_grad(x, dy, w.dtype)


project.defvjp(_project_fwd, _project_bwd)
