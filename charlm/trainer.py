"""Training, top to bottom: build (optimizer, train step, state), restore a run, the loop.

The workdir holds everything of one run (config.json, metrics.jsonl, TensorBoard events,
samples.md, checkpoints); running again with the same workdir resumes exactly.
"""
import functools
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from charlm import atomic, checkpoint, corpora, locks, loop, sharding, validate
from charlm import data as data_lib
from charlm import model as model_lib
from charlm.checkpoint import Checkpoints
from charlm.errors import UserError, disk_full_is_user_error
from charlm.evaluation import LN2, Evaluator, cross_entropy_sum, reset_where
from charlm.metrics import MetricWriter, hparams_of
from charlm.sampling import Sampler, drop_unknown

SHAPE_KEYS = ('cell', 'num_layers', 'hidden', 'embed')
# A train.minutes budget times this many train steps after the first (which compiles), and this
# many validation batches after the first.
TIMED_STEPS = 10
TIMED_EVAL_BATCHES = 5


class TrainingDiverged(UserError):
  pass


# ---------------------------------------------------------------------------------------------
# Build: the optimizer, the train step and the train state. The state is one pytree: step,
# params, opt_state, carry (hidden state), rng.

def _char_rnn_schedule(optim, steps_per_epoch: int, total_steps: int):
  """char-rnn: after every epoch from `decay_after_epochs` on, lr *= decay_rate."""
  def schedule(step):
    decays = jnp.maximum(0, step // steps_per_epoch - optim.decay_after_epochs + 1)
    return optim.lr * optim.decay_rate ** decays
  return schedule


def _cosine_schedule(optim, steps_per_epoch: int, total_steps: int):
  warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, max(total_steps, warmup + 1),
                                            end_value=optim.lr * optim.min_lr_ratio)


# optim.schedule and optim.name by name: `validate` checks the names against these keys.
SCHEDULES = {
    'constant': lambda optim, steps_per_epoch, total_steps: optax.constant_schedule(optim.lr),
    'char_rnn': _char_rnn_schedule,
    'cosine': _cosine_schedule,
}
OPTIMIZERS = {
    'adam': lambda optim, learning_rate: optax.adam(learning_rate),
    'adamw': lambda optim, learning_rate: optax.adamw(
        learning_rate, weight_decay=optim.weight_decay, mask=decayed),
    'rmsprop': lambda optim, learning_rate: optax.rmsprop(learning_rate,
                                                          decay=optim.rmsprop_decay, eps=1e-8),
    'sgd': lambda optim, learning_rate: optax.sgd(learning_rate, momentum=optim.momentum),
}


def resolve_schedule(config):
  """`config`, with optim.schedule='auto' replaced by what measured best for the run: cosine
  under a train.minutes budget, whose decay then ends when the time is up, constant otherwise
  (docs/speed.md). Other names are kept; a config already resolved is returned as it is."""
  if config.optim.schedule != 'auto':
    return config
  return _replaced(config, 'optim', 'schedule', 'cosine' if budgeted(config) else 'constant')


def make_schedule(optim, steps_per_epoch: int, total_steps: int):
  if optim.schedule not in SCHEDULES:
    *most, last = SCHEDULES
    raise UserError(f'unknown optim.schedule {optim.schedule!r}; use {", ".join(most)} or {last}')
  return SCHEDULES[optim.schedule](optim, steps_per_epoch, total_steps)


