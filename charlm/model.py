"""The character-level recurrent network: embedding, stacked LSTM/GRU/RNN layers, softmax.

Inside, sequences are time-major ([T, B, ...]), the layout `lax.scan` loops over. Each layer
computes its input projection for all timesteps as one large matmul before the loop; for the
first layer that is a lookup in a [vocab, gates] table (the embedding times the input kernel,
computed once per call, when the vocabulary is smaller than the batch's characters). Inside
the loop only the recurrent matmul (all gates fused into one) and the gate arithmetic remain.
The carry (hidden state) comes in and goes out, so it flows across batches.

Regularisers, all off by default and only in training (`train=True`), with masks from the
'dropout' rng: `dropout` between layers and before the output (char-rnn's), per step or, with
`locked_dropout`, one mask per sequence (batch row) shared over time (AWD-LSTM's LockedDropout),
as is `input_dropout` on the first layer's embedded inputs; `embed_dropout` drops whole rows of
the embedding (whole characters) with one mask per call; `weight_drop` is DropConnect on each
layer's recurrent matrix (AWD-LSTM's weight drop), one mask per call applied to the weight
before it enters the loops, so that every loop takes it unchanged. Each mask is drawn in a
module of the same name whatever the impl, so all impls draw the same masks from one rng.

LSTM layers run one of three ways (model.impl), with the same parameters: 'fused', a
hand-written backward pass (`lstm_kernel`); 'wavefront', all layers in one loop
(`lstm_wavefront`, for GPUs); 'scan', plain autodiff through `lax.scan`, the reference.
`resolve` turns config.model (where 'auto' lets the backend choose) into what runs, once;
`from_config` builds the model with it.
"""
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import logging
from flax import linen as nn

from charlm import lstm_cell, lstm_cpu, lstm_kernel, lstm_wavefront
from charlm.errors import UserError
from charlm.lstm_cell import LoopOptions

CELLS = ('lstm', 'gru', 'rnn')
# What each cell's layers compute per step, as they write it out (`Recurrent`): the hidden state
# h, an LSTM's cell state c and gates i, f, g, o (after their sigmoid or tanh), a GRU's update
# and reset gates.
STATES = {'lstm': ('h', 'c', 'i', 'f', 'g', 'o'), 'gru': ('h', 'z', 'r'), 'rnn': ('h',)}
IMPLS = ('auto', 'fused', 'scan', 'wavefront')
DTYPES = ('float32', 'bfloat16')
GATE_INPUTS = ('auto', 'float32', 'bfloat16')
SAVED_GATES = ('auto', 'float32', 'float16')
LOOP_LAYOUTS = ('auto', 'feature_major', 'batch_major')
# impl='auto' picks the wavefront up to this per-device batch x hidden (see auto_impl).
WAVEFRONT_MAX_BATCH_HIDDEN = 64 * 1024
# What 'auto' (0 for the unrolls) means for the loops on each backend: (layout, forward unroll,
# backward unroll), the fastest measured there (docs/speed.md); TPUs take the GPUs' untried.
CPU_LOOPS = ('feature_major', 2, 1)
OTHER_LOOPS = ('batch_major', 8, 8)
# The fields of config.model that `resolve` reads, with the value a config without them (one
# saved by an older charlm) means.
DEFAULTS = {'impl': 'auto', 'dtype': 'float32', 'gate_inputs': 'auto', 'saved_gates': 'auto',
            'loop_layout': 'auto', 'unroll': 0, 'unroll_backward': 0, 'unroll_divides': True,
            'native_cpu': True}
# The regularisers' fields of config.model (CharRNN's), with the value a config without them
# means: off.
REGULARISERS = {'locked_dropout': False, 'input_dropout': 0.0, 'embed_dropout': 0.0,
                'weight_drop': 0.0}


def gru_step_states(w_h, b_h, carry, gx, hold=None):
  """One GRU step, with its gates: carry (h,) [B, H], gx [B, 3H] -> ((h,), {'h', 'z', 'r'});
  `hold(kind, x)`, if given, replaces the new h (charlm.clamp)."""
  (h,) = carry
  xr, xz, xn = jnp.split(gx, 3, axis=-1)
  hr, hz, hn = jnp.split(h @ w_h + b_h, 3, axis=-1)
  r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
  h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
  if hold:
    h = hold('h', h)
  return (h,), {'h': h, 'z': z, 'r': r}


