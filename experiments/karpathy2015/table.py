"""The table of Karpathy, Johnson and Fei-Fei (2015) from charlm's runs: test loss per cell type,
depth and size, beside the n-gram baseline on the same split and the paper's figures.

    python experiments/karpathy2015/sweep.py --grid cpu          # trains the points first
    python experiments/karpathy2015/table.py --grid cpu          # then this

Each finished point of the sweep runs/sweeps/karpathy2015_<corpus>_<grid>/ is scored on its
corpus' test split at its best checkpoint (`charlm.load(workdir, 'best').evaluate('test')`,
the same as `python -m charlm.evaluate --workdir W --split test`). The n-gram column is
`python -m charlm.ngram` on the same config (interpolated Kneser-Ney, orders 1-20), read from
--ngram_json or computed. The paper reports (test, nats per character) only its headline
figures here: the best recurrent model against a 20-gram, War and Peace 1.077 against 1.195,
the Linux kernel 0.84 against 0.889; its corpora differ from these (its Linux text is 6.2 M
characters of the whole kernel, 101 symbols; here kernel/ and mm/ as 17 MB of bytes), so
compare the shape of the table, not the digits.
"""
import csv
import json
import math
import os
import subprocess
import sys

import grid as sweep_lib
from absl import app, flags

ROOT = sweep_lib.ROOT
LN2 = math.log(2)
PAPER = {'linux': {'best_rnn': 0.84, 'ngram20': 0.889},
         'warandpeace': {'best_rnn': 1.077, 'ngram20': 1.195}}
NGRAM_ORDERS = (1, 2, 3, 5, 10, 20)

_GRID = flags.DEFINE_enum('grid', 'cpu', list(sweep_lib.GRIDS), 'Which grid.')
_CORPUS = flags.DEFINE_multi_enum('corpus', ['linux'], list(sweep_lib.CORPORA), 'Corpora.')
_ROOT = flags.DEFINE_string('root', os.path.join(ROOT, 'runs', 'sweeps'), 'Where sweeps live.')
_NGRAM_JSON = flags.DEFINE_multi_string(
    'ngram_json', [], 'CORPUS=PATH: charlm.ngram --json output for that corpus (default: '
    'experiments/results/ngram_<config name>.json if there, else computed).')
_OUT = flags.DEFINE_string('out', None, "JSON (default experiments/results/karpathy2015_<grid>"
                           ".json; '': none).")


def point_rows(sweepdir: str) -> list[dict]:
  with open(os.path.join(sweepdir, 'results.csv'), newline='') as f:
    return list(csv.DictReader(f))


def score(row: dict) -> dict:
  """The point's test loss at its best checkpoint."""
  import charlm
  model = charlm.load(row['workdir'], 'best')
  result = model.evaluate('test')
  config = model.config.model
  return {'cell': config.cell, 'num_layers': config.num_layers, 'hidden': config.hidden,
          'params': int(row['params'] or 0), 'steps': int(row['steps'] or 0),
          'best_val_loss': float(row['best_val_loss']), 'test_loss': result['loss'],
          'test_bpc': result['bpc'], 'test_chars': result['chars'], 'step': result['step'],
          'workdir': row['workdir']}


def ngram_table(corpus: str) -> dict:
  given = dict(item.split('=', 1) for item in _NGRAM_JSON.value)
  config = sweep_lib.CORPORA[corpus]
  from charlm import sweeping
  name = sweeping.load_config(os.path.join(ROOT, config)).name
  path = given.get(corpus) or os.path.join(ROOT, 'experiments', 'results', f'ngram_{name}.json')
  if not os.path.exists(path):
    subprocess.check_call([sys.executable, '-m', 'charlm.ngram', '--config', config, '--json',
                           path], cwd=ROOT)
  with open(path) as f:
    table = json.load(f)
  by_order = {row['order']: row for row in table['rows']}
  best = min(by_order.values(), key=lambda row: row['kn_val_nats'])
  return {'path': os.path.relpath(path, ROOT), 'command': table.get('command'),
          'orders': {n: by_order[n]['kn_test_nats'] for n in NGRAM_ORDERS if n in by_order},
          'best_order_by_val': best['order'], 'best_test_nats': best['kn_test_nats']}


def print_table(corpus: str, scored: list[dict], ngram: dict):
  sizes = sorted({r['hidden'] for r in scored})
  print(f'\n{corpus}: test loss, nats per character (bits), best checkpoint by val loss\n')
  print('| model | ' + ' | '.join(f'{h} units' for h in sizes) + ' |')
  print('| --- |' + ' ---: |' * len(sizes))
  for cell in ('lstm', 'gru', 'rnn'):
    for layers in (1, 2, 3):
      cells = {r['hidden']: r for r in scored if r['cell'] == cell and r['num_layers'] == layers}
      if cells:
        print(f'| {cell.upper()} {layers} layer{"s" * (layers > 1)} | ' + ' | '.join(
            f'{cells[h]["test_loss"]:.3f} ({cells[h]["test_bpc"]:.3f})' if h in cells else ''
            for h in sizes) + ' |')
  print('\n| n-gram (Kneser-Ney) | ' + ' | '.join(f'n={n}' for n in ngram['orders']) + ' |')
  print('| --- |' + ' ---: |' * len(ngram['orders']))
  print('| test nats | ' + ' | '.join(f'{v:.3f}' for v in ngram['orders'].values()) + ' |')
  best = min(scored, key=lambda r: r['test_loss'])
  paper = PAPER[corpus]
  print(f'\nbest recurrent model {best["test_loss"]:.3f} ({best["cell"]} {best["num_layers"]}x'
        f'{best["hidden"]}) against the 20-gram {ngram["orders"].get(20, float("nan")):.3f} '
        f'(best order by val: {ngram["best_order_by_val"]}, {ngram["best_test_nats"]:.3f}); '
        f'the paper: {paper["best_rnn"]} against {paper["ngram20"]}')


def main(argv):
  del argv
  sys.path.insert(0, ROOT)
  result = {'grid': _GRID.value, 'grids': sweep_lib.GRIDS[_GRID.value],
            'sets': sweep_lib.SETS[_GRID.value], 'paper': PAPER, 'corpora': {}}
  for corpus in _CORPUS.value:
    name = sweep_lib.sweep_name(corpus, _GRID.value)
    sweepdir = os.path.join(_ROOT.value, name)
    rows = [r for r in point_rows(sweepdir) if r['status'] == 'done']
    scored = [score(r) for r in rows]
    ngram = ngram_table(corpus)
    print_table(corpus, scored, ngram)
    result['corpora'][corpus] = {
        'sweep_command': ' '.join(sweep_lib.command(corpus, _GRID.value, 'runs/sweeps')[1:]),
        'points': scored, 'ngram': ngram,
        'not_done': [r['point'] for r in point_rows(sweepdir) if r['status'] != 'done']}
  out = _OUT.value
  if out is None:
    out = os.path.join(ROOT, 'experiments', 'results', f'karpathy2015_{_GRID.value}.json')
  if out:
    with open(out, 'w') as f:
      json.dump(result, f, indent=2)
    print(f'\nwrote {out}')


if __name__ == '__main__':
  app.run(main)
