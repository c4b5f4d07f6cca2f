"""The character-level recurrent network: embedding, stacked LSTM/GRU/RNN layers, softmax.

Inside, sequences are time-major ([T, B, ...]), the layout `lax.scan` loops over. Each layer
computes its input projection for all timesteps as one large matmul before the loop; for the
first layer that is a lookup in a [vocab, gates] table (the embedding times the input kernel,
computed once per call, when the vocabulary is smaller than the batch's characters). Inside
the loop only the recurrent matmul (all gates fused into one) and the gate arithmetic remain.
LSTM layers train through `lstm_kernel.lstm`, whose hand-written backward pass computes the
weight gradients as large matmuls over all timesteps (impl='fused'); impl='scan' is plain
autodiff through `lax.scan` (the reference). impl='cudnn' runs each LSTM layer through cuDNN
on an NVIDIA GPU (`cudnn_lstm`), which projects the inputs itself. impl='wavefront' runs all
LSTM layers in one loop (`lstm_wavefront`, for GPUs), with the same parameters and dropout
masks. impl='auto' (the default) picks 'wavefront' or 'fused', whichever measured faster for
the machine and size (`auto_impl`). The carry (hidden state) comes in and goes out, so it flows
across batches.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import logging
from flax import linen as nn

from charlm import cudnn_lstm, lstm_kernel, lstm_wavefront
from charlm.errors import UserError

CELLS = ('lstm', 'gru', 'rnn')
IMPLS = ('auto', 'fused', 'scan', 'cudnn', 'wavefront')
# impl='auto' picks the wavefront up to this per-device batch x hidden (see auto_impl).
WAVEFRONT_MAX_BATCH_HIDDEN = 64 * 1024
DTYPES = ('float32', 'bfloat16')
# Whether, with bfloat16 matmuls, the LSTM loops take their gate inputs gx [T, B, 4H] in
# bfloat16 and give their gradients back in it: True, False, or None (the default): on GPUs
# only. Either way gx holds bfloat16 values (the input projection's output), the loops compute
# in float32, and the gradients are rounded to bfloat16 before every product they feed, so
# bfloat16 only halves the memory traffic of the step's largest sequences. On an H200, 3x512,
# fused bfloat16 train step: 1.14x at batch 512 x 100 (experiments/bench_lstm_loops.py +bf16gx),
# 1.13x in another run (bench_train.py; 3751 -> 2696 MB a step). On a 2-core CPU it lost: 2x256,
# batch 32 x 64, 0.88x feature-major and 0.89x batch-major (45 -> 41 MB a step). Validation
# losses after 500 steps of configs/tinyshakespeare.py:small there: 1.7214 nats with it, 1.7211
# without, 1.7218 in float32.
GATE_INPUTS_BFLOAT16 = None


def loop_dtype(dtype: str):
  """The dtype of the gate inputs that the LSTM loops take, for matmuls in `dtype`."""
  return jnp.dtype(dtype) if lstm_kernel.on_gpu(GATE_INPUTS_BFLOAT16) else jnp.float32


def lstm_step(w_h, carry, gx):
  c, h = carry
  i, f, g, o = jnp.split(gx + h @ w_h, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (c, h), h


def gru_step(w_h, b_h, carry, gx):
  (h,) = carry
  xr, xz, xn = jnp.split(gx, 3, axis=-1)
  hr, hz, hn = jnp.split(h @ w_h + b_h, 3, axis=-1)
  r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
  h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
  return (h,), h


def rnn_step(w_h, carry, gx):
  (h,) = carry
  h = jnp.tanh(gx + h @ w_h)
  return (h,), h


def project_dot_general(x, w, dimension_numbers, precision=None):
  """nn.Dense's product through lstm_kernel.project (same result, faster weight gradient)."""
  del dimension_numbers, precision  # nn.Dense contracts x's last axis with w's first, as project.
  return lstm_kernel.project(x, w)


class DenseParams(nn.Module):
  """The parameters of nn.Dense(features), unapplied: same names, shapes and initializers."""
  features: int
  bias_init: Callable

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (in_features, self.features))
    return kernel, self.param('bias', self.bias_init, (self.features,))


def recurrent_bias_init(cell: str, hidden: int) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    del key
    if cell == 'lstm':  # Forget-gate bias 1, so that memory is kept early in training.
      return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)
    return jnp.zeros(shape, dtype)
  return init


class LstmParams(nn.Module):
  """An LSTM layer's parameters, unapplied, with Recurrent's names, shapes and initializers."""
  hidden: int

  @nn.compact
  def __call__(self, in_features: int):
    h = self.hidden
    kernel, bias = DenseParams(4 * h, recurrent_bias_init('lstm', h), name='input')(in_features)
    return kernel, bias, self.param('recurrent', nn.initializers.orthogonal(), (h, 4 * h))