def rnn_step_states(w_h, carry, gx, hold=None):
  """One tanh RNN step: carry (h,) [B, H], gx [B, H] -> ((h,), {'h'}); `hold` as for a GRU."""
  (h,) = carry
  h = jnp.tanh(gx + h @ w_h)
  if hold:
    h = hold('h', h)
  return (h,), {'h': h}


def drop_weight(w, rate: float, train: bool):
  """DropConnect on a recurrent matrix w, scaled by 1 / (1 - rate): one mask for the whole call
  (every row and step of the batch). Called inside the layer's module, so that every impl
  draws the mask from the same rng (module path '<layer>/weight_drop')."""
  return nn.Dropout(rate, deterministic=not train, name='weight_drop')(w)


def project_dot_general(x, w, dimension_numbers, precision=None):
  """nn.Dense's product through lstm_cell.project (same result, faster weight gradient)."""
  del dimension_numbers, precision  # nn.Dense contracts x's last axis with w's first, as project.
  return lstm_cell.project(x, w)


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
  """An LSTM layer's parameters, unapplied, with Recurrent's names, shapes and initializers; the
  recurrent matrix after Recurrent's weight drop (the same mask)."""
  hidden: int
  weight_drop: float = 0.0

  @nn.compact
  def __call__(self, in_features: int, train: bool = False):
    h = self.hidden
    kernel, bias = DenseParams(4 * h, recurrent_bias_init('lstm', h), name='input')(in_features)
    w_h = self.param('recurrent', nn.initializers.orthogonal(), (h, 4 * h))
    return kernel, bias, drop_weight(w_h, self.weight_drop, train)


class Recurrent(nn.Module):
  """One recurrent layer over a time-major [T, B, features] sequence.

  With `tokens` [T, B], `xs` is instead an embedding table [vocab, features]: the layer
  projects the table and looks each token's row up. Given an 'into' collection (mutable) of
  'begin' and arrays [B, P, H] named by kinds of STATES[cell], the layer writes what its steps
  computed into them at steps begin .. begin + T - 1 (forward only; charlm.internals reads
  them): the native CPU loops as they go, the others after the loop. In training, `weight_drop`
  drops entries of the recurrent matrix (`drop_weight`).
  """
  cell: str
  hidden: int
  impl: str = 'fused'
  dtype: str = 'float32'
  gate_inputs: str = 'float32'
  loops: LoopOptions = LoopOptions()
  weight_drop: float = 0.0

  @nn.compact
  def __call__(self, carry, xs, tokens=None, train: bool = False):
    gates = {'lstm': 4, 'gru': 3, 'rnn': 1}[self.cell]
    h = self.hidden
    fused = self.cell == 'lstm' and self.impl == 'fused'
    gx = nn.Dense(gates * h, bias_init=recurrent_bias_init(self.cell, h), dtype=self.dtype,
                  dot_general=project_dot_general if fused else None, name='input')(xs)
    gx = gx.astype(jnp.float32)  # Then a lookup's gradient adds up rows in float32.
    if tokens is not None:
      gx = jnp.take(gx, tokens, axis=0, mode='clip')  # Ids are in range; 'fill' costs a select.
    w_h = drop_weight(self.param('recurrent', nn.initializers.orthogonal(), (h, gates * h)),
                      self.weight_drop, train)
    into = self._into()
    recording = into is not None
    if fused:
      loop_args = (gx.astype(self.gate_inputs), w_h.astype(self.dtype), *carry, self.loops)
      if recording:
        hs, c, h_last, written = lstm_kernel.lstm_states_into(*loop_args, *into)
        for kind, array in written.items():
          self.put_variable('into', kind, array)
      else:
        hs, c, h_last = lstm_kernel.lstm(*loop_args)
      return (c, h_last), hs
    if self.cell == 'lstm':
      step_states = lambda c, x: lstm_cell.step_states(w_h, c, x)
    elif self.cell == 'gru':
      b_h = self.param('recurrent_bias', nn.initializers.zeros, (gates * h,))
      step_states = lambda c, x: gru_step_states(w_h, b_h, c, x)
    else:
      step_states = lambda c, x: rnn_step_states(w_h, c, x)

    def step(c, x):
      c, states = step_states(c, x)
      return c, states if recording else states['h']

    carry, ys = jax.lax.scan(step, carry, gx)
    if not recording:
      return carry, ys
    begin, arrays = into
    for kind, array in arrays.items():
      self.put_variable('into', kind, lstm_cell.write_steps(array, ys[kind], begin))
    return carry, ys['h']

  def _into(self):
    """(begin, {kind: array}) of the 'into' collection, or None without one."""
    if not self.has_variable('into', 'begin'):
      return None
    return self.get_variable('into', 'begin'), {
        kind: self.get_variable('into', kind) for kind in STATES[self.cell]
        if self.has_variable('into', kind)}


