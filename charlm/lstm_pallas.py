"""One batch-major LSTM step, forward (`cell`) and backward (`cell_grad`), each as a single
Pallas kernel, for GPUs (Triton); opt-in through `lstm_kernel.PALLAS_CELL`, a candidate to time
against XLA's steps.

XLA runs a step of `lstm_kernel._cell` as a gemm h @ W_h and then two or three elementwise
fusions for the gate arithmetic; at 3x512, batch 512 in bfloat16 on an H200 the gemm took
~7 us and each fusion ~5 us. Here one kernel does both: each program takes a block of batch
rows and of hidden units j, multiplies the rows' h by the columns of all four gates of those
units (W_h [H, 4H] viewed as [H, 4, H], so that one block holds them), accumulating over H in
chunks, and applies the gate arithmetic to the product before it leaves the registers.

The backward step is the same shape turned around: a step of XLA's backward loop (~20 us
there) is the gemm dz @ W_h^T (~5 us) and ~3 elementwise kernels (~14 us). `cell_grad` takes
the gate gradients dz of the next (later) step, so the product comes first: each program
computes dh of its rows and units j from W_h's rows j (all 4H columns), adds the gradient from
the layer's output and applies `lstm_kernel._gates_grad` to it, writing this step's dz and the
gradient that reaches the previous cell state.

On a CPU (the tests) the kernels run in Pallas' interpret mode.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Largest blocks, for H100/H200: at batch 512 x 512 hidden, 8 x 16 = 128 programs for 132 SMs.
BLOCK_B = 64  # Batch rows per program.
BLOCK_H = 32  # Hidden units per program, each with its four gates.
BLOCK_K = 64  # The product's chunk of the contracted axis (H).
MIN_BLOCK = 16  # Triton's least product dimension.
PROGRAMS = 128  # Smaller batches get smaller blocks (rows first) until this many programs.
NUM_WARPS = 4
NUM_STAGES = 3


def _fit(n: int, largest: int) -> int:
  """The largest power of two up to `largest` that divides n (MIN_BLOCK if none does)."""
  while largest > MIN_BLOCK and n % largest:
    largest //= 2
  return largest


def _blocks(batch: int, hidden: int) -> tuple:
  bm, bh = _fit(batch, BLOCK_B), _fit(hidden, BLOCK_H)
  while (batch // bm) * (hidden // bh) < PROGRAMS and bm > MIN_BLOCK:
    bm //= 2
  while (batch // bm) * (hidden // bh) < PROGRAMS and bh > MIN_BLOCK:
    bh //= 2
  return bm, bh, _fit(hidden, BLOCK_K)


def supported(batch: int, hidden: int) -> bool:
  """Whether `cell` and `cell_grad` run states [batch, hidden]: blocks that divide them, powers
  of two (as Triton's arrays must be) and at least 16 (the minimum of its products)."""
  return all(b >= MIN_BLOCK and b & (b - 1) == 0 and n % b == 0
             for b, n in zip(_blocks(batch, hidden), (batch, hidden, hidden), strict=True))


def _interpret() -> bool:
  return jax.default_backend() == 'cpu'


def _call(kernel, name, batch, hidden, in_specs, out_specs, out_shape):
  """pallas_call of `kernel` over the (batch blocks, hidden-unit blocks) grid of `_blocks`;
  `in_specs` and `out_specs` map (bm, bh) to the operands' BlockSpecs."""
  bm, bh, bk = _blocks(batch, hidden)
  return pl.pallas_call(
      functools.partial(kernel, block_k=bk), out_shape=out_shape,
      grid=(batch // bm, hidden // bh), in_specs=in_specs(bm, bh), out_specs=out_specs(bm, bh),
      interpret=_interpret(),
      compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
      name=name)


def _gates_spec(bm, bh):
  """A block of all four gates of some units, in a [B, 4, H] view of [B, 4H]."""
  return pl.BlockSpec((bm, 4, bh), lambda i, j: (i, 0, j))


def _state_spec(bm, bh):
  return pl.BlockSpec((bm, bh), lambda i, j: (i, j))


def _kernel(gx_ref, w_ref, c_ref, h_ref, c_out, h_out, t_out, *, block_k):
  rows, hidden = h_ref.shape
  units = c_ref.shape[1]

  def chunk(k, acc):
    ks = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
    h = h_ref[:, ks].astype(w_ref.dtype)
    return tuple(a + jnp.dot(h, w_ref[ks, g, :], preferred_element_type=jnp.float32)
                 for g, a in enumerate(acc))

  zeros = jnp.zeros((rows, units), jnp.float32)
  acc = jax.lax.fori_loop(0, hidden // block_k, chunk, (zeros,) * 4)
  # As lstm_kernel._gates: t = tanh(s z), gate = s t + 1 - s, s = 1/2 but for g (s = 1).
  t = [jnp.tanh((gx_ref[:, g, :].astype(jnp.float32) + a) * (1.0 if g == 2 else 0.5))
       for g, a in enumerate(acc)]
  i, f, o = (x * 0.5 + 0.5 for x in (t[0], t[1], t[3]))
  c = f * c_ref[...] + i * t[2]
  c_out[...] = c
  h_out[...] = o * jnp.tanh(c)
  for g in range(4):
    t_out[:, g, :] = t[g].astype(t_out.dtype)


def cell(w, c, h, gx_t, t_dtype=jnp.float32):
  """`lstm_kernel._cell` batch-major: w = w_h [H, 4H] (float32 or bfloat16), c and h [B, H]
  float32, gx_t [B, 4H] float32 or bfloat16 -> the new (c, h), float32, and t = tanh(s z)
  [B, 4H] in `t_dtype`."""
  (batch, hidden), dtype = c.shape, c.dtype
  c, h, t = _call(
      _kernel, 'lstm_cell', batch, hidden,
      lambda bm, bh: [_gates_spec(bm, bh), pl.BlockSpec((hidden, 4, bh), lambda i, j: (0, 0, j)),
                      _state_spec(bm, bh), pl.BlockSpec((bm, hidden), lambda i, j: (i, 0))],
      lambda bm, bh: [_state_spec(bm, bh)] * 2 + [_gates_spec(bm, bh)],
      (jax.ShapeDtypeStruct((batch, hidden), dtype),) * 2
      + (jax.ShapeDtypeStruct((batch, 4, hidden), t_dtype),),
  )(gx_t.reshape(batch, 4, hidden), w.reshape(hidden, 4, hidden), c, h)
  return c, h, t.reshape(batch, 4 * hidden)


def _grad_kernel(dz_ref, w_ref, dh_ref, t_ref, c_ref, c_prev_ref, dc_ref, dz_out, dc_out, *,
                 block_k):
  rows, _, hidden = dz_ref.shape
  units = dh_ref.shape[1]
  contract_last = (((1,), (1,)), ((), ()))  # dz [rows, k] by w [units, k]: dz @ w^T.

  def chunk(k, acc):
    ks = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
    for g in range(4):
      acc += jax.lax.dot_general(dz_ref[:, g, ks].astype(w_ref.dtype), w_ref[:, g, ks],
                                 contract_last, preferred_element_type=jnp.float32)
    return acc

  acc = jax.lax.fori_loop(0, hidden // block_k, chunk, jnp.zeros((rows, units), jnp.float32))
  dh = dh_ref[...] + acc
  # As lstm_kernel._gates_grad, gate by gate: s = 1/2 but for g (s = 1).
  t = [t_ref[:, g, :].astype(jnp.float32) for g in range(4)]
  i, f, o = (x * 0.5 + 0.5 for x in (t[0], t[1], t[3]))
  c = c_ref[...]
  tc = jnp.tanh(c)
  dc = dc_ref[...] + dh * o * (1 - tc * tc)
  da = (dc * t[2], dc * c_prev_ref[...], dc * i, dh * tc)
  for g, a in enumerate(da):
    dz_out[:, g, :] = (a * (1.0 if g == 2 else 0.25) * (1 - t[g] * t[g])).astype(dz_out.dtype)
  dc_out[...] = dc * f


def cell_grad(w, dz_next, dh_out, t, c, c_prev, dc):
  """One step of `lstm_kernel._lstm_bwd` batch-major, the product first: w = w_h [H, 4H]
  (float32 or bfloat16); dz_next [B, 4H], the gate gradients of the next step (float32 or
  bfloat16); dh_out [B, H], the gradient of this step's h from the layer's output; t [B, 4H]
  (float32 or float16) and c [B, H] of this step, c_prev [B, H] of the previous one; dc [B, H],
  the gradient of c; but for t these float32. -> dz [B, 4H], this step's gate gradients in
  dz_next's dtype, and dc_prev [B, H] float32, the gradient of c_prev."""
  (batch, hidden), dtype = c.shape, c.dtype
  dz, dc = _call(
      _grad_kernel, 'lstm_cell_grad', batch, hidden,
      lambda bm, bh: [pl.BlockSpec((bm, 4, hidden), lambda i, j: (i, 0, 0)),
                      pl.BlockSpec((bh, 4, hidden), lambda i, j: (j, 0, 0)),
                      _state_spec(bm, bh), _gates_spec(bm, bh)] + [_state_spec(bm, bh)] * 3,
      lambda bm, bh: [_gates_spec(bm, bh), _state_spec(bm, bh)],
      (jax.ShapeDtypeStruct((batch, 4, hidden), dz_next.dtype),
       jax.ShapeDtypeStruct((batch, hidden), dtype)),
  )(dz_next.reshape(batch, 4, hidden), w.reshape(hidden, 4, hidden), dh_out,
    t.reshape(batch, 4, hidden), c, c_prev, dc)
  return dz.reshape(batch, 4 * hidden), dc
