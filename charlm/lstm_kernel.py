"""The LSTM recurrence with a hand-written backward pass, for fast training.

`lstm(gx, w_h, c0, h0)` runs the recurrence over time-major gate inputs gx [T, B, 4H] (the
input projection of every timestep, computed before as one large matmul) and returns the
hidden states hs [T, B, H] and the final (c, h), each [B, H]. Gates are ordered i, f, g, o, as
in `model.lstm_step`, and the result equals it up to float rounding.

Why not autodiff through `lax.scan`: its backward loop accumulates the recurrent weight
gradient with a small matmul per step and carries it, and it saves more than it needs. Here
the forward loop saves the gate activations and the previous cell state; the backward loop
carries only (dh, dc) and emits the gate gradients dz of every step; the weight gradient is
then one large matmul over all timesteps, h_prev^T dz, and dz itself is the gradient of gx,
so the input projection's gradients are large matmuls too.

On a CPU, float32 loops run as native code (`lstm_cpu`: lstm_cpu.cc through XLA's FFI, built
on first use). One call runs a layer's whole loop: the recurrent weights are packed once, each
step's product and gate arithmetic run back to back on data in cache, and the batch rows are
split over the cores. XLA's loop instead pays a few microseconds for each of about a dozen
operations per step, and its product repacks an operand every step. Train step on 2 cores,
batch 32 x 64 (`experiments/bench_train.py`, alternating in one session): 2x128 73.5k chars/s
with XLA's loops on two CPU devices -> 84-91k native on one, 2x256 24.3k -> 28.6-29.0k. Where
the native code cannot be built (no C++ compiler), and for bfloat16 weights, the XLA loops
below run; `NATIVE_CPU = False` chooses them too.

In XLA's loops on a CPU the state is feature-major, [H, B]: each step multiplies the weights
from the left, W_h^T [4H, H] @ h [H, B]. A CPU matmul library packs its right-hand operand, and
h @ W_h repacks the whole weight matrix every step; this way it packs only the small state,
which made the steps up to 1.5x faster at H = 512 on a 2-core CPU. The sequences outside the
loops stay batch-major ([T, B, ...]), so that the large matmuls are plain row-major products.

XLA's forward loops on a CPU are unrolled twice (`unroll=2`): train step, alternating in one
session, 2x256 (batch 32 x 64) 20.3k -> 21.9k chars/s, +1% at 2x128, 2x512 and 3x512 (50 x 50).
Unrolling the backward loop too added 2% at 2x256 but cost 2-4% at the other sizes, and 4 lost
at all.

On a GPU the state is batch-major, [B, H] (h @ W_h, no transposes), and both loops are unrolled
about 8 times (`unroll_for`: 10 for 100 steps), so that XLA's per-iteration cost of a GPU while
loop comes once per 8-10 steps. 3x512
train step, bfloat16, on an H200 (`experiments/bench_lstm_loops.py`, alternating in one
process): batch 512 x 100 2.79M chars/s feature-major unroll 2, 2.79M batch-major unroll 2,
2.97M unroll 4, 3.11M unroll 8; batch 64 x 100 0.67M -> 0.91M (unroll 8).

One loop over all layers (a wavefront: layer l at step t - l) is model.impl='wavefront'
(`lstm_wavefront`), for GPUs. On a CPU it loses: it moves every upper layer's input projection
from one large product into the per-step products, which run at a third to half the large
ones' rate there. A prototype, forward and backward of the layer stack at batch 16 x 64 on 2
cores: 2x128 20.4 ms against 17.7 layer by layer, 2x256 55 against 45; the train step against
the native loops: 0.55-0.64x.

The gates use tanh alone: sigmoid(x) = (1 + tanh(x / 2)) / 2, so one tanh over all 4H rows
replaces three sigmoids (exp and divide, slower on a CPU) and a tanh.

`project(x, w)` is x @ w whose weight gradient x^T dy multiplies an explicitly transposed copy
of x on a CPU: XLA:CPU's product with a transposed left operand ran at 129 GFLOP/s against
166-177 for a copy plus a plain product (2500 x 512 by 2500 x 2048, 2 cores), and every weight
gradient of the model is such a product. The LSTM layers' input projections (impl='fused') and
the output layer go through it; the recurrent weight gradient below does the same. Train step,
alternating in one process: 2x512 (batch 32 x 64) 5.96k -> 7.03k chars/s, 3x512 (50 x 50)
3.76k -> 4.13k, 2x256 19.1k -> 20.1k; no change at 2x128.
"""
import jax
import jax.numpy as jnp