class CharRNN(nn.Module):
  """tokens [batch, time] and carry -> logits [batch, time, vocab] and the next carry.

  impl, dtype, gate_inputs and loops are what `resolve` made of config.model; `from_config`
  builds the model with them. Given an 'into' collection, each layer writes its states into it
  (`Recurrent`); a wavefront model then runs its layers one by one, as 'fused' does.
  The regularisers (dropout .. weight_drop) act only with train=True (module docstring).
  """
  vocab_size: int
  cell: str = 'lstm'
  num_layers: int = 2
  hidden: int = 128
  embed: int = 0
  dropout: float = 0.0
  locked_dropout: bool = False
  input_dropout: float = 0.0
  embed_dropout: float = 0.0
  weight_drop: float = 0.0
  impl: str = 'fused'
  dtype: str = 'float32'
  gate_inputs: str = 'float32'  # The dtype of the gate inputs the LSTM loops take.
  loops: LoopOptions = LoopOptions()

  @nn.compact
  def __call__(self, tokens, carry, train: bool = False):
    # Unit-variance embeddings (as torch.nn.Embedding, and char-rnn's one-hot inputs): the first
    # layer's inputs then are as large as the later layers', so it learns as fast.
    embed = nn.Embed(self.vocab_size, self.embed or self.hidden,
                     embedding_init=nn.initializers.normal(1.0), name='embed')
    tokens = tokens.T
    recording = 'into' in self.variables  # Only the layer loops write states.
    if self.impl == 'wavefront' and self.cell == 'lstm' and self.num_layers > 1 and not recording:
      x, new_carry = self._wavefront(embed, tokens, carry, train)
    else:
      x, new_carry = self._layer_by_layer(embed, tokens, carry, train)
    x = self._dropout(x, self.dropout, train)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, dot_general=project_dot_general,
                      name='output')(x)
    return jnp.swapaxes(logits, 0, 1), tuple(new_carry)

  def _dropout(self, x, rate: float, train: bool, name: str | None = None):
    """Dropout of time-major x [T, B, F]: a mask per step, or with locked_dropout one per
    sequence (batch row), the same at every step."""
    dims = (0,) if self.locked_dropout else ()
    return nn.Dropout(rate, broadcast_dims=dims, deterministic=not train, name=name)(x)

  def _inputs(self, embed, tokens, train):
    """The first layer's inputs: (the embedding table, tokens), for the layer to project the
    table and look the tokens up in it, when the vocabulary is smaller than the batch's
    characters; else (the embedded tokens [T, B, E], None). Embedding dropout masks the table's
    rows; input dropout, which needs each character's own embedding, takes the second way."""
    table = embed.embedding
    if train and self.embed_dropout > 0:  # Whole characters: one mask entry per table row.
      table = nn.Dropout(self.embed_dropout, broadcast_dims=(1,), deterministic=False,
                         name='embed_dropout')(table)
    if self.vocab_size <= tokens.size and not (train and self.input_dropout > 0):
      return table, tokens
    x = embed(tokens) if table is embed.embedding else jnp.take(table, tokens, axis=0)
    return self._dropout(x, self.input_dropout, train, name='input_dropout'), None

  def _layer_by_layer(self, embed, tokens, carry, train):
    impl = 'fused' if self.impl == 'wavefront' else self.impl  # One layer: the same loop.
    new_carry = []
    x, lookup = self._inputs(embed, tokens, train)
    for layer in range(self.num_layers):
      recurrent = Recurrent(self.cell, self.hidden, impl, self.dtype, self.gate_inputs,
                            self.loops, self.weight_drop, name=f'layer{layer}')
      if layer > 0:
        x = self._dropout(x, self.dropout, train)
      c, x = recurrent(carry[layer], x, tokens=lookup if layer == 0 else None, train=train)
      new_carry.append(c)
    return x, new_carry

  def _wavefront(self, embed, tokens, carry, train):
    """The LSTM layers as one loop (lstm_wavefront), with the parameters, inputs and dropout
    masks (same rngs) of the layer-by-layer loops."""
    steps, batch = tokens.shape
    dtype = jnp.dtype(self.dtype)
    params = [LstmParams(self.hidden, self.weight_drop, name=f'layer{layer}')(
        embed.features if layer == 0 else self.hidden, train)
        for layer in range(self.num_layers)]
    w_x0, b_x0, _ = params[0]
    w_x, b_x = (jnp.stack([p[n] for p in params[1:]]) for n in (0, 1))
    w_h = jnp.stack([p[2] for p in params])
    xs, lookup = self._inputs(embed, tokens, train)
    gx0 = (lstm_cell.project(xs.astype(dtype), w_x0.astype(dtype))
           + b_x0.astype(dtype)).astype(jnp.float32)  # As nn.Dense(dtype=self.dtype).
    if lookup is not None:
      gx0 = jnp.take(gx0, lookup, axis=0, mode='clip')
    gx0 = gx0.astype(self.gate_inputs)
    keep = None
    if train and self.dropout > 0:  # Each upper layer's input mask, as nn.Dropout draws it.
      ones = jnp.ones((steps, batch, self.hidden), jnp.float32)
      keep = jnp.stack([self._dropout(ones, self.dropout, train)
                        for _ in range(self.num_layers - 1)])
    c0, h0 = (jnp.stack(x) for x in zip(*carry, strict=True))
    hs, c, h = lstm_wavefront.stack(gx0, w_x.astype(dtype), b_x, w_h.astype(dtype), c0, h0,
                                    keep, self.loops)
    return hs, [(c[layer], h[layer]) for layer in range(self.num_layers)]

  def initial_carry(self, batch_size: int):
    """Zero hidden state: per layer (c, h) for an LSTM, (h,) for a GRU or RNN."""
    zeros = jnp.zeros((batch_size, self.hidden), jnp.float32)
    per_layer = (zeros, zeros) if self.cell == 'lstm' else (zeros,)
    return tuple(per_layer for _ in range(self.num_layers))


