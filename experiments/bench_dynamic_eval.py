"""Dynamic evaluation against static: a sweep of its learning rate and decay, then the chosen
setting on whole splits (charlm.dynamic; Krause et al. 2018).

    python experiments/bench_dynamic_eval.py      # about 10 minutes on a 2-core CPU
    python experiments/bench_dynamic_eval.py --lrs 1e-4 --decays 0 --sweep_chars 5000 \
        --checks '' --out ''   # a quick look

The sweep scores the first --sweep_chars characters of --sweep_run's validation split for
every --lrs x --decays, as one stream (the text in its own order) in segments of --seq, the
gradient RMS taken once over --grad_batches windows of the training split. The setting with
the lowest loss then scores each of --checks (RUN:SPLIT, whole) beside static evaluation of the
same text as one stream and as the run's batch of streams (the number training logs). Losses
in nats per character (per byte for a byte-level run). Needs trained runs: by default the
`configs/linux.py:small` and `configs/shakespeare.py:small` runs in ../runs (only read).
"""
import math
import os
import time

import common
from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, '..', 'runs')

_SWEEP_RUN = flags.DEFINE_string('sweep_run', os.path.join(RUNS, 'linux_small'),
                                 'The trained run the sweep scores.')
_SWEEP_CHARS = flags.DEFINE_integer('sweep_chars', 20000, 'Validation characters per setting.')
_LRS = flags.DEFINE_list('lrs', ['1e-5', '3e-5', '1e-4', '3e-4', '1e-3', '3e-3'],
                         'Learning rates.')
_DECAYS = flags.DEFINE_list('decays', ['0', '1e-3', '1e-2'], 'Decays toward the trained weights.')
_SEQ = flags.DEFINE_integer('seq', 50, 'Characters per segment.')
_GRAD_BATCHES = flags.DEFINE_integer('grad_batches', 100, 'Windows for the gradient RMS.')
_CHECKS = flags.DEFINE_list(
    'checks', [os.path.join(RUNS, 'linux_small') + ':test',
               os.path.join(RUNS, 'shakespeare_small') + ':val'],
    'RUN:SPLIT pairs scored whole with the chosen setting ("": none).')
_OUT = flags.DEFINE_string('out', os.path.join(ROOT, 'experiments', 'results',
                                               'dynamic_eval_cpu.json'), "JSON results ('': none).")


def _rms(model, seq):
  from charlm import dynamic
  return dynamic.gradient_rms(model.module, model.params, model.split_tokens('train'), 1, seq,
                              _GRAD_BATCHES.value)


def _dynamic(model, tokens, ms, lr, decay, seq):
  from charlm import dynamic
  began = time.perf_counter()
  scores = dynamic.evaluate(model.module, model.params, tokens, ms, lr, decay, seq, 1)
  return scores['loss'], scores['chars'] / (time.perf_counter() - began)


def sweep(model) -> list[dict]:
  tokens = model.split_tokens('val')[:_SWEEP_CHARS.value + 1]
  ms = _rms(model, _SEQ.value)
  rows = [{'lr': 0.0, 'decay': 0.0, 'loss': _dynamic(model, tokens, ms, 0.0, 0.0, _SEQ.value)[0]}]
  print(f'\nsweep: {_SWEEP_RUN.value}, val split, first {_SWEEP_CHARS.value:,} characters, '
        f'segments of {_SEQ.value}, one stream\n\n| lr | decay | loss | vs static | chars/s |\n'
        f'|---:|---:|---:|---:|---:|\n| 0 (static) | - | {rows[0]["loss"]:.4f} | | |', flush=True)
  for lr in map(float, _LRS.value):
    for decay in map(float, _DECAYS.value):
      loss, rate = _dynamic(model, tokens, ms, lr, decay, _SEQ.value)
      rows.append({'lr': lr, 'decay': decay, 'loss': loss, 'chars_per_sec': rate})
      print(f'| {lr:g} | {decay:g} | {loss:.4f} | {loss - rows[0]["loss"]:+.4f} | {rate:,.0f} |',
            flush=True)
  return rows


def check(run_split: str, lr: float, decay: float) -> dict:
  import charlm
  run, split = run_split.rsplit(':', 1)
  model = charlm.load(run)
  tokens = model.split_tokens(split)
  static_one = model.evaluate(split=split, batch_size=1)
  static_batch = model.evaluate(split=split)
  loss, rate = _dynamic(model, tokens, _rms(model, _SEQ.value), lr, decay, _SEQ.value)
  row = {'run': run, 'split': split, 'chars': static_one['chars'],
         'static_one_stream': static_one['loss'], 'static_run_batch': static_batch['loss'],
         'run_batch_size': static_batch['batch_size'], 'dynamic': loss,
         'gain': static_one['loss'] - loss, 'dynamic_chars_per_sec': rate}
  print(f'| {os.path.basename(run)} | {split} | {row["chars"]:,} | {row["static_run_batch"]:.4f} | '
        f'{row["static_one_stream"]:.4f} | {loss:.4f} | {-row["gain"]:+.4f} | {rate:,.0f} |',
        flush=True)
  return row


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  import charlm
  started = time.perf_counter()
  rows = sweep(charlm.load(_SWEEP_RUN.value))
  best = min((r for r in rows[1:] if math.isfinite(r['loss'])), key=lambda r: r['loss'])
  print(f'\nchosen: lr {best["lr"]:g}, decay {best["decay"]:g}\n\n| run | split | chars | static '
        '(run batch) | static (one stream) | dynamic | vs one stream | chars/s |\n'
        '|---|---|---:|---:|---:|---:|---:|---:|', flush=True)
  checks = [check(c, best['lr'], best['decay']) for c in _CHECKS.value if c]
  result = {'machine': common.machine(), 'seconds': time.perf_counter() - started,
            'settings': {'sweep_run': _SWEEP_RUN.value, 'sweep_chars': _SWEEP_CHARS.value,
                         'seq': _SEQ.value, 'grad_batches': _GRAD_BATCHES.value, 'streams': 1},
            'sweep': rows, 'chosen': {'lr': best['lr'], 'decay': best['decay']},
            'checks': checks}
  if _OUT.value:
    common.write_results(_OUT.value, result)


if __name__ == '__main__':
  app.run(main)
