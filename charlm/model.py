"""The character-level recurrent network: embedding, stacked LSTM/GRU/RNN layers, softmax.

Inside, sequences are time-major ([T, B, ...]), the layout `lax.scan` loops over. Each layer
computes its input projection for all timesteps as one large matmul before the loop; for the
first layer that is a lookup in a [vocab, gates] table (the embedding times the input kernel,
computed once per call, when the vocabulary is smaller than the batch's characters). Inside
the loop only the recurrent matmul (all gates fused into one) and the gate arithmetic remain.
LSTM layers train through `lstm_kernel.lstm`, whose hand-written backward pass computes the
weight gradients as large matmuls over all timesteps (impl='fused'); impl='scan' is plain
autodiff through `lax.scan` (the reference). The carry (hidden state) comes in and goes out,
so it flows across batches.
"""
import jax
import jax.numpy as jnp
from flax import linen as nn

from charlm import lstm_kernel
from charlm.errors import UserError

CELLS = ('lstm', 'gru', 'rnn')
IMPLS = ('fused', 'scan')
DTYPES = ('float32', 'bfloat16')
GATES = {'lstm': 4, 'gru': 3, 'rnn': 1}
# From this size on, fused LSTM layers project their inputs inside the loop (lstm_kernel).
IN_LOOP_MIN_HIDDEN = 256


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


class Projection(nn.Module):
  """The parameters of nn.Dense (kernel [in, out], bias [out]), for matmuls written by hand."""
  features: int
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, in_features: int):
    return (self.param('kernel', nn.initializers.lecun_normal(), (in_features, self.features)),
            self.param('bias', self.bias_init, (self.features,)))


def _matmul(x, w, dtype):
  return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


class Recurrent(nn.Module):
  """One recurrent layer.

  in_loop=False: over batch-major xs [T, B, E]; or, with `tokens` [T, B], xs is an embedding
  table [V, E]: the layer projects the table and looks each token's row up.
  in_loop=True (fused LSTM only): feature-major xs [T, E, B] -> hs [T, H, B]; or, with
  `table` [V, E], xs is one-hot [T, V, B] and the table's projection is the input weight.
  """
  cell: str
  hidden: int
  impl: str = 'fused'
  dtype: str = 'float32'
  in_loop: bool = False

  @nn.compact
  def __call__(self, carry, xs, tokens=None, table=None):
    h = self.hidden
    width = GATES[self.cell] * h

    def bias_init(key, shape, dtype=jnp.float32):
      if self.cell == 'lstm':  # Forget-gate bias 1, so that memory is kept early in training.
        return jnp.zeros(shape, dtype).at[h:2 * h].set(1.0)
      return jnp.zeros(shape, dtype)

    if table is not None:
      in_features = table.shape[-1]
    else:
      in_features = xs.shape[1 if self.in_loop else -1]
    kernel, bias = Projection(width, bias_init, name='input')(in_features)
    w_h = self.param('recurrent', nn.initializers.orthogonal(), (h, width))
    if self.in_loop:
      w_x = kernel if table is None else _matmul(table, kernel, self.dtype)
      hs, c, h_last = lstm_kernel.lstm_in_loop(
          xs, w_x.astype(self.dtype), bias, w_h.astype(self.dtype), *(x.T for x in carry),
          table is None)
      return (c.T, h_last.T), hs
    gx = _matmul(xs, kernel, self.dtype) + bias
    if tokens is not None:
      gx = jnp.take(gx, tokens, axis=0, mode='clip')  # Ids are in range; 'fill' costs a select.
    if self.cell == 'lstm' and self.impl == 'fused':
      hs, c, h_last = lstm_kernel.lstm(gx, w_h.astype(self.dtype), *carry)
      return (c, h_last), hs
    if self.cell == 'lstm':
      step = lambda c, x: lstm_step(w_h, c, x)
    elif self.cell == 'gru':
      b_h = self.param('recurrent_bias', nn.initializers.zeros, (width,))
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
    width = self.embed or self.hidden
    # Unit-variance embeddings (as torch.nn.Embedding, and char-rnn's one-hot inputs): the first
    # layer's inputs then are as large as the later layers', so it learns as fast.
    embed = nn.Embed(self.vocab_size, width, embedding_init=nn.initializers.normal(1.0),
                     name='embed')
    in_loop = (self.cell == 'lstm' and self.impl == 'fused'
               and self.hidden >= IN_LOOP_MIN_HIDDEN)
    tokens = tokens.T
    new_carry = []
    for layer in range(self.num_layers):
      recurrent = Recurrent(self.cell, self.hidden, self.impl, self.dtype, in_loop,
                            name=f'layer{layer}')
      if layer == 0 and in_loop and self.vocab_size <= width:
        one_hot = tokens[:, None, :] == jnp.arange(self.vocab_size)[:, None]
        c, x = recurrent(carry[0], one_hot.astype(jnp.float32), table=embed.embedding)
      elif layer == 0 and in_loop:
        c, x = recurrent(carry[0], jnp.swapaxes(embed(tokens), 1, 2))
      elif layer == 0 and self.vocab_size <= tokens.size:
        c, x = recurrent(carry[0], embed.embedding, tokens=tokens)
      elif layer == 0:
        c, x = recurrent(carry[0], embed(tokens))
      else:
        c, x = recurrent(carry[layer], self._dropout(x, train, in_loop))
      new_carry.append(c)
    x = self._dropout(x, train, in_loop)
    kernel, bias = Projection(self.vocab_size, name='output')(self.hidden)
    if in_loop:
      x = jnp.swapaxes(x, 1, 2)
    logits = jnp.swapaxes(_matmul(x, kernel, self.dtype), 0, 1)
    return logits + bias, tuple(new_carry)

  def _dropout(self, x, train: bool, in_loop: bool):
    # Masks drawn in the [T, B, H] layout whatever the path, so that the same rng drops the same
    # units in both.
    drop = nn.Dropout(self.dropout, deterministic=not train)
    return jnp.swapaxes(drop(jnp.swapaxes(x, 1, 2)), 1, 2) if in_loop else drop(x)

  def initial_carry(self, batch_size: int):
    """Zero hidden state: per layer (c, h) for an LSTM, (h,) for a GRU or RNN."""
    zeros = jnp.zeros((batch_size, self.hidden), jnp.float32)
    per_layer = (zeros, zeros) if self.cell == 'lstm' else (zeros,)
    return tuple(per_layer for _ in range(self.num_layers))


def from_config(model_config, vocab_size: int) -> CharRNN:
  if model_config.cell not in CELLS:
    raise UserError(f'unknown model.cell {model_config.cell!r}; use one of {", ".join(CELLS)}')
  impl, dtype = model_config.get('impl', 'fused'), model_config.get('dtype', 'float32')
  if impl not in IMPLS:
    raise UserError(f'unknown model.impl {impl!r}; use one of {", ".join(IMPLS)}')
  if dtype not in DTYPES:
    raise UserError(f'unknown model.dtype {dtype!r}; use one of {", ".join(DTYPES)}')
  return CharRNN(vocab_size=vocab_size, cell=model_config.cell,
                 num_layers=model_config.num_layers, hidden=model_config.hidden,
                 embed=model_config.embed, dropout=model_config.dropout, impl=impl, dtype=dtype)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