# ---------------------------------------------------------------------------------------------
# From config.model to what runs, decided once.

@dataclasses.dataclass(frozen=True)
class Resolved:
  """What config.model's speed settings mean on a backend: the values that run."""
  impl: str
  dtype: str
  gate_inputs: str
  loops: LoopOptions

  def describe(self) -> str:
    """One line for the user, in config.model's terms."""
    o = self.loops
    if self.impl == 'scan':
      loops = 'autodiff through lax.scan'
    elif o.native:
      loops = 'native CPU loops'
    else:
      layout = 'feature-major' if o.feature_major else 'batch-major'
      loops = (f"XLA's loops, {layout}, unroll {o.unroll}/{o.unroll_backward}"
               + ('' if o.unroll_divides else ' (not rounded to divisors)'))
    return (f'model.impl={self.impl!r} ({loops}), dtype {self.dtype}, gate inputs '
            f'{self.gate_inputs}, saved gates {o.saved_gates}')

  def to_json(self) -> dict:
    """The values as config.model fields would give them, for config.json."""
    o = self.loops
    return {'impl': self.impl, 'dtype': self.dtype, 'gate_inputs': self.gate_inputs,
            'saved_gates': o.saved_gates,
            'loop_layout': 'feature_major' if o.feature_major else 'batch_major',
            'unroll': o.unroll, 'unroll_backward': o.unroll_backward,
            'unroll_divides': o.unroll_divides, 'native_cpu': o.native}


def auto_impl(model_config, batch_per_device: int | None, backend: str) -> str:
  """What model.impl='auto' runs: 'wavefront' on a GPU for an LSTM of 2+ layers with batch per
  device x hidden up to WAVEFRONT_MAX_BATCH_HIDDEN, else 'fused': where each measured faster
  (docs/speed.md)."""
  if (backend == 'gpu' and model_config.cell == 'lstm' and model_config.num_layers > 1
      and batch_per_device
      and batch_per_device * model_config.hidden <= WAVEFRONT_MAX_BATCH_HIDDEN):
    return 'wavefront'
  return 'fused'


def _choice(model_config, field: str, allowed) -> str:
  value = model_config.get(field, DEFAULTS[field])
  if value not in allowed:
    raise UserError(f'unknown model.{field} {value!r}; use one of {", ".join(allowed)}')
  return value


def _count(model_config, field: str) -> int:
  value = model_config.get(field, DEFAULTS[field])
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise UserError(f'model.{field} is {value!r}; use 0 (the backend\'s default) or a positive '
                    f'number of steps (--config.model.{field}=8)')
  return value


