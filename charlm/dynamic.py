"""Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"): the
weights adapt to the scored text as it is read, so a long text is predicted better.

The text is cut into segments of `seq_len` characters read in order, the hidden state carried
from one to the next as static evaluation carries it. Each segment is first scored with the
current weights (that loss is what counts, so the number stays an honest prediction: no score
depends on a character read after it), then its gradient g moves the weights by their
RMS-normalised rule with decay toward the trained weights theta0:

    theta += -lr * g / (MS + eps) + min(decay * MS / mean(MS), 1) * (theta0 - theta)

MS, per parameter, is the root mean square of the same kind of gradient (the mean loss of a
`batch_size` x `seq_len` window) over `grad_batches` windows of the training split at the
trained weights; mean(MS) is over all parameters (the decay's per-parameter factor MS / mean(MS)
is clipped at 1 / decay, as in their code). With `batch_size` B > 1 the text is read as B
contiguous streams side by side, one update per segment step from all of them (as their code
does with a batch): faster, and still no score depends on a segment read after it, though it
may on another stream's earlier segment, which lies later in the text. B = 1 reads the text
as one stream, in its own order. With lr = 0 the weights never move and the result is static
evaluation's, bit for bit.

Per segment, one compiled call scores and differentiates (the model's own training loops: the
fused LSTM's hand-written backward pass, the native CPU loops) and one updates the weights.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from charlm import data as data_lib
from charlm.errors import UserError
from charlm.evaluation import LN2, reset_where

EPS = 1e-5  # Added to MS where it divides the gradient, for parameters with tiny gradients.
# Defaults of charlm.evaluate --dynamic: chosen by a sweep on a validation split
# (experiments/bench_dynamic_eval.py; the figures are in experiments/results/dynamic_eval_cpu.json).
LR = 1e-3
DECAY = 0.0
SEQ_LEN = 50
GRAD_BATCHES = 100


def _window_loss(model, params, carry, inputs, targets, weights, reset):
  """(summed loss, (count, next carry, per-character losses [B, T])) of one window."""
  logits, new_carry = model.apply({'params': params}, inputs, reset_where(reset, carry))
  logits = logits.astype(jnp.float32)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  losses = (jax.nn.logsumexp(logits, axis=-1) - target_logits) * weights
  return losses.sum(), (weights.sum(), new_carry, losses)


@functools.partial(jax.jit, static_argnums=0)
def _scores_and_grads(model, params, carry, inputs, targets, weights, reset):
  """One window: (summed loss, count, next carry, per-character losses, gradient of the mean
  loss). Gradient statistics and the adapting pass share this one compiled program."""
  (total, (count, new_carry, losses)), grads = jax.value_and_grad(
      functools.partial(_window_loss, model), has_aux=True)(params, carry, inputs, targets,
                                                            weights, reset)
  grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1), grads)
  return total, count, new_carry, losses, grads


@functools.partial(jax.jit, donate_argnums=0)
def _add_squares(sums, grads):
  return jax.tree.map(lambda s, g: s + jnp.square(g), sums, grads)


@functools.partial(jax.jit, donate_argnums=0)
def _update(params, grads, theta0, ms, pull, lr):
  """theta - lr * g / (MS + eps) + pull * (theta0 - theta)."""
  return jax.tree.map(lambda p, g, m, k, p0: p - lr * g / (m + EPS) + k * (p0 - p),
                      params, grads, ms, pull, theta0)


def gradient_rms(model, params, tokens, batch_size: int, seq_len: int, batches: int):
  """MS: per parameter, the root mean square of the gradient of a window's mean loss over the
  first `batches` windows of `tokens` read as `batch_size` streams (the state carried)."""
  streams = data_lib.Streams(tokens, batch_size, seq_len, what='the training split')
  if streams.num_batches < 1:
    raise UserError(f'the training split is too short for one {batch_size} x {seq_len} window; '
                    'lower --dynamic_seq')
  sums = jax.tree.map(jnp.zeros_like, params)
  carry = model.initial_carry(batch_size)
  count = min(batches, streams.num_batches)
  for k in range(count):
    b = streams.batch(k)
    *_, carry, _, grads = _scores_and_grads(model, params, carry, b.inputs, b.targets, b.weights,
                                            jnp.bool_(b.reset))
    sums = _add_squares(sums, grads)
  return jax.tree.map(lambda s: jnp.sqrt(s / count), sums)


def check_rates(lr: float, decay: float):
  """lr and decay: finite numbers >= 0, or a one-line UserError."""
  for name, value in (('lr', lr), ('decay', decay)):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
      raise UserError(f'dynamic evaluation {name} is {value!r}; use a finite number >= 0 '
                      f'(--dynamic_{name})')


def evaluate(model, params, tokens, ms, lr: float, decay: float, seq_len: int,
             batch_size: int = 1, per_char: bool = False,
             what: str = 'the text') -> dict:
  """The loss of `tokens` under dynamic evaluation (see the module docstring).

  `ms` is gradient_rms's (for the same batch_size and seq_len). Returns {'loss': nats/char,
  'bpc', 'chars'}, and with per_char 'char_losses', float32 [chars]: the loss of each scored
  character in text order (stream b's characters after stream b-1's).
  """
  check_rates(lr, decay)
  streams = data_lib.Streams(tokens, batch_size, seq_len, pad_last=True, what=what)
  mean_ms = sum(float(m.sum()) for m in jax.tree.leaves(ms)) / sum(
      m.size for m in jax.tree.leaves(ms))
  pull = jax.tree.map(lambda m: jnp.minimum(decay * m / max(mean_ms, 1e-30), 1.0), ms)
  theta0 = params
  params = jax.tree.map(jnp.copy, params)  # Donated step by step; theta0 stays.
  carry = model.initial_carry(batch_size)
  lr = jnp.float32(lr)
  total, count, losses = 0.0, 0.0, []
  for batch in streams:
    t, c, carry, window, grads = _scores_and_grads(model, params, carry, batch.inputs,
                                                   batch.targets, batch.weights,
                                                   jnp.bool_(batch.reset))
    params = _update(params, grads, theta0, ms, pull, lr)
    total, count = total + t, count + c  # Summed as charlm.evaluation.Evaluator sums.
    if per_char:
      losses.append(window)
  loss = float(total) / float(count)
  result = {'loss': loss, 'bpc': loss / LN2, 'chars': int(count)}
  if per_char:
    grid = np.concatenate(jax.device_get(losses), axis=1)[:, :streams.length]
    result['char_losses'] = grid.reshape(-1)
  return result