class Recurrent(nn.Module):
  """One recurrent layer over a time-major [T, B, features] sequence.

  With `tokens` [T, B], `xs` is instead an embedding table [vocab, features]: the layer
  projects the table and looks each token's row up (impl='cudnn' looks up the rows instead).
  """
  cell: str
  hidden: int
  impl: str = 'fused'
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, carry, xs, tokens=None):
    gates = {'lstm': 4, 'gru': 3, 'rnn': 1}[self.cell]
    h = self.hidden
    bias_init = recurrent_bias_init(self.cell, h)
    if self.cell == 'lstm' and self.impl == 'cudnn':  # float32, whatever self.dtype (cudnn_lstm).
      if tokens is not None:  # cuDNN projects the inputs itself: look the embeddings up.
        xs = jnp.take(xs, tokens, axis=0, mode='clip')
      w_x, b = DenseParams(gates * h, bias_init, name='input')(xs.shape[-1])
      w_h = self.param('recurrent', nn.initializers.orthogonal(), (h, gates * h))
      hs, c, h_last = cudnn_lstm.lstm(xs, w_x, b, w_h, *carry)
      return (c, h_last), hs
    dot = project_dot_general if self.cell == 'lstm' and self.impl == 'fused' else None
    gx = nn.Dense(gates * h, bias_init=bias_init, dtype=self.dtype, dot_general=dot,
                  name='input')(xs)
    gx = gx.astype(jnp.float32)  # Then a lookup's gradient adds up rows in float32.
    if tokens is not None:
      gx = jnp.take(gx, tokens, axis=0, mode='clip')  # Ids are in range; 'fill' costs a select.
    w_h = self.param('recurrent', nn.initializers.orthogonal(), (h, gates * h))
    if self.cell == 'lstm' and self.impl == 'fused':
      hs, c, h_last = lstm_kernel.lstm(gx.astype(loop_dtype(self.dtype)),
                                       w_h.astype(self.dtype), *carry)
      return (c, h_last), hs
    if self.cell == 'lstm':
      step = lambda c, x: lstm_step(w_h, c, x)
    elif self.cell == 'gru':
      b_h = self.param('recurrent_bias', nn.initializers.zeros, (gates * h,))
      step = lambda c, x: gru_step(w_h, b_h, c, x)
    else:
      step = lambda c, x: rnn_step(w_h, c, x)
    return jax.lax.scan(step, carry, gx)


class CharRNN(nn.Module):
  """tokens [batch, time] and carry -> logits [batch, time, vocab] and the next carry."""
  vocab_size: int
  cell: str = 'lstm'
  num_layers: int = 2
  hidden: int = 128
  embed: int = 0
  dropout: float = 0.0
  impl: str = 'fused'
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, tokens, carry, train: bool = False):
    # Unit-variance embeddings (as torch.nn.Embedding, and char-rnn's one-hot inputs): the first
    # layer's inputs then are as large as the later layers', so it learns as fast.
    embed = nn.Embed(self.vocab_size, self.embed or self.hidden,
                     embedding_init=nn.initializers.normal(1.0), name='embed')
    tokens = tokens.T
    if self.impl == 'wavefront' and self.cell == 'lstm' and self.num_layers > 1:
      x, new_carry = self._wavefront(embed, tokens, carry, train)
    else:
      x, new_carry = self._layer_by_layer(embed, tokens, carry, train)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, dot_general=project_dot_general,
                      name='output')(x)
    return jnp.swapaxes(logits, 0, 1), tuple(new_carry)

  def _layer_by_layer(self, embed, tokens, carry, train):
    impl = 'fused' if self.impl == 'wavefront' else self.impl  # One layer: the same loop.
    new_carry = []
    for layer in range(self.num_layers):
      recurrent = Recurrent(self.cell, self.hidden, impl, self.dtype, name=f'layer{layer}')
      if layer == 0 and self.vocab_size <= tokens.size:
        c, x = recurrent(carry[0], embed.embedding, tokens=tokens)
      elif layer == 0:
        c, x = recurrent(carry[0], embed(tokens))
      else:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        c, x = recurrent(carry[layer], x)
      new_carry.append(c)
    return x, new_carry

  def _wavefront(self, embed, tokens, carry, train):
    """The LSTM layers as one loop (lstm_wavefront), with the parameters, inputs and dropout
    masks (same rngs) of the layer-by-layer loops."""
    steps, batch = tokens.shape
    dtype = jnp.dtype(self.dtype)
    params = [LstmParams(self.hidden, name=f'layer{layer}')(
        embed.features if layer == 0 else self.hidden) for layer in range(self.num_layers)]
    w_x0, b_x0, _ = params[0]
    w_x, b_x = (jnp.stack([p[n] for p in params[1:]]) for n in (0, 1))
    w_h = jnp.stack([p[2] for p in params])
    lookup = self.vocab_size <= tokens.size
    xs = embed.embedding if lookup else embed(tokens)
    gx0 = (lstm_kernel.project(xs.astype(dtype), w_x0.astype(dtype))
           + b_x0.astype(dtype)).astype(jnp.float32)  # As nn.Dense(dtype=self.dtype).
    if lookup:
      gx0 = jnp.take(gx0, tokens, axis=0, mode='clip')
    gx0 = gx0.astype(loop_dtype(self.dtype))
    keep = None
    if train and self.dropout > 0:  # Each upper layer's input mask, as nn.Dropout draws it.
      ones = jnp.ones((steps, batch, self.hidden), jnp.float32)
      keep = jnp.stack([nn.Dropout(self.dropout, deterministic=False)(ones)
                        for _ in range(self.num_layers - 1)])
    c0, h0 = (jnp.stack(x) for x in zip(*carry, strict=True))
    hs, c, h = lstm_wavefront.stack(gx0, w_x.astype(dtype), b_x, w_h.astype(dtype), c0, h0,
                                    keep)
    return hs, [(c[layer], h[layer]) for layer in range(self.num_layers)]

  def initial_carry(self, batch_size: int):
    """Zero hidden state: per layer (c, h) for an LSTM, (h,) for a GRU or RNN."""
    zeros = jnp.zeros((batch_size, self.hidden), jnp.float32)
    per_layer = (zeros, zeros) if self.cell == 'lstm' else (zeros,)
    return tuple(per_layer for _ in range(self.num_layers))


