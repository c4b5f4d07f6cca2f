"""Character n-gram baselines on a run's own corpus, vocabulary and train/val/test split.

    python -m charlm.ngram --config configs/shakespeare.py [--config.data.split=...] \\
        [--order 1..20] [--json out.json]
    python -m charlm.ngram --config configs/shakespeare.py --sample 1000 --sample_order 10 \\
        [--method kn|wb] [--temperature 1] [--prime TEXT] [--seed S]

The first form fits interpolated modified Kneser-Ney and Witten-Bell models of every order in
--order on the training split and prints nats and bits per character on val and test, as
charlm.train's config would split the corpus; the table goes to --json too (default
runs/ngram/<config name>.json). The second prints a sample of the model of --sample_order
(Goldberg's experiment) instead: the prime and what follows it, as charlm.sample prints a
sample. No workdir: nothing else is written.
"""
import os
import platform
import resource
import sys
import time

from absl import flags
from ml_collections import config_flags

from charlm import cli
from charlm.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file whose data section (corpus, '
                                          'level, split, cache) is used.', lock_config=True)
_ORDER = flags.DEFINE_string('order', '1..20', 'The orders to report: N (1..N) or A..B.')
_JSON = flags.DEFINE_string('json', None, "Where the table goes as JSON (default: "
                            "runs/ngram/<config name>.json; '' for nowhere).")
_SAMPLE = flags.DEFINE_integer('sample', 0, 'Instead of the table, print a sample of this many '
                               'characters (bytes for byte-level data).')
_SAMPLE_ORDER = flags.DEFINE_integer('sample_order', 10, 'The order of the model sampled.')
_METHOD = flags.DEFINE_enum('method', 'kn', ['kn', 'wb'], 'The model sampled: Kneser-Ney or '
                            'Witten-Bell.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sample from p^(1/T), renormalised; 0 '
                                  'always takes the most likely character.')
_PRIME = flags.DEFINE_string('prime', '', 'Text the sample continues, read as if it followed a '
                             'newline (default: none, the start of a line).')
_SEED = flags.DEFINE_integer('seed', 0, 'The same seed gives the same sample.')
flags.mark_flags_as_required(['config'])


def parse_orders(text: str) -> range:
  """'N' -> 1..N, 'A..B' -> A..B (inclusive), as a range; anything else a UserError."""
  lo, sep, hi = text.strip().partition('..')
  try:
    lo, hi = (int(lo), int(hi)) if sep else (1, int(lo))
  except ValueError:
    lo = hi = None
  if lo is None or not 1 <= lo <= hi:
    raise UserError(f'--order {text!r}: give a maximum order N >= 1 or a range A..B with '
                    '1 <= A <= B, for example --order 1..20')
  return range(lo, hi + 1)


HEADER = (f'{"order":>5} {"n-grams":>10} | {"KN val nats":>11} {"bpc":>6} {"test nats":>9} '
          f'{"bpc":>6} | {"WB val nats":>11} {"bpc":>6} {"test nats":>9} {"bpc":>6} | '
          f'{"KN D1,D2,D3+":>16} {"s":>6}')


def format_row(row: dict) -> str:
  d = ','.join(f'{x:.2f}' for x in row['kn_discounts']) + ('*' if row['kn_fallback'] else ' ')
  return (f'{row["order"]:5d} {row["ngrams"]:10,d} | {row["kn_val_nats"]:11.4f} '
          f'{row["kn_val_bpc"]:6.3f} {row["kn_test_nats"]:9.4f} {row["kn_test_bpc"]:6.3f} | '
          f'{row["wb_val_nats"]:11.4f} {row["wb_val_bpc"]:6.3f} {row["wb_test_nats"]:9.4f} '
          f'{row["wb_test_bpc"]:6.3f} | {d:>16} {row["seconds"]:6.1f}')


def best(rows: list[dict], method: str) -> dict:
  """The row of the lowest validation loss of `method`."""
  return min(rows, key=lambda r: r[f'{method}_val_nats'])


def main(argv):
  del argv
  from charlm import atomic, ngram, validate
  config = _CONFIG.value
  orders = parse_orders(_ORDER.value)
  if _SAMPLE.value < 0 or _SAMPLE_ORDER.value < 1 or _TEMPERATURE.value < 0:
    raise UserError('use --sample >= 0, --sample_order >= 1 and --temperature >= 0')
  out = _JSON.value if _JSON.value is not None else os.path.join('runs', 'ngram',
                                                                 f'{config.name}.json')
  validate.validate_data(config)
  if out and not _SAMPLE.value:
    validate.check_writable(os.path.dirname(os.path.abspath(out)), 'the --json folder',
                            '--json=FILE')
  vocab, splits = ngram.corpus_splits(config)
  if _SAMPLE.value:
    newline = '\n' if vocab.level == 'byte' or '\n' in vocab.chars else ''
    prime = vocab.encode(newline + _PRIME.value)  # Unknown characters: a UserError naming them.
    model = ngram.Model(splits['train'], vocab.size, _SAMPLE_ORDER.value, _METHOD.value)
    ids = model.sample(_SAMPLE.value, prime, _TEMPERATURE.value, _SEED.value)
    sys.stdout.write(_PRIME.value + vocab.decode(ids) + '\n')
    sys.stdout.flush()
    return
  print(f'{config.name}: {len(splits["train"]):,} train, {len(splits["val"]):,} val, '
        f'{len(splits["test"]):,} test tokens, vocabulary {vocab.size}; orders '
        f'{orders.start}..{orders.stop - 1}', flush=True)
  print(HEADER, flush=True)
  start = time.perf_counter()
  rows = ngram.evaluate(splits['train'], {'val': splits['val'], 'test': splits['test']},
                        vocab.size, orders, progress=lambda r: print(format_row(r), flush=True))
  seconds = time.perf_counter() - start
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  lines = ['* discounts of the fallback (no singletons, or estimates out of range)']
  for method, name in (('kn', 'Kneser-Ney'), ('wb', 'Witten-Bell')):
    b = best(rows, method)
    lines.append(f'best {name}: order {b["order"]}, val {b[f"{method}_val_nats"]:.4f} nats '
                 f'({b[f"{method}_val_bpc"]:.3f} bpc), test {b[f"{method}_test_nats"]:.4f} nats '
                 f'({b[f"{method}_test_bpc"]:.3f} bpc)')
  lines.append(f'{seconds:.1f} s, peak memory {peak_mb:.0f} MB')
  print('\n'.join(lines))
  if out:
    result = {'command': ' '.join(['python -m charlm.ngram'] + sys.argv[1:]),
              'machine': f'{platform.machine()}, {os.cpu_count()} cores, {platform.system()}',
              'config': config.name, 'data': config.data.to_dict(), 'vocab_size': vocab.size,
              'tokens': {k: len(v) for k, v in splits.items()}, 'seconds': seconds,
              'peak_rss_mb': peak_mb, 'rows': rows,
              'best': {m: best(rows, m)['order'] for m in ngram.METHODS}}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic.write_json(out, result, indent=1)
    print(f'wrote {out}')


if __name__ == '__main__':
  cli.run(main)