def decayed(params):
  """What adamw's weight decay shrinks: the matrices and the embedding (2+ axes), not the
  biases, whose values (an LSTM's forget-gate bias 1) are no sign of overfitting."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim, steps_per_epoch: int, total_steps: int):
  if optim.name not in OPTIMIZERS:
    raise UserError(f'unknown optim.name {optim.name!r}; use one of {", ".join(OPTIMIZERS)}')
  schedule = make_schedule(optim, steps_per_epoch, total_steps)
  maker = functools.partial(OPTIMIZERS[optim.name], optim)
  return optax.chain(
      optax.clip_by_global_norm(optim.clip) if optim.clip > 0 else optax.identity(),
      optax.inject_hyperparams(maker)(learning_rate=schedule))


def make_train_step(model, tx):
  def train_step(state, inputs, targets, weights, reset):
    carry = reset_where(reset, state['carry'])
    rng = jax.random.fold_in(state['rng'], state['step'])

    def loss_fn(params):
      logits, new_carry = model.apply({'params': params}, inputs, carry, train=True,
                                      rngs={'dropout': rng})
      total, count = cross_entropy_sum(logits, targets, weights)
      return total, (count, new_carry)

    # The sum's gradient, divided by the weight after: the backward pass then does not wait
    # for the batch's total weight (a cross-device sum when the batch is split).
    (total, (count, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    loss, grads = total / count, jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = dict(state, step=state['step'] + 1, params=optax.apply_updates(
        state['params'], updates), opt_state=opt_state, carry=new_carry)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'lr': opt_state[-1].hyperparams['learning_rate']}
    return new_state, metrics
  return train_step


def build(config, vocab_size: int, steps_per_epoch: int):
  """The model, the optimizer and `init_state(key)`, which makes the whole train state."""
  model = model_lib.from_config(config.model, vocab_size,
                                config.train.batch_size // jax.device_count())
  tx = make_optimizer(resolve_schedule(config).optim, steps_per_epoch, config.train.steps)

  def init_state(key):
    params = model.init(key, jnp.zeros((1, 1), jnp.int32), model.initial_carry(1))['params']
    return {'step': jnp.int32(0), 'params': params, 'opt_state': tx.init(params),
            'carry': model.initial_carry(config.train.batch_size),
            'rng': jax.random.fold_in(key, 1)}
  return model, tx, init_state


def budgeted(config) -> bool:
  """Whether the run has a train.minutes budget (a config without the field has none)."""
  return bool(config.train.get('minutes'))


def state_shardings(abstract, mesh):
  """Everything replicated but the carried hidden state, which is split with the batch."""
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  shardings['carry'] = jax.tree.map(lambda _: sharding.batch_sharding(mesh), abstract['carry'])
  return shardings


# ---------------------------------------------------------------------------------------------
# Restore: a workdir resumes only the run that wrote it.

def default_workdir(config) -> str:
  return os.path.join('runs', config.name)


def _shape(config) -> dict:
  return {k: config.model[k] for k in SHAPE_KEYS}


def _check_compatible(meta: dict, vocab, config, workdir):
  validate.check_meta(meta, workdir)
  if meta['vocab'] != vocab.to_json():
    raise UserError(f'{workdir} holds checkpoints made with another vocabulary (another text '
                    'or data.level); use a new --workdir or delete the old one')
  old = {k: meta['config']['model'][k] for k in SHAPE_KEYS}
  if old != _shape(config):
    raise UserError(f'{workdir} holds checkpoints of another model shape ({old}, now '
                    f'{_shape(config)}); use a new --workdir or the same model settings')
  old_batch = meta['config']['train']['batch_size'], meta['config']['train']['seq_len']
  if old_batch != (config.train.batch_size, config.train.seq_len):
    raise UserError(f'{workdir} was trained with batch_size, seq_len = {old_batch}; resume '
                    'with the same values or use a new --workdir')
  old_minutes = meta['config']['train'].get('minutes') or 0.0
  if old_minutes != (config.train.get('minutes') or 0.0):
    raise UserError(f'{workdir} was started with train.minutes={old_minutes:g}, now '
                    f'{config.train.minutes:g}; the budget set the step count of the whole run, '
                    'so resume with the same value or use a new --workdir')
  old_optim = meta['config']['optim'].get('name')
  if old_optim != config.optim.name:
    raise UserError(f'{workdir} holds checkpoints made with optim.name={old_optim!r}, now '
                    f'{config.optim.name!r}; resume with the same optimizer or use a new --workdir')


def _restore_newest_readable(ckpts, target, vocab, config, workdir):
  """(step, state, meta) of the newest checkpoint that reads back, None when there is none.

  One that a crash or a bad disk left unreadable is reported and skipped, never deleted (the
  save of the same step replaces it)."""
  steps = sorted(ckpts.all_steps(), reverse=True)
  for step in steps:
    try:
      meta = ckpts.restore_meta(step)
    except Exception as e:  # Whatever Orbax or tensorstore raise on bad bytes.
      _report_unreadable(ckpts, step, workdir, e)
      continue
    _check_compatible(meta, vocab, config, workdir)
    try:
      state, meta = ckpts.restore(step, target)
    except Exception as e:
      _report_unreadable(ckpts, step, workdir, e)
      continue
    return step, state, meta
  if steps:
    raise UserError(f'no checkpoint in {workdir} is readable (steps {", ".join(map(str, steps))} '
                    f'are corrupt or truncated); move {ckpts.directory} away to start over')
  return None


def _report_unreadable(ckpts, step, workdir, error):
  ckpts.unreadable.add(step)
  print(f'warning: {checkpoint.unreadable(step, workdir, error)}; falling back to an older one',
        flush=True)


# ---------------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns its final metrics. Process 0 holds the
  workdir's lock throughout, so a second run of the same workdir stops before doing anything;
  an error in any process of a multi-process run ends them all."""
  validate.validate(config, workdir)  # Before the lock, which would make the workdir.
  with sharding.stop_together():  # One process's error stops them all.
    if jax.process_index() != 0:
      return _train_and_evaluate(config, workdir)
    with locks.workdir_lock(workdir):
      return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`, validated, under its lock."""
  run_start = time.perf_counter()  # Where a train.minutes budget starts.
  config = resolve_schedule(config)  # config.json records the schedule that runs.
  tc = config.train
  text = corpora.text_path(config.data)
  validate.check_text_file(text, config.data.level)
  corpus = data_lib.prepare(text, config.data.level, config.data.cache_dir)
  validate.warn_if_blank(corpus.vocab, corpus.tokens, text)
  splits = data_lib.split(corpus.tokens, config.data.split)
  validate.check_splits(config, splits)
  mesh = sharding.create_mesh()
  sharding.check_batch_size(tc.batch_size, mesh)
  rows = sharding.process_rows(mesh, tc.batch_size)
  train_iter = data_lib.TrainIterator(data_lib.Streams(splits['train'], tc.batch_size,
                                                       tc.seq_len, rows=rows))
  model, tx, init_state = build(config, corpus.vocab.size, train_iter.steps_per_epoch)
  abstract = jax.eval_shape(init_state, jax.random.PRNGKey(tc.seed))
  state_sharding = state_shardings(abstract, mesh)

  os.makedirs(workdir, exist_ok=True)
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), keep=tc.keep_checkpoints)
  progress = {'best_val_loss': None, 'evals_since_best': 0}
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, state_sharding)
  restored = _restore_newest_readable(ckpts, target, corpus.vocab, config, workdir)
  if restored is not None:
    start, state, meta = restored
    train_iter.set_state(meta['data'])
    progress.update(meta['progress'])
    print(f'resuming {workdir} from step {start}', flush=True)
  else:
    start = 0
    state = jax.jit(init_state, out_shardings=state_sharding)(jax.random.PRNGKey(tc.seed))

  data = sharding.batch_sharding(mesh)
  compile_step = lambda tx: jax.jit(make_train_step(model, tx),
                                    in_shardings=(state_sharding, data, data, data, None),
                                    out_shardings=(state_sharding, None), donate_argnums=0)
  train_step = compile_step(tx)
  evaluator = Evaluator(model, mesh, tc.batch_size, tc.seq_len)
  sampler = Sampler(model, corpus.vocab)
  to_global = lambda a: sharding.to_global(mesh, a, tc.batch_size)
  timing, deadline = None, None
  if budgeted(config):  # The budget decides train.steps: recorded, or timed on a fresh run.
    if restored is not None:
      steps = meta['config']['train']['steps']
    else:
      steps, timing = _fit_budget(config, workdir, run_start, train_step, state, train_iter,
                                  evaluator, splits['val'], sampler, to_global)
      deadline = run_start + 60 * tc.minutes
    config = _with_steps(config, steps)
    tc = config.train
    if config.optim.schedule == 'cosine':  # Its decay ends at the new count.
      tx = make_optimizer(config.optim, train_iter.steps_per_epoch, tc.steps)
      train_step = compile_step(tx)
    print(f'train.minutes={tc.minutes:g}: {tc.steps} steps' + (
        f' (a step {timing["step_s"]:.3g} s, with evaluations, checkpoints and samples '
        f'{timing["per_step_s"]:.3g} s)' if timing else ', as recorded'), flush=True)

  writer = MetricWriter(workdir, start)  # Drops what a crash logged after `start`.
  if writer.active:
    platform = mesh.devices.flat[0].platform.upper()
    resolved = model_lib.resolved(model)
    print(f'training on {mesh.size} {platform} device{"s" if mesh.size > 1 else ""}, '
          f'{resolved.describe()}', flush=True)
    train_resolved = {'devices': mesh.size, 'params': model_lib.count_params(abstract['params']),
                      'steps': tc.steps}
    if budgeted(config):
      train_resolved['budget'] = timing or _recorded_timing(workdir)
    path = os.path.join(workdir, 'config.json')
    with disk_full_is_user_error(path):
      atomic.write_json(path, {  # With what 'auto' chose.
          **json.loads(config.to_json_best_effort()), 'resolved': {
              'model': resolved.to_json(), 'train': train_resolved}}, indent=2)
    if start == 0:  # A resumed run keeps the hyperparameters its start wrote.
      writer.hparams(hparams_of(config))
    path = os.path.join(workdir, 'vocab.json')
    with disk_full_is_user_error(path):
      atomic.write_json(path, corpus.vocab.to_json())

  chars_per_step = tc.batch_size * tc.seq_len
  summary = {'step': start, 'interrupted': False, 'workdir': workdir}

  def meta_for_checkpoint():
    return {'data': train_iter.get_state(), 'progress': progress, 'vocab': corpus.vocab.to_json(),
            'config': json.loads(config.to_json_best_effort())}

  if start >= tc.steps:
    fix = ('the train.minutes budget set it; use a new --workdir to train longer'
           if budgeted(config) else 'raise --config.train.steps to train further')
    print(f'{workdir} is already trained to step {start} (train.steps={tc.steps}); {fix}',
          flush=True)

  pending = []  # (step, metrics on device), fetched every log_every steps.
  window_start, window_steps = time.perf_counter(), 0
  bar = loop.ProgressBar(start, tc.steps, deadline)
  step = start
  try:
    with loop.StopRequests() as stop:
      while step < tc.steps:
        batch = next(train_iter)
        state, metrics = train_step(state, to_global(batch.inputs), to_global(batch.targets),
                                    to_global(batch.weights), jnp.bool_(batch.reset))
        step += 1
        pending.append((step, metrics))
        window_steps += 1
        due = functools.partial(loop.is_due, step, total_steps=tc.steps)
        synced = due(tc.log_every) or due(tc.eval_every) or due(tc.ckpt_every)
        stopping = stop.agreed(synced)  # Once: a signal during this step's saves waits a step.

        if synced or stopping:
          fetched = _fetch(pending)
          pending = []
          elapsed = time.perf_counter() - window_start
          rate = window_steps * chars_per_step / max(elapsed, 1e-9)
          train_loss = float(np.mean([m['loss'] for _, m in fetched]))
          row = {'train/loss': train_loss, 'train/bpc': train_loss / LN2,
                 'grad_norm': fetched[-1][1]['grad_norm'], 'lr': fetched[-1][1]['lr'],
                 'chars_per_sec': rate, 'epoch': train_iter.epoch}
          writer.scalars(step, row)
          bar.update(step, train_loss, rate)

        # Evaluate, save, then sample: the checkpoint records this evaluation (its val loss
        # ranks the best checkpoint, its progress makes resume exact), and an error while
        # evaluating first saves the steps without a val loss, so an error loses nothing.
        val_loss = None
        if due(tc.eval_every):
          try:
            result = evaluator(state['params'], splits['val'], tc.eval_batches)
          except Exception:
            ckpts.save(step, state, meta_for_checkpoint())
            bar.note(f'evaluation at step {step} failed; checkpoint saved without a val loss')
            raise
          val_loss = result['loss']
          writer.scalars(step, {'val/loss': val_loss, 'val/bpc': result['bpc']})
          bar.note(f'step {step}: val loss {val_loss:.4f} nats, {result["bpc"]:.4f} bpc')
          best = progress['best_val_loss']
          if best is None or val_loss < best:
            progress['best_val_loss'], progress['evals_since_best'] = val_loss, 0
          else:
            progress['evals_since_best'] += 1
          summary['val_loss'], summary['val_bpc'] = val_loss, result['bpc']
        patience_over = tc.patience and progress['evals_since_best'] >= tc.patience
        if due(tc.ckpt_every) or patience_over or stopping:
          ckpts.save(step, state, meta_for_checkpoint(), val_loss)
        if writer.active and tc.sample_every and due(tc.sample_every):
          _write_samples(writer, sampler, sharding.local_copy(state['params']), config, step,
                         summary.get('val_loss'))
        writer.flush()
        if step == start + 1 or pending == []:  # Keep compile, eval and saves out of chars/s.
          jax.block_until_ready(state['step'])
          window_start, window_steps = time.perf_counter(), 0
        if stopping:
          summary['interrupted'] = True
          bar.note(f'interrupted at step {step}; checkpoint saved. Run the same command to '
                   'resume.')
          break
        if patience_over:
          bar.note(f'early stop at step {step}: no val improvement in {tc.patience} evals')
          break
  finally:  # Each closes even where another fails (a full disk).
    bar.close()
    try:
      ckpts.close()
    finally:
      writer.close()

  summary['step'] = step
  summary['best_val_loss'] = progress['best_val_loss']
  if tc.final_sample_length and not summary['interrupted'] and jax.process_index() == 0:
    prime = _usable_prime(corpus.vocab, tc.sample_prime)
    text = sampler.sample(sharding.local_copy(state['params']), prime, tc.final_sample_length,
                          temperature=0.8, seed=tc.seed)[0]
    summary['sample'] = text
    print(f'\n--- sample at step {step} (temperature 0.8) ---\n{text}\n---', flush=True)
  return summary


def _with_steps(config, steps: int):
  """A copy of `config` with train.steps = `steps` (what a budget resolved to)."""
  return _replaced(config, 'train', 'steps', int(steps))


def _replaced(config, section: str, field: str, value):
  """A locked copy of `config` with section.field = `value`: what the run resolved."""
  config = ml_collections.ConfigDict(config.to_dict())
  config[section][field] = value
  config.lock()
  return config


def _recorded_timing(workdir: str) -> dict | None:
  """The timing a budgeted run recorded in its config.json when it started, kept on resume."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      return json.load(f)['resolved']['train'].get('budget')
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _fit_budget(config, workdir, run_start, train_step, state, train_iter, evaluator, val_tokens,
                sampler, to_global) -> tuple[int, dict]:
  """(train.steps that fit the train.minutes budget, the timing behind it).

  Runs the run's own compiled pieces on a scratch copy of the fresh state (the run itself then
  starts from step 0 unchanged): TIMED_STEPS train steps after a compiling one, TIMED_EVAL_BATCHES
  validation batches (scaled to a whole evaluation), a checkpoint save into a scratch directory,
  and, where the run samples, a sample. The budget counts from `run_start`; what is spent by now
  (preparing the data, compiling, this timing) and a second compile where the schedule depends
  on the step count are taken off first. In a multi-process run, process 0's count is used."""
  tc = config.train
  scratch = jax.tree.map(jnp.copy, state)
  batches = data_lib.TrainIterator(train_iter.streams)  # The run's own iterator stays at 0.

  def run_steps(n):
    nonlocal scratch
    began = time.perf_counter()
    for _ in range(n):
      batch = next(batches)
      scratch, _ = train_step(scratch, to_global(batch.inputs), to_global(batch.targets),
                              to_global(batch.weights), jnp.bool_(batch.reset))
    jax.block_until_ready(scratch)
    return time.perf_counter() - began

  first = run_steps(1)
  step_s = run_steps(TIMED_STEPS) / TIMED_STEPS
  compile_s = max(first - step_s, 0.0)

  eval_batches = evaluator.streams(val_tokens, 'the validation split').num_batches
  if tc.eval_batches:
    eval_batches = min(eval_batches, tc.eval_batches)
  evaluator(scratch['params'], val_tokens, 1)  # Compiles.
  timed = min(TIMED_EVAL_BATCHES, eval_batches)
  began = time.perf_counter()
  evaluator(scratch['params'], val_tokens, timed)
  eval_s = (time.perf_counter() - began) / timed * eval_batches

  scratch_dir = os.path.join(workdir, '.budget-timing')
  began = time.perf_counter()
  ckpts = Checkpoints(scratch_dir, keep=1)
  ckpts.save(0, scratch, {'timing': True})
  ckpts.close()
  save_s = time.perf_counter() - began
  sharding.barrier('charlm-budget-timing')
  if jax.process_index() == 0:
    shutil.rmtree(scratch_dir, ignore_errors=True)

  periodic = {'eval': (eval_s, tc.eval_every), 'checkpoint': (save_s, tc.ckpt_every)}
  temperatures = list(tc.sample_temperatures)
  if tc.sample_every and temperatures and jax.process_index() == 0:
    params = sharding.local_copy(scratch['params'])
    sample = lambda: sampler.sample(params, _usable_prime(sampler.vocab, tc.sample_prime),
                                    tc.sample_length, temperature=temperatures, seed=tc.seed,
                                    num_samples=len(temperatures))
    sample()  # Compiles.
    began = time.perf_counter()
    sample()
    periodic['sample'] = (time.perf_counter() - began, tc.sample_every)
  del scratch

  recompile_s = compile_s if config.optim.schedule == 'cosine' else 0.0
  left = 60 * tc.minutes - (time.perf_counter() - run_start) - recompile_s
  steps = sharding.broadcast_from_first(loop.steps_within(left, step_s, periodic))
  timing = {'step_s': step_s, 'compile_s': compile_s, 'eval_s': eval_s, 'save_s': save_s,
            'sample_s': periodic.get('sample', (0.0,))[0],
            'per_step_s': loop.seconds_per_step(step_s, periodic), 'seconds_left': left}
  if steps < 1:
    raise UserError(
        f'train.minutes={tc.minutes:g} leaves no time to train: {60 * tc.minutes - left:.0f} s '
        f'go to preparing and compiling, and a step with its evaluations and checkpoints takes '
        f'{timing["per_step_s"]:.3g} s, the last one {loop.seconds_at_end(periodic):.3g} s more; '
        'give more minutes (or evaluate less: train.eval_batches)')
  return steps, timing


def _fetch(pending):
  """Brings pending step metrics to the host; a non-finite loss stops the run."""
  fetched = jax.device_get(pending)
  for step, m in fetched:
    if not (np.isfinite(m['loss']) and np.isfinite(m['grad_norm'])):
      raise TrainingDiverged(
          f'loss or gradient became non-finite at step {step} (loss {m["loss"]}, grad norm '
          f'{m["grad_norm"]}); stopped without saving, so the last checkpoint is still good. '
          'Lower --config.optim.lr or set --config.optim.clip')
  return fetched


def _usable_prime(vocab, prime: str) -> str:
  return drop_unknown(vocab, prime, 'skip')[0]


def _write_samples(writer, sampler, params, config, step, val_loss):
  """Writes a sample per train.sample_temperatures to TensorBoard and samples.md.

  All temperatures are one batch from a fixed prime and seed, so successive steps compare.
  """
  tc = config.train
  temperatures = list(tc.sample_temperatures)
  if not temperatures:
    return
  texts = sampler.sample(params, _usable_prime(sampler.vocab, tc.sample_prime), tc.sample_length,
                         temperature=temperatures, seed=tc.seed, num_samples=len(temperatures))
  writer.samples(step, temperatures, texts, val_loss)