def auto_impl(model_config, batch_per_device: int | None, backend: str | None = None) -> str:
  """What model.impl='auto' runs: 'wavefront' on a GPU for an LSTM of 2+ layers with batch per
  device x hidden up to WAVEFRONT_MAX_BATCH_HIDDEN, else 'fused'.

  That is where the wavefront measured faster. Train step on an H200, bfloat16, sequence 100,
  wavefront against fused in one process (`experiments/bench_lstm_loops.py`): 3x512 at batch
  128 1.13x, 256 0.97x; 2x256 at 64 1.07x; 3x1024 at 64 1.00x. Against cuDNN in one run
  (`experiments/bench_train.py`, 2026-11-27), 3x512 at batch 64: bfloat16 3.10x for the
  wavefront, 2.68x for fused; float32 2.69x and 2.28x; at batch 512 the wavefront lost (bfloat16
  0.85x of fused, float32 0.84x). On a CPU fused wins (its native loops).
  """
  backend = backend or jax.default_backend()
  if (backend == 'gpu' and model_config.cell == 'lstm' and model_config.num_layers > 1
      and batch_per_device
      and batch_per_device * model_config.hidden <= WAVEFRONT_MAX_BATCH_HIDDEN):
    return 'wavefront'
  return 'fused'


def from_config(model_config, vocab_size: int, batch_per_device: int | None = None) -> CharRNN:
  """The model of `model_config`; `batch_per_device` (the training batch on each device)
  lets model.impl='auto' choose for the size that will run."""
  if model_config.cell not in CELLS:
    raise UserError(f'unknown model.cell {model_config.cell!r}; use one of {", ".join(CELLS)}')
  impl, dtype = model_config.get('impl', 'auto'), model_config.get('dtype', 'float32')
  if impl not in IMPLS:
    raise UserError(f'unknown model.impl {impl!r}; use one of {", ".join(IMPLS)}')
  if impl == 'auto':
    impl = auto_impl(model_config, batch_per_device)
    logging.info("charlm: model.impl='auto' runs %r", impl)
  if impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise UserError(f"model.impl='cudnn' needs an NVIDIA GPU (this run has "
                    f"{jax.default_backend()}); use model.impl='fused'")
  if impl == 'wavefront' and model_config.cell != 'lstm':
    raise UserError(f"model.impl='wavefront' runs LSTM layers only (model.cell is "
                    f"{model_config.cell!r}); use model.impl='fused'")
  if impl == 'wavefront' and jax.default_backend() == 'cpu':
    logging.warning("charlm: model.impl='wavefront' is made for GPUs; on a CPU "
                    "model.impl='fused' trains faster")
  if dtype not in DTYPES:
    raise UserError(f'unknown model.dtype {dtype!r}; use one of {", ".join(DTYPES)}')
  return CharRNN(vocab_size=vocab_size, cell=model_config.cell,
                 num_layers=model_config.num_layers, hidden=model_config.hidden,
                 embed=model_config.embed, dropout=model_config.dropout, impl=impl, dtype=dtype)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
