"""The best model per training budget: charlm's recipes against the tuned PyTorch peer.

    python experiments/bench_quality.py                    # 5 and 15 minutes (about 80 minutes)
    python experiments/bench_quality.py --budgets 5 --peer 2x256:0.2:3e-3 --out ''   # one look
    python experiments/bench_quality.py --recipe 'configs/linux.py:cpu{minutes}' --text '' \
        --no_peer --nodynamic --test --out experiments/results/recipes_linux_cpu.json

On ../shared/data/tinyshakespeare.txt, split 90/10 as nanoGPT's shakespeare_char, for each
budget of M minutes:
- charlm trains its recipe `configs/tinyshakespeare.py:cpuM` as `charlm.train` runs it, with
  `train.minutes=M` (the budget counts everything from the start of the run: preparing the
  text, compiling, timing, evaluating, saving), and reports the best validation loss it
  logged (the whole split; the recipes set eval_batches=0), then the best checkpoint scored
  on that split with dynamic evaluation (`Model.evaluate_dynamic`, its default settings).
- the peer (../shared/bench/torch_charrnn.py quality: torch.nn.LSTM, Adam, clipping 5,
  constant learning rate) trains for M minutes of its own training time (its evaluations not
  counted), once per --peer setting at the first budget (a small sweep of its own over layers,
  size, dropout and learning rate); at later budgets with the best of them.
Everything runs one after the other in this process' order, so the load average is recorded.
With --text '' the recipe trains on its own corpus (charlm only), as the other corpus configs'
`:cpuM` docstrings quote.
Published anchors printed beside them (not run here): nanoGPT's 10.7M-parameter Transformer,
1.4697 nats after about 3 minutes on an A100; its CPU recipe, about 1.88 after about 3 minutes.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import common
from absl import app, flags

ROOT = common.ROOT
LN2 = math.log(2)
ANCHORS = {'nanoGPT Transformer (10.7M, ~3 min on an A100)': 1.4697,
           'nanoGPT CPU recipe (~3 min)': 1.88}

_TEXT = flags.DEFINE_string('text', os.path.join(ROOT, '..', 'shared', 'data',
                                                 'tinyshakespeare.txt'),
                            "The corpus ('': the recipe's own, with --no_peer).")
_TEST = flags.DEFINE_bool('test', False, "Score charlm's best checkpoint on the test split too "
                          '(the whole split; corpora that have one).')
_BUDGETS = flags.DEFINE_list('budgets', ['5', '15'], 'Training budgets in minutes.')
_RECIPE = flags.DEFINE_string('recipe', 'configs/tinyshakespeare.py:cpu{minutes}',
                              "charlm's config for a budget ({minutes} is replaced).")
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'SECTION.FIELD=VALUE for charlm\'s runs '
                                       '(repeatable), after the recipe.')
_PEER = flags.DEFINE_list('peer', ['2x256:0:2e-3', '2x256:0.2:3e-3', '2x512:0.25:2e-3'],
                          "The peer's settings to sweep at the first budget: "
                          'LAYERSxHIDDEN:DROPOUT:LR[:BATCHxSEQ] (default batch 32 x 64).')
_EVAL_SECONDS = flags.DEFINE_float('eval_seconds', 30.0, "The peer's training seconds between "
                                   'evaluations.')
_DYNAMIC = flags.DEFINE_bool('dynamic', True, "Score charlm's best checkpoint with dynamic "
                             'evaluation too.')
_PEER_PYTHON = flags.DEFINE_string('peer_python', '', "The peer's python ('': from setup.sh).")
_NO_PEER = flags.DEFINE_bool('no_peer', False, 'Run charlm only.')
_NO_CHARLM = flags.DEFINE_bool('no_charlm', False, 'Run the peer only (its sweep, say).')
_RUNS = flags.DEFINE_string('runs', os.path.join(ROOT, 'runs', 'bench_quality'),
                            "Where charlm's workdirs go (each budget's is replaced).")
_OUT = flags.DEFINE_string('out', os.path.join(ROOT, 'experiments', 'results',
                                               'bench_quality_cpu.json'), "JSON ('': none).")


def parse_peer(text: str) -> dict:
  parts = text.split(':')
  if len(parts) not in (3, 4):
    raise SystemExit(f'--peer {text!r}: give LAYERSxHIDDEN:DROPOUT:LR[:BATCHxSEQ]')
  layers, hidden = map(int, parts[0].split('x'))
  batch, seq = map(int, parts[3].split('x')) if len(parts) == 4 else (32, 64)
  return {'layers': layers, 'hidden': hidden, 'dropout': float(parts[1]), 'lr': float(parts[2]),
          'batch': batch, 'seq': seq, 'name': text}


def charlm_run(minutes: float) -> dict:
  """charlm.train of the budget's recipe in a fresh workdir; its best logged val loss."""
  recipe = _RECIPE.value.format(minutes=f'{minutes:g}')
  workdir = os.path.join(_RUNS.value, f'charlm_{minutes:g}min')
  shutil.rmtree(workdir, ignore_errors=True)
  argv = [sys.executable, '-m', 'charlm.train', '--config', recipe, '--workdir', workdir]
  argv += [f'--config.data.path={os.path.abspath(_TEXT.value)}'] if _TEXT.value else []
  argv += [f'--config.train.minutes={minutes:g}', '--config.train.final_sample_length=0']
  argv += [f'--config.{o}' for o in _OVERRIDES.value]
  print(' '.join(argv[1:]), flush=True)
  subprocess.run(argv, cwd=ROOT, check=True)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  evals = [{'step': r['step'], 'val_loss': r['val/loss']} for r in rows if 'val/loss' in r]
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  best = min(e['val_loss'] for e in evals)
  result = {'recipe': recipe, 'command': ' '.join(['python'] + argv[1:]), 'workdir': workdir,
            'val_loss_best': best, 'val_bpc_best': best / LN2, 'steps': config['train']['steps'],
            'train_chars': config['train']['steps'] * config['train']['batch_size']
            * config['train']['seq_len'], 'evals': evals,
            'budget': config['resolved']['train'].get('budget'),
            'model': {k: config['model'][k] for k in ('cell', 'num_layers', 'hidden')},
            'params': config['resolved']['train'].get('params')}
  if _TEST.value:
    import charlm
    scored = charlm.load(workdir, 'best').evaluate('test')
    result.update(test_loss=scored['loss'], test_bpc=scored['bpc'], test_step=scored['step'])
    print(f'charlm {minutes:g} min: test {scored["loss"]:.4f} at step {scored["step"]}',
          flush=True)
  if _DYNAMIC.value:
    import charlm
    scored = charlm.load(workdir, 'best').evaluate_dynamic('val')
    result.update(dynamic_val_loss=scored['loss'], dynamic_val_bpc=scored['bpc'],
                  dynamic=scored['dynamic'])
    static = charlm.load(workdir, 'best').evaluate('val', batch_size=1)
    result['static_val_loss_one_stream'] = static['loss']
    print(f'charlm {minutes:g} min: best val {best:.4f}, one stream {static["loss"]:.4f}, '
          f'dynamic {scored["loss"]:.4f}', flush=True)
  return result


