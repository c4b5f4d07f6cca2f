"""Quality per second: charlm and the PyTorch peer trained for the same training time.

    python experiments/bench_quality.py                      # 5 minutes each (about 12 minutes)
    python experiments/bench_quality.py --minutes 0.5 --out ''   # a quick look

Both train the same model (embedding, L x LSTM(H), linear; Adam 2e-3, clipping 5, no dropout
by default) on ../shared/data/tinyshakespeare.txt, split 90/10 into train and validation, with
the same batch and sequence, the hidden state carried across batches and reset at each epoch.
Only training steps count towards the budget: each side times its own steps to their end
(charlm's first step includes its jit compilation), and evaluates the whole validation split
every --eval_seconds of training time. charlm uses its own pieces (`trainer.build`,
`make_train_step`, `evaluation.Evaluator`, `data.Streams`) on as many devices as `charlm.train`
would (on a CPU `host.cpu_devices`: 1 with the native LSTM loops); the peer is
`../shared/bench/torch_charrnn.py quality`. They run one after the other (charlm first), so the
load average is reported.
Reported: the best validation loss of each, in nats per character and bits per character.
"""
import json
import math
import os
import subprocess
import sys
import time

import common
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared')
LN2 = math.log(2)

_TEXT = flags.DEFINE_string('text', os.path.join(SHARED, 'data', 'tinyshakespeare.txt'),
                            'The corpus.')
_MINUTES = flags.DEFINE_float('minutes', 5.0, 'Training-time budget of each side.')
_EVAL_SECONDS = flags.DEFINE_float('eval_seconds', 60.0, 'Training seconds between evaluations.')
_LAYERS = flags.DEFINE_integer('layers', 2, 'LSTM layers.')
_HIDDEN = flags.DEFINE_integer('hidden', 256, 'LSTM units per layer.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Streams per batch.')
_SEQ = flags.DEFINE_integer('seq', 64, 'Characters per stream per step.')
_DROPOUT = flags.DEFINE_float('dropout', 0.0, 'Dropout between layers and before the output.')
_LR = flags.DEFINE_float('lr', 2e-3, 'Adam learning rate.')
_PEER_PYTHON = flags.DEFINE_string('peer_python', '', "The peer's python ('': from setup.sh).")
_NO_PEER = flags.DEFINE_bool('no_peer', False, 'Run charlm only.')
_OUT = flags.DEFINE_string('out', None, "JSON results (default experiments/results/"
                           "bench_quality_<platform>.json; '': none).")


def charlm_config():
  from configs import default
  config = default.get_config()
  config.unlock()
  config.data.update(path=_TEXT.value, split=(0.9, 0.1, 0.0))
  config.model.update(cell='lstm', num_layers=_LAYERS.value, hidden=_HIDDEN.value,
                      dropout=_DROPOUT.value)
  config.train.update(batch_size=_BATCH.value, seq_len=_SEQ.value)
  config.optim.update(name='adam', lr=_LR.value, clip=5.0, schedule='constant')
  return config


def charlm_run(config, budget_s: float) -> dict:
  import jax
  import jax.numpy as jnp

  from charlm import corpora, evaluation, sharding, trainer
  from charlm import data as data_lib
  corpus = data_lib.prepare(corpora.text_path(config.data), config.data.level,
                            config.data.cache_dir)
  splits = data_lib.split(corpus.tokens, config.data.split)
  mesh = sharding.create_mesh()
  train_iter = data_lib.TrainIterator(data_lib.Streams(splits['train'], _BATCH.value,
                                                       _SEQ.value))
  model, tx, init_state = trainer.build(config, corpus.vocab.size, train_iter.steps_per_epoch)
  key = jax.random.PRNGKey(0)
  shardings = trainer.state_shardings(jax.eval_shape(init_state, key), mesh)
  state = jax.jit(init_state, out_shardings=shardings)(key)
  data = sharding.batch_sharding(mesh)
  step = jax.jit(trainer.make_train_step(model, tx),
                 in_shardings=(shardings, data, data, data, None),
                 out_shardings=(shardings, None), donate_argnums=0)
  evaluator = evaluation.Evaluator(model, mesh, _BATCH.value, _SEQ.value)
  to_global = lambda a: sharding.to_global(mesh, a, _BATCH.value)

  elapsed, next_eval, steps, history, best = 0.0, _EVAL_SECONDS.value, 0, [], math.inf
  while True:
    batch = next(train_iter)
    start = time.perf_counter()
    state, metrics = step(state, to_global(batch.inputs), to_global(batch.targets),
                          to_global(batch.weights), jnp.bool_(batch.reset))
    jax.block_until_ready(metrics)
    elapsed += time.perf_counter() - start
    steps += 1
    if elapsed >= next_eval or elapsed >= budget_s:
      loss = evaluator(state['params'], splits['val'])['loss']
      best = min(best, loss)
      history.append({'seconds': round(elapsed, 1), 'step': steps, 'val_loss': loss})
      print(f'charlm {json.dumps(history[-1])}', flush=True)
      next_eval += _EVAL_SECONDS.value
      if elapsed >= budget_s:
        break
  return {'val_loss_best': best, 'val_bpc_best': best / LN2, 'steps': steps,
          'train_chars': steps * _BATCH.value * _SEQ.value, 'vocab': corpus.vocab.size,
          'history': history, 'jax': jax.__version__, 'device': jax.devices()[0].device_kind,
          'devices': mesh.size}


