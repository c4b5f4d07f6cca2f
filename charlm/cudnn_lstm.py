"""One LSTM layer through cuDNN (`jax.experimental.rnn.lstm`), the kernel torch.nn.LSTM uses.

NVIDIA GPUs only (model.impl='cudnn'). cuDNN takes the layer's inputs, not their projection: it
computes x W_ih^T + b_ih + h W_hh^T + b_hh itself, with its own backward pass (a custom_vjp
that keeps cuDNN's reserve space from the forward pass). charlm's parameters (the Dense
'input' kernel [in, 4H] and bias [4H], the 'recurrent' kernel [H, 4H]; gates i, f, g, o, as
cuDNN's) are packed into cuDNN's flat weight vector on every call, so checkpoints stay the
same across impls, and the packing's gradient takes cuDNN's weight gradient back to them.

jax.experimental.rnn supports float32 alone (its lowering rejects other dtypes, and a
bfloat16 matmul precision raises), so this layer runs in float32 whatever model.dtype is.
Under the default matmul precision cuDNN may use TF32, as XLA's matmuls do on the same GPU.
"""
import jax.numpy as jnp
from jax.experimental import rnn
from jax.experimental.layout import Layout, with_layout_constraint


def pack(w_x, b, w_h):
  """charlm's w_x [in, 4H], b [4H], w_h [H, 4H] -> cuDNN's flat weights for one layer.

  The layout (`rnn.unpack_lstm_weights` reads it back): W_ih [4H, in], W_hh [4H, H], b_ih
  [4H], b_hh [4H], each row-major, concatenated. b_hh is zero: charlm has one bias.
  """
  return jnp.concatenate([w_x.T.ravel(), w_h.T.ravel(), b, jnp.zeros_like(b)])


def row_major(x):
  """Pins x to the plain row-major layout in memory.

  rnn.lstm's custom calls state no operand or result layouts, so XLA may lay an array out
  otherwise, a transpose then becoming a layout change that cuDNN never sees: the time-major
  sequences would reach it as if batch-major (jax issue #19177). With the layouts pinned,
  XLA transposes for real, in the forward pass and, through the constraint's transpose, in the
  backward pass.
  """
  return with_layout_constraint(x, Layout(tuple(range(x.ndim))))


def lstm(xs, w_x, b, w_h, c0, h0):
  """xs [T, B, in] float32, the parameters as in `pack`, c0 and h0 [B, H] -> (hs [T, B, H], cT, hT).

  The same as `lstm_kernel.lstm(xs @ w_x + b, w_h, c0, h0)`, up to float rounding.
  """
  steps, batch, inputs = xs.shape
  hidden = w_h.shape[0]
  ys, h_n, c_n = map(row_major, rnn.lstm(
      row_major(jnp.swapaxes(xs, 0, 1)), row_major(h0[None]), row_major(c0[None]),
      pack(w_x, b, w_h), jnp.full((batch,), steps, jnp.int32),  # All full length: no padding.
      input_size=inputs, hidden_size=hidden, num_layers=1, dropout=0.0, bidirectional=False))
  return jnp.swapaxes(ys, 0, 1), c_n[0], h_n[0]
