"""Loads a trained run for inference: its config, vocabulary, model and parameters.

Restores the parameters alone, so it imports neither the trainer nor the optimizer.
"""
import os

import jax
import jax.numpy as jnp
import ml_collections

from charlm import checkpoint, sharding, validate
from charlm import data as data_lib
from charlm import model as model_lib
from charlm.checkpoint import Checkpoints
from charlm.errors import UserError


def load_checkpoint(workdir: str, step='latest'):
  """Loads a run for inference: (config, vocab, model, params, step) from its workdir.

  `step` is 'latest', 'best', a step number, or None: the best if there is one, else the
  latest. Works on any device, whatever trained it.
  """
  if not os.path.isdir(workdir):
    raise UserError(f'workdir {workdir} does not exist; pass the --workdir of a training run '
                    '(python -m charlm.train --config ... --workdir DIR)')
  directory = os.path.join(workdir, 'checkpoints')
  untrained = UserError(f'no checkpoints in {workdir}; train first with python -m charlm.train '
                        f'--config ... --workdir {workdir}, or check the --workdir')
  if not os.path.isdir(directory):
    raise untrained
  ckpts = Checkpoints(directory, read_only=True)
  try:
    steps = ckpts.all_steps()
    if not steps:
      raise untrained
    chosen = _choose_step(ckpts, steps, step, workdir)
    try:
      meta = ckpts.restore_meta(chosen)
    except Exception as e:  # Whatever Orbax or tensorstore raise on bad bytes.
      raise _unreadable(chosen, steps, workdir, e) from None
    validate.check_meta(meta, workdir, keys=('config', 'vocab'), sections=('model', 'train'))
    config = ml_collections.ConfigDict(meta['config'])
    if config.model.get('impl') == 'cudnn':
      config.model.impl = 'fused'  # The same parameters, on any device.
    vocab = data_lib.Vocab.from_json(meta['vocab'])
    model = model_lib.from_config(  # For trainer.build's batch, so 'auto' picks as it did.
        config.model, vocab.size, config.train.batch_size // jax.device_count())
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                              model.initial_carry(1))['params']
    replicated = sharding.replicated(sharding.create_mesh(jax.local_devices()[:1]))
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          abstract)
    try:
      params = ckpts.restore_part(chosen, {'params': target})['params']
    except Exception as e:
      raise _unreadable(chosen, steps, workdir, e) from None
  finally:
    ckpts.close()
  return config, vocab, model, params, chosen


def _unreadable(step, steps, workdir, error) -> UserError:
  others = ', '.join(str(s) for s in sorted(steps) if s != step) or 'none'
  return UserError(f'{checkpoint.unreadable(step, workdir, error)}; pass --step with another '
                   f'step (there: {others})')


def _choose_step(ckpts, steps, step, workdir) -> int:
  best = ckpts.best_step()
  if step is None:
    return ckpts.latest_step() if best is None else best
  if step == 'latest':
    return ckpts.latest_step()
  if step == 'best':
    if best is None:
      raise UserError(f'{workdir} has no checkpoint with a validation loss, so no best one; '
                      'use --step latest or a step number')
    return best
  chosen = int(step) if str(step).isdigit() else None
  if chosen not in steps:
    raise UserError(f'no checkpoint at step {step} in {workdir}; choose latest, best or one '
                    f'of the steps {", ".join(map(str, sorted(steps)))}')
  return chosen