from charlm import lstm_cpu


def _features_first(x):
  """x [..., in] as [in, ...], for a weight gradient's left operand; on a CPU, a copy."""
  x = jnp.moveaxis(x, -1, 0)
  if jax.default_backend() != 'cpu':
    return x
  return jax.lax.optimization_barrier(x)  # Keeps XLA from folding the transpose into the dot.


@jax.custom_vjp
def project(x, w):
  """x [..., in] @ w [in, out], with the weight gradient as a plain product (see above)."""
  return x @ w


def _project_fwd(x, w):
  return x @ w, (x, w)


def _weight_grad(x, dy, dtype):
  """x^T dy over all leading axes, x [..., in] and dy [..., out] -> [in, out] in `dtype`.

  The leading axes are contracted as they are, not flattened first: with the batch axis split
  over devices, a flattened [time * batch] axis has no sharding, and XLA would gather the whole
  batch onto every device to compute the product there.
  """
  lead = tuple(range(x.ndim - 1))
  x, dy = _features_first(x.astype(dtype)), dy.astype(dtype)
  return jax.lax.dot_general(x, dy, ((tuple(a + 1 for a in lead), lead), ((), ())),
                             preferred_element_type=jnp.float32).astype(dtype)


def _project_bwd(residuals, dy):
  x, w = residuals
  return dy @ w.T, _weight_grad(x, dy, w.dtype)


project.defvjp(_project_fwd, _project_bwd)


# How the loops run: (state feature-major, forward unroll, backward unroll), on CPUs and on
# everything else (GPUs; TPUs untried); see the module docstring.
CPU_LOOPS = (True, 2, 1)
GPU_LOOPS = (False, 8, 8)


def _loops():
  return CPU_LOOPS if jax.default_backend() == 'cpu' else GPU_LOOPS


UNROLL_DIVIDES = True  # Round each unroll to a divisor of the loop's length (`unroll_for`).
# With bfloat16 weights, save the gate activations t = tanh(s z) [T, B, 4H] for the backward
# loop in float16 instead of float32: True, False, or None (the default): on GPUs only. They lie
# in [-1, 1], where float16 keeps 11 significant bits (bfloat16 8, too few for the 1 - t^2 of
# saturated gates), and they are the loops' largest saved sequence; the gradients stay within
# bfloat16 rounding of those with float32 ones (tests/test_model.py). On an H200, 3x512 at batch
# 512 x 100 with bfloat16 gate inputs: train step 1.02x (9 of 9 rounds faster), 2696 -> 2096 MB
# (experiments/results/bench_train_gpu_512.json); alone 1.04x. On a 2-core CPU: 2x256 (32 x 64)
# 1.00x, 45 -> 41 MB a step (experiments/bench_lstm_loops.py +f16t); validation loss after 500
# steps of configs/tinyshakespeare.py:small 1.7211 nats, as without (float32: 1.7218).
SAVED_GATES_FLOAT16 = None


def on_gpu(setting) -> bool:
  """The value of a setting that is True, False, or None for 'on GPUs only'."""
  return jax.default_backend() == 'gpu' if setting is None else bool(setting)


def saved_gates_dtype(w_dtype):
  """The dtype in which the forward loop saves the gate activations, for weights of `w_dtype`."""
  narrow = on_gpu(SAVED_GATES_FLOAT16) and jnp.dtype(w_dtype) == jnp.bfloat16
  return jnp.dtype(jnp.float16 if narrow else jnp.float32)


