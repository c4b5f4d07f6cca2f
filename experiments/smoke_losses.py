"""Bitwise check for refactors: every training path's `:smoke` losses and final parameters.

    python experiments/smoke_losses.py --out /tmp/after.json [--compare /tmp/before.json]

Trains `configs/default.py:smoke` and `configs/shakespeare.py:smoke` (on a text this script
writes) through `python -m charlm.train`, once per path: model.impl fused, scan and wavefront;
GRU and RNN cells; dropout; bfloat16 matmuls; the regularisers (fused, wavefront, GRU); AdamW;
and some of these without a C++ compiler (XLA's loops instead of the native CPU ones). It
records every logged loss, validation loss and gradient norm as exact float hex, and a sha256
of the final parameters. With --compare, it prints which paths differ from an earlier run of
the same script (say on the commit before a refactor; run this file from the newer tree with
PYTHONPATH pointing at the older one) and exits 1 if any does; a path the earlier run lacks is
listed as new. Only the command line is used, so it runs on old and new trees alike.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGULARISERS = ['--config.model.dropout=0.2', '--config.model.locked_dropout=true',
                '--config.model.input_dropout=0.1', '--config.model.embed_dropout=0.1',
                '--config.model.weight_drop=0.2']
CASES = {
    'fused': ['--config.model.impl=fused'],
    'scan': ['--config.model.impl=scan'],
    'wavefront': ['--config.model.impl=wavefront'],
    'auto': [],
    'gru': ['--config.model.cell=gru'],
    'rnn': ['--config.model.cell=rnn'],
    'fused_dropout': ['--config.model.impl=fused', '--config.model.dropout=0.2'],
    'wavefront_dropout': ['--config.model.impl=wavefront', '--config.model.dropout=0.2'],
    'fused_bfloat16': ['--config.model.impl=fused', '--config.model.dtype=bfloat16'],
    'wavefront_bfloat16': ['--config.model.impl=wavefront', '--config.model.dtype=bfloat16'],
    'shakespeare_fused': ['CONFIG=configs/shakespeare.py:smoke', '--config.data.name=',
                          '--config.model.impl=fused'],
    'fused_regularisers': ['--config.model.impl=fused', *REGULARISERS],
    'wavefront_regularisers': ['--config.model.impl=wavefront', *REGULARISERS],
    'gru_regularisers': ['--config.model.cell=gru', *REGULARISERS],
    'adamw': ['--config.optim.name=adamw', '--config.optim.weight_decay=0.1'],
}
XLA_LOOPS = ('fused', 'wavefront', 'fused_dropout', 'shakespeare_fused')  # Also without a compiler.
PARAMS_HASH = """
import hashlib, sys
import jax, numpy as np
import charlm
params = charlm.load(sys.argv[1], 'latest').params
digest = hashlib.sha256()
for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda x: str(x[0])):
  digest.update(str(path).encode()); digest.update(np.asarray(leaf).tobytes())
print(digest.hexdigest())
"""


def write_text(path):
  rng = random.Random(0)
  words = 'the of and to a in that is was he ROMEO JULIET thou art love night'.split()
  with open(path, 'w') as f:
    f.write('\n'.join(' '.join(rng.choice(words) for _ in range(8)) for _ in range(600)) + '\n')


def run_case(name, args, text, tmp, env):
  config = 'configs/default.py:smoke'
  if args and args[0].startswith('CONFIG='):
    config, args = args[0].split('=', 1)[1], args[1:]
  workdir = os.path.join(tmp, name)
  command = [sys.executable, '-m', 'charlm.train', '--config', config, f'--workdir={workdir}',
             f'--config.data.path={text}', f'--config.data.cache_dir={tmp}/cache',
             '--config.train.final_sample_length=0', *args]
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  if out.returncode:
    return {'error': out.stderr.strip().splitlines()[-1:]}
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  keys = ('train/loss', 'val/loss', 'grad_norm')
  losses = [{'step': r['step'], **{k: float(r[k]).hex() for k in keys if k in r}} for r in rows]
  digest = subprocess.run([sys.executable, '-c', PARAMS_HASH, workdir], cwd=ROOT, env=env,
                          capture_output=True, text=True)
  return {'rows': losses, 'params_sha256': digest.stdout.strip() or digest.stderr[-300:]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='JSON results.')
  parser.add_argument('--compare', help='An earlier --out of this script to compare with.')
  args = parser.parse_args()
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    text = os.path.join(tmp, 'text.txt')
    write_text(text)
    native = dict(os.environ, CHARLM_CACHE=os.path.join(tmp, 'native'))
    xla = dict(os.environ, CHARLM_CACHE=os.path.join(tmp, 'nocompiler'), CXX='false')
    for name, case in CASES.items():
      results[name] = run_case(name, case, text, tmp, native)
      print(name, 'ok' if 'rows' in results[name] else results[name], flush=True)
    for name in XLA_LOOPS:
      results[name + '_xla_loops'] = run_case(name + '_xla_loops', CASES[name], text, tmp, xla)
      print(name + '_xla_loops', 'ok' if 'rows' in results[name + '_xla_loops']
            else results[name + '_xla_loops'], flush=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  if not args.compare:
    return
  with open(args.compare) as f:
    before = json.load(f)
  print('\n| path | logged rows | losses bitwise equal | final params equal |\n|---|---:|---|---|')
  differ = 0
  for name, result in results.items():
    if name not in before:  # A path added since: nothing to compare with.
      print(f'| {name} | {len(result.get("rows", []))} | new | new |')
      continue
    old = before[name]
    same_rows = 'rows' in result and result.get('rows') == old.get('rows')
    same_params = 'params_sha256' in result and result['params_sha256'] == old.get('params_sha256')
    differ += not (same_rows and same_params)
    print(f'| {name} | {len(result.get("rows", []))} | {"yes" if same_rows else "NO"} | '
          f'{"yes" if same_params else "NO"} |')
  sys.exit(1 if differ else 0)


if __name__ == '__main__':
  main()