def peer_run(python: str, budget_s: float) -> dict:
  argv = [python, os.path.join(common.PEER_DIR, 'torch_charrnn.py'), 'quality', '--text',
          _TEXT.value, '--minutes', str(budget_s / 60), '--eval_seconds',
          str(_EVAL_SECONDS.value), '--layers', str(_LAYERS.value), '--hidden',
          str(_HIDDEN.value), '--batch', str(_BATCH.value), '--seq', str(_SEQ.value),
          '--eval_batch', str(_BATCH.value), '--dropout', str(_DROPOUT.value), '--lr',
          str(_LR.value), '--clip', '5.0', '--val_frac', '0.1']
  process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in process.stderr:  # The peer reports each evaluation on stderr.
    if line.startswith('{'):
      print(f'peer {line.strip()}', flush=True)
  out = process.stdout.read()
  if process.wait():
    raise SystemExit(f'the peer failed:\n{out}')
  return json.loads(out.strip().splitlines()[-1])


def main(argv):
  del argv
  sys.path.insert(0, ROOT)
  from charlm import host
  host.keep_freed_memory()  # As charlm.train does, before JAX starts its threads.
  config = charlm_config()
  host.use_cpu_devices(host.cpu_devices(config))  # On a CPU, as many devices as charlm.train.
  import jax
  budget = _MINUTES.value * 60
  result = {'config': {k: flag.value for k, flag in (
      ('layers', _LAYERS), ('hidden', _HIDDEN), ('batch', _BATCH), ('seq', _SEQ),
      ('dropout', _DROPOUT), ('lr', _LR), ('minutes', _MINUTES),
      ('eval_seconds', _EVAL_SECONDS))}, 'text': os.path.basename(_TEXT.value),
      'split': '90/10', 'cpu_count': os.cpu_count(), 'load_before': os.getloadavg()}
  result['charlm'] = charlm_run(config, budget)
  result['load_between'] = os.getloadavg()
  if not _NO_PEER.value:
    python = common.peer_python(_PEER_PYTHON.value)
    result['peer'] = peer_run(python, budget)
  result['load_after'] = os.getloadavg()

  print(f'\n{_LAYERS.value}x{_HIDDEN.value} LSTM, batch {_BATCH.value} x {_SEQ.value}, '
        f'dropout {_DROPOUT.value}, {_MINUTES.value:g} minutes of training each on '
        f'{result["text"]} (90/10), charlm on {result["charlm"]["devices"]} '
        f'{result["charlm"]["device"]} device(s); load average {result["load_before"][0]:.1f} / '
        f'{result["load_between"][0]:.1f} / {result["load_after"][0]:.1f}\n')
  print('| | best val loss (nats) | best val bpc | steps | training chars |')
  print('| --- | ---: | ---: | ---: | ---: |')
  for name in ('charlm', 'peer'):
    if name in result:
      r = result[name]
      print(f'| {name} | {r["val_loss_best"]:.4f} | {r["val_bpc_best"]:.4f} | {r["steps"]:,} | '
            f'{r["train_chars"]:,} |')
  out = _OUT.value
  if out is None:
    out = os.path.join(ROOT, 'experiments', 'results',
                       f'bench_quality_{jax.devices()[0].platform}.json')
  if out:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
      json.dump(result, f, indent=2)
    print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