def unroll_for(length: int, unroll: int) -> int:
  """The unroll for a loop of `length` steps: the divisor of `length` nearest `unroll` within
  [unroll / 2, 2 unroll] (the larger on a tie), else `unroll` itself.

  lax.scan runs a length that its unroll does not divide as a loop plus a remainder, and copies
  every input and output sequence to split and join them. On an H200 at 3x512, batch 512 x 100
  in bfloat16 with unroll 8, the slices of [96, 512, ...] arrays alone took 1.2 ms of an 18.3 ms
  train step (`experiments/profile_step.py`).
  """
  if not UNROLL_DIVIDES or unroll <= 1 or length % unroll == 0:
    return unroll
  if unroll >= length:
    return length
  near = [d for d in range(max(2, -(-unroll // 2)), 2 * unroll + 1) if length % d == 0]
  return min(near, key=lambda d: (abs(d - unroll), -d)) if near else unroll


NATIVE_CPU = True  # On a CPU, run float32 loops as native code (lstm_cpu) where it is built.


def native_loops(dtype, backend=None) -> bool:
  """Whether gate inputs and recurrent weights of `dtype` run the native CPU loops on `backend`
  (default: JAX's, which this then starts): float32 only."""
  return (NATIVE_CPU and (backend or jax.default_backend()) == 'cpu'
          and jnp.dtype(dtype) == jnp.float32 and lstm_cpu.available())


def _native(gx, w_h) -> bool:
  return gx.dtype == jnp.float32 and native_loops(w_h.dtype)


def _scale(hidden: int, feature_major: bool):
  """Per gate row: 1/2 for the sigmoid gates i, f, o and 1 for the tanh gate g (float32)."""
  s = jnp.repeat(jnp.asarray([0.5, 0.5, 1.0, 0.5], jnp.float32), hidden)
  return s[:, None] if feature_major else s


def _gates(z, s, c, axis):
  """The gate arithmetic of one step from the gate inputs z: the new (c, h) and t = tanh(s * z);
  the gates lie along `axis` (0 feature-major, -1 batch-major)."""
  t = jnp.tanh(z * s)
  i, f, g, o = jnp.split(t * s + (1 - s), 4, axis=axis)
  c = f * c + i * g
  return c, o * jnp.tanh(c), t


def _gates_grad(t, s, c, c_prev, dh, dc, axis):
  """`_gates` backward from the saved t, this step's c and the previous c_prev: the gradient dz
  of the gate inputs and the gradient that reaches c_prev, given those (dh, dc) of h and c."""
  i, f, g, o = jnp.split(t * s + (1 - s), 4, axis=axis)
  tc = jnp.tanh(c)
  dc = dc + dh * o * (1 - tc * tc)
  da = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tc], axis=axis)
  return da * (s * s) * (1 - t * t), dc * f  # d/dz of (tanh(s z) s + 1 - s).


def _cell(w, s, c, h, gx_t, feature_major):
  """One step; returns the new (c, h) and t = tanh(s * z), all in the state's layout.

  Feature-major: states [H, B], w = w_h^T [4H, H]. Batch-major: states [B, H], w = w_h [H, 4H].
  """
  if feature_major:
    z = gx_t.T + jnp.dot(w, h.astype(w.dtype), preferred_element_type=jnp.float32)
  else:
    z = gx_t + jnp.dot(h.astype(w.dtype), w, preferred_element_type=jnp.float32)
  return _gates(z, s, c, axis=0 if feature_major else -1)


def _forward(gx, w_h, c0, h0, save):
  """The forward loop: (hs, or with `save` (hs, gate activations, previous cell states)), cT, hT
  and cT in the loop's layout."""
  feature_major, unroll, _ = _loops()
  s = _scale(h0.shape[-1], feature_major)
  w, layout = (w_h.T, jnp.transpose) if feature_major else (w_h, lambda x: x)
  cell = lambda c, h, gx_t: _cell(w, s, c, h, gx_t, feature_major)
  t_dtype = saved_gates_dtype(w_h.dtype)

  def step(carry, gx_t):
    c_prev, h = carry
    c, h, t = cell(c_prev, h, gx_t)
    return (c, h), (layout(h), t.astype(t_dtype), c_prev) if save else layout(h)

  (c, h), out = jax.lax.scan(step, (layout(c0), layout(h0)), gx,
                             unroll=unroll_for(len(gx), unroll))
  return out, layout(c), layout(h), c


@jax.custom_vjp
def lstm(gx, w_h, c0, h0):
  """gx [T, B, 4H], w_h [H, 4H], c0 and h0 [B, H] float32 -> (hs [T, B, H], cT, hT), float32.

  gx is float32 or the matmul dtype (w_h's); its gradient comes back in its dtype, rounded
  inside the backward loop. The loops compute in float32 either way.
  """
  if _native(gx, w_h):
    return lstm_cpu.forward(gx, w_h, c0, h0)
  hs, c, h, _ = _forward(gx, w_h, c0, h0, save=False)
  return hs, c, h


def _lstm_fwd(gx, w_h, c0, h0):
  gx_like = jnp.zeros((0,), gx.dtype)  # Residuals are arrays: an empty one holds the dtype.
  if _native(gx, w_h):
    hs, c, h, ts, c_prevs = lstm_cpu.forward_saving(gx, w_h, c0, h0)
    return (hs, c, h), (hs, ts, c_prevs, c, w_h, h0, gx_like)
  (hs, ts, c_prevs), c, h, c_state = _forward(gx, w_h, c0, h0, save=True)
  return (hs, c, h), (hs, ts, c_prevs, c_state, w_h, h0, gx_like)


def _lstm_bwd(residuals, cotangents):
  hs, ts, c_prevs, c_last, w_h, h0, gx_like = residuals
  dhs, dc_last, dh_last = cotangents
  loop_args = (dhs, ts, c_prevs, c_last, dc_last, dh_last, w_h)
  if _native(gx_like, w_h):
    dzs, dc0, dh0 = lstm_cpu.backward(*loop_args)
  else:
    feature_major, _, unroll = _loops()
    dzs, dc0, dh0 = _xla_backward(*loop_args, feature_major, unroll, gx_like.dtype)
  h_prev = jnp.concatenate([h0[None], hs[:-1]])
  return dzs, _weight_grad(h_prev, dzs, w_h.dtype), dc0, dh0


def _xla_backward(dhs, ts, c_prevs, c_last, dc_last, dh_last, w_h, feature_major, unroll,
                  dz_dtype):
  """The backward loop of XLA's steps: (dzs in `dz_dtype`, dc0, dh0)."""
  s = _scale(w_h.shape[0], feature_major)
  axis = 0 if feature_major else -1
  layout = jnp.transpose if feature_major else lambda x: x

  def step(carry, xs):
    dh, dc, c = carry  # c is this step's cell state; the loop reads the previous one.
    dh_out, t, c_prev = xs
    dz, dc = _gates_grad(t.astype(jnp.float32), s, c, c_prev, dh + layout(dh_out), dc, axis)
    if feature_major:
      dh = jnp.dot(w_h, dz.astype(w_h.dtype), preferred_element_type=jnp.float32)
    else:
      dh = jnp.dot(dz.astype(w_h.dtype), w_h.T, preferred_element_type=jnp.float32)
    return (dh, dc, c_prev), layout(dz).astype(dz_dtype)

  (dh0, dc0, _), dzs = jax.lax.scan(step, (layout(dh_last), layout(dc_last), c_last),
                                     (dhs, ts, c_prevs), reverse=True,
                                     unroll=unroll_for(len(dhs), unroll))
  return dzs, layout(dc0), layout(dh0)


lstm.defvjp(_lstm_fwd, _lstm_bwd)