def peer_run(python: str, setting: dict, minutes: float) -> dict:
  argv = [python, os.path.join(common.PEER_DIR, 'torch_charrnn.py'), 'quality', '--text',
          _TEXT.value, '--minutes', str(minutes), '--eval_seconds', str(_EVAL_SECONDS.value),
          '--layers', str(setting['layers']), '--hidden', str(setting['hidden']), '--batch',
          str(setting['batch']), '--seq', str(setting['seq']), '--eval_batch',
          str(setting['batch']), '--dropout', str(setting['dropout']), '--lr',
          str(setting['lr']), '--clip', '5.0', '--val_frac', '0.1']
  print(f'peer {setting["name"]}, {minutes:g} min', flush=True)
  out = subprocess.run(argv, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f'the peer failed:\n{out.stderr[-2000:]}')
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result['setting'] = setting
  print(f'peer {setting["name"]}: best val {result["val_loss_best"]:.4f}', flush=True)
  return result


def main(argv):
  del argv
  sys.path.insert(0, ROOT)
  common.set_up_host()
  budgets = [float(b) for b in _BUDGETS.value]
  settings = [parse_peer(p) for p in _PEER.value]
  if not _TEXT.value and not _NO_PEER.value:
    raise SystemExit("--text '' (the recipe's own corpus) needs --no_peer: the peer reads a file")
  result = {'command': ' '.join(['python', 'experiments/bench_quality.py'] + sys.argv[1:]),
            'machine': common.machine(), 'matmul_gflops': common.matmul_rate(),
            'text': os.path.basename(_TEXT.value) or _RECIPE.value,
            'split': '90/10 (nanoGPT)' if _TEXT.value else "the recipe's",
            'anchors': ANCHORS, 'budgets': {}, 'load': [os.getloadavg()]}
  python = None if _NO_PEER.value else common.peer_python(_PEER_PYTHON.value)
  best_setting = None
  for minutes in budgets:
    entry = result['budgets'][f'{minutes:g}'] = {}
    if not _NO_CHARLM.value:
      entry['charlm'] = charlm_run(minutes)
      result['load'].append(os.getloadavg())
    if python:
      if best_setting is None:
        sweep = [peer_run(python, s, minutes) for s in settings]
        best = min(sweep, key=lambda r: r['val_loss_best'])
        best_setting = best['setting']
        entry['peer'] = dict(best, sweep=[{'setting': r['setting']['name'], 'val_loss_best':
                                           r['val_loss_best']} for r in sweep])
      else:
        entry['peer'] = peer_run(python, best_setting, minutes)
      result['load'].append(os.getloadavg())
  print(f'\n{result["text"]} ({result["split"]}), 2-core CPU at {result["matmul_gflops"]:.0f} '
        f'GFLOP/s (float32 matmul); load averages {[round(x[0], 1) for x in result["load"]]}\n')
  print('| budget | charlm val nats (bpc) | + dynamic evaluation | peer val nats (bpc) | '
        'peer setting | charlm recipe |')
  print('| ---: | ---: | ---: | ---: | --- | --- |')
  for minutes, entry in result['budgets'].items():
    c, p = entry.get('charlm', {}), entry.get('peer')
    dyn = f'{c["dynamic_val_loss"]:.4f}' if 'dynamic_val_loss' in c else ''
    mine = f'{c["val_loss_best"]:.4f} ({c["val_bpc_best"]:.4f})' if c else ''
    peer = f'{p["val_loss_best"]:.4f} ({p["val_loss_best"] / LN2:.4f})' if p else ''
    print(f'| {minutes} min | {mine} | {dyn} | {peer} | {p["setting"]["name"] if p else ""} | '
          f'{c.get("recipe", "")} |')
    for row in (p or {}).get('sweep', []):
      print(f'  peer sweep: {row["setting"]}: {row["val_loss_best"]:.4f}')
  for name, loss in ANCHORS.items():
    print(f'anchor: {name}: {loss}')
  if _OUT.value:
    common.write_results(_OUT.value, result)


if __name__ == '__main__':
  app.run(main)