def resolve(model_config, batch_per_device: int | None = None,
            backend: str | None = None) -> Resolved:
  """config.model's settings as they run on `backend` (default: JAX's, which this then starts)
  for `batch_per_device` streams on each device (None: unknown); 'auto' and 0 become the
  backend's measured defaults. Errors name the field, the value and what is allowed."""
  cell = model_config.cell
  if cell not in CELLS:
    raise UserError(f'unknown model.cell {cell!r}; use one of {", ".join(CELLS)}')
  if model_config.get('impl', DEFAULTS['impl']) == 'cudnn':
    raise UserError("model.impl='cudnn' was removed: it trained slower than 'fused' wherever "
                    "it was measured (docs/speed.md); use model.impl='auto'")
  impl = _choice(model_config, 'impl', IMPLS)
  dtype = _choice(model_config, 'dtype', DTYPES)
  gate_inputs = _choice(model_config, 'gate_inputs', GATE_INPUTS)
  saved_gates = _choice(model_config, 'saved_gates', SAVED_GATES)
  layout = _choice(model_config, 'loop_layout', LOOP_LAYOUTS)
  unroll, unroll_backward = _count(model_config, 'unroll'), _count(model_config, 'unroll_backward')
  for field in ('unroll_divides', 'native_cpu'):
    if not isinstance(model_config.get(field, DEFAULTS[field]), bool):
      raise UserError(f'model.{field} is {model_config[field]!r}; use True or False')
  for field, value in (('gate_inputs', gate_inputs), ('saved_gates', saved_gates)):
    if value not in ('auto', 'float32') and dtype != 'bfloat16':
      raise UserError(f"model.{field}={value!r} goes with bfloat16 matmuls "
                      f"(model.dtype='bfloat16'); with float32 ones use 'auto' or 'float32'")
  backend = backend or jax.default_backend()
  if impl == 'auto':
    impl = auto_impl(model_config, batch_per_device, backend)
    logging.info("charlm: model.impl='auto' runs %r", impl)
  if impl == 'wavefront' and cell != 'lstm':
    raise UserError(f"model.impl='wavefront' runs LSTM layers only (model.cell is {cell!r}); "
                    "use model.impl='fused'")
  narrow = backend == 'gpu' and dtype == 'bfloat16'  # 'auto': narrower on GPUs, where it won.
  if gate_inputs == 'auto':
    gate_inputs = 'bfloat16' if narrow else 'float32'
  if saved_gates == 'auto':
    saved_gates = 'float16' if narrow else 'float32'
  default_layout, default_unroll, default_unroll_backward = (
      CPU_LOOPS if backend == 'cpu' else OTHER_LOOPS)
  runs_lstm_kernel = cell == 'lstm' and (
      impl == 'fused' or impl == 'wavefront' and model_config.num_layers == 1)
  native = (model_config.get('native_cpu', DEFAULTS['native_cpu']) and backend == 'cpu'
            and runs_lstm_kernel and dtype == 'float32' and lstm_cpu.available())
  wavefront = impl == 'wavefront' and model_config.num_layers > 1  # Its loop is batch-major.
  loops = LoopOptions(
      native=bool(native),
      feature_major=not wavefront and (
          default_layout if layout == 'auto' else layout) == 'feature_major',
      unroll=unroll or default_unroll, unroll_backward=unroll_backward or default_unroll_backward,
      unroll_divides=model_config.get('unroll_divides', DEFAULTS['unroll_divides']),
      saved_gates=saved_gates)
  return Resolved(impl, dtype, gate_inputs, loops)


def from_config(model_config, vocab_size: int, batch_per_device: int | None = None,
                backend: str | None = None) -> CharRNN:
  """The model of `model_config` as it runs on `backend` (see `resolve`); `batch_per_device`
  (the training batch on each device) lets model.impl='auto' choose for the size that will run."""
  r = resolve(model_config, batch_per_device, backend)
  if r.impl == 'wavefront' and (backend or jax.default_backend()) == 'cpu':
    logging.warning("charlm: model.impl='wavefront' is made for GPUs; on a CPU "
                    "model.impl='fused' trains faster")
  return CharRNN(vocab_size=vocab_size, cell=model_config.cell,
                 num_layers=model_config.num_layers, hidden=model_config.hidden,
                 embed=model_config.embed, dropout=model_config.dropout, impl=r.impl,
                 dtype=r.dtype, gate_inputs=r.gate_inputs, loops=r.loops,
                 **{k: model_config.get(k, off) for k, off in REGULARISERS.items()})


def resolved(model: CharRNN) -> Resolved:
  """What a built model runs."""
  return Resolved(model.impl, model.dtype, model.gate_inputs, model.loops)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
