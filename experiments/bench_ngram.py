"""The n-gram baseline's cost by corpus size, with PPMd's compression rate as a cross-check.

    python experiments/bench_ngram.py                    # 0.25, 1 and 5 MB: about 2 minutes
    python experiments/bench_ngram.py --sizes 0.25 --out ''   # a quick check

For each size, the first SIZE MB (whole lines) of the Shakespeare corpus (configs/shakespeare.py,
prepared on first use) go to a file in /tmp, and `python -m charlm.ngram --config
configs/default.py --config.data.path=FILE --order 1..20` runs on it in a fresh process whose
wall time and peak resident memory (ru_maxrss) are recorded, as are the best orders' val bpc.

The cross-check (pyppmd, `pip install -e .[bench]`): PPMd's code length for the val split given
the train split, (|PPMd(train + val)| - |PPMd(train)|) bits / val characters, at a few model
orders; an adaptive compressor of the same text, so it should land near the n-gram figures.
Prints a table and writes JSON to --out.
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from experiments.bench_data import measure  # noqa: E402
from experiments.common import write_results  # noqa: E402

PPMD_ORDERS = (4, 8, 16)
PPMD_MEM = 256 << 20


def shakespeare_text() -> str:
  """The path of the prepared Shakespeare corpus (prepared now if it is not)."""
  from charlm import corpora
  from configs import shakespeare
  return corpora.text_path(shakespeare.get_config().data)


def write_prefix(source: str, size: int, path: str) -> int:
  """Writes the first `size` bytes of `source`, cut after its last whole line; returns bytes."""
  with open(source, 'rb') as f:
    data = f.read(size)
  data = data[:data.rindex(b'\n') + 1]
  with open(path, 'wb') as f:
    f.write(data)
  return len(data)


def ppmd_bpc(config) -> dict:
  """PPMd (variant I) bits per character of the val split given the train split, per order."""
  import pyppmd

  from charlm import ngram
  vocab, splits = ngram.corpus_splits(config)
  train = vocab.decode(splits['train']).encode('utf-8')
  val = vocab.decode(splits['val']).encode('utf-8')
  out = {}
  for order in PPMD_ORDERS:
    start = time.perf_counter()
    alone = len(pyppmd.compress(train, max_order=order, mem_size=PPMD_MEM))
    both = len(pyppmd.compress(train + val, max_order=order, mem_size=PPMD_MEM))
    out[order] = {'val_bpc': 8 * (both - alone) / len(splits['val']),
                  'seconds': time.perf_counter() - start}
  return out


def run(sizes_mb, max_order: int, tmp: str, ppmd: bool, source: str) -> list[dict]:
  import json

  from configs import default
  rows = []
  for size_mb in sizes_mb:
    path = os.path.join(tmp, f'shakespeare-{size_mb:g}MB.txt')
    actual = write_prefix(source, int(size_mb * 1e6), path)
    cache, out = os.path.join(tmp, 'cache'), os.path.join(tmp, 'ngram.json')
    args = ['--config', 'configs/default.py', f'--config.data.path={path}',
            f'--config.data.cache_dir={cache}']
    # Prepared first, so that the timed run is the n-gram work (and the source's hash).
    measure([sys.executable, '-m', 'charlm.data', 'prepare', path, '--cache_dir', cache])
    got = measure([sys.executable, '-m', 'charlm.ngram', *args, f'--order=1..{max_order}',
                   f'--json={out}'])
    with open(out) as f:
      result = json.load(f)
    kn = min(result['rows'], key=lambda r: r['kn_val_nats'])
    wb = min(result['rows'], key=lambda r: r['wb_val_nats'])
    row = {'size_mb': actual / 1e6, 'train_chars': result['tokens']['train'],
           'orders': f'1..{max_order}', 'seconds': got['seconds'],
           'ngram_seconds': result['seconds'], 'peak_rss_mb': got['peak_rss_mb'],
           'kn_best_order': kn['order'], 'kn_val_bpc': kn['kn_val_bpc'],
           'wb_best_order': wb['order'], 'wb_val_bpc': wb['wb_val_bpc']}
    if ppmd:
      config = default.get_config()
      config.data.path, config.data.cache_dir = path, cache
      row['ppmd'] = ppmd_bpc(config)
    rows.append(row)
    print_row(row)
    shutil.rmtree(cache)
    os.remove(path)
  return rows


HEADER = (f'{"MB":>5} {"train chars":>11} {"s":>6} {"n-gram s":>8} {"peak MB":>8} | '
          f'{"KN order":>8} {"val bpc":>7} | {"WB order":>8} {"val bpc":>7} | PPMd val bpc')


def print_row(row):
  ppmd = '  '.join(f'{o}: {r["val_bpc"]:.3f}' for o, r in row.get('ppmd', {}).items())
  print(f'{row["size_mb"]:5.2f} {row["train_chars"]:11,d} {row["seconds"]:6.1f} '
        f'{row["ngram_seconds"]:8.1f} {row["peak_rss_mb"]:8.0f} | {row["kn_best_order"]:8d} '
        f'{row["kn_val_bpc"]:7.3f} | {row["wb_best_order"]:8d} {row["wb_val_bpc"]:7.3f} | '
        f'{ppmd or "(no pyppmd)"}', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='0.25,1,5', help='comma-separated sizes in MB')
  parser.add_argument('--max_order', type=int, default=20)
  parser.add_argument('--text', default='', help='the text cut to each size (default: the '
                      'Shakespeare corpus)')
  parser.add_argument('--tmp', default='/tmp', help='where the text prefixes go')
  parser.add_argument('--out', default=os.path.join(ROOT, 'experiments', 'results',
                                                    'bench_ngram_cpu.json'),
                      help="JSON results ('' for none)")
  args = parser.parse_args()
  try:
    import pyppmd  # noqa: F401
    ppmd = True
  except ImportError:
    print('pyppmd is not installed (pip install -e .[bench]): no PPMd cross-check')
    ppmd = False
  with tempfile.TemporaryDirectory(prefix='charlm-bench-ngram-', dir=args.tmp) as tmp:
    print(HEADER, flush=True)
    rows = run([float(s) for s in args.sizes.split(',')], args.max_order, tmp, ppmd,
               args.text or shakespeare_text())
  if args.out:
    write_results(args.out, {
        'command': 'python ' + ' '.join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        'machine': f'{platform.machine()}, {os.cpu_count()} cores, {platform.system()}',
        'ppmd': {'variant': 'I', 'mem_size': PPMD_MEM, 'orders': list(PPMD_ORDERS)},
        'rows': rows})


if __name__ == '__main__':
  main()
