"""The loss of a model over a token sequence, as training's validation and charlm.evaluate read it.

Also the pieces the train step shares with it: the summed cross-entropy and the carry reset.
Free of optax, so that loading a run for inference does not import the optimizer.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from charlm import data as data_lib
from charlm import sharding

LN2 = math.log(2)


def cross_entropy_sum(logits, targets, weights):
  """(sum of the weighted cross-entropies in nats, sum of the weights).

  As optax.softmax_cross_entropy_with_integer_labels computes it: the normalizer is subtracted
  from the targets' logits only.
  """
  logits = logits.astype(jnp.float32)
  target_logits = jnp.take_along_axis(logits, jnp.expand_dims(targets, -1), axis=-1).take(
      0, axis=-1)
  losses = jax.nn.logsumexp(logits, axis=-1) - target_logits
  return (losses * weights).sum(), weights.sum()


def reset_where(reset, carry):
  return jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)


def make_eval_step(model):
  def eval_step(params, carry, inputs, targets, weights, reset):
    logits, carry = model.apply({'params': params}, inputs, reset_where(reset, carry))
    total, count = cross_entropy_sum(logits, targets, weights)
    return carry, total, count
  return eval_step


class Evaluator:
  """Loss over a whole token sequence in `batch_size` streams, carrying state like training."""

  def __init__(self, model, mesh, batch_size: int, seq_len: int):
    self.model, self.mesh, self.batch_size, self.seq_len = model, mesh, batch_size, seq_len
    data = sharding.batch_sharding(mesh)
    self.step = jax.jit(make_eval_step(model),
                        in_shardings=(sharding.replicated(mesh), data, data, data, data, None),
                        out_shardings=(data, None, None), donate_argnums=1)
    self.rows = sharding.process_rows(mesh, batch_size)

  def streams(self, tokens, what) -> data_lib.Streams:
    return data_lib.Streams(tokens, self.batch_size, self.seq_len, rows=self.rows,
                            pad_last=True, what=what)

  def __call__(self, params, tokens, max_batches: int = 0, what='the validation split') -> dict:
    """Returns {'loss': nats/char, 'bpc', 'chars'}."""
    streams = self.streams(tokens, what)
    carry = jax.jit(lambda: self.model.initial_carry(self.batch_size),
                    out_shardings=sharding.batch_sharding(self.mesh))()
    sums = []
    for k, batch in enumerate(streams):
      if max_batches and k >= max_batches:
        break
      to_global = lambda a: sharding.to_global(self.mesh, a, self.batch_size)
      carry, t, c = self.step(params, carry, to_global(batch.inputs), to_global(batch.targets),
                              to_global(batch.weights), jnp.bool_(batch.reset))
      sums.append((t, c))
    # Added up here, in float32 in the same order as on the device, rather than by a jnp add
    # per batch: that is a second multi-device program in flight between the steps, and XLA's
    # CPU collectives (several CPU devices) deadlocked in such an interleaving under load.
    total, count = np.float32(0), np.float32(0)
    for t, c in jax.device_get(sums):
      total, count = total + np.float32(t), count + np.float32(c)
    loss = float(total) / float(count)
    return {'loss': loss, 'bpc': loss / LN2, 'chars': int(count)}
