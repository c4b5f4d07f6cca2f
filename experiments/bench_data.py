"""The data pipeline at scale: preparation throughput and peak memory, byte and char mode.

    python experiments/bench_data.py                  # 1 MB, 250 MB and 1 GB: about 5 minutes
    python experiments/bench_data.py --sizes 16M --steps 5 --out ''   # a quick check

The 1 MB file gives the baseline: what the processes take whatever the data. For each size,
generates a UTF-8 text file in /tmp (mostly ASCII words with some accented
letters, dashes, quotes and CJK, about 45 distinct characters; deleted afterwards), then for
byte and char mode runs, each in a fresh process whose peak resident memory (ru_maxrss) is
recorded:
  prepare  `python -m charlm.data prepare FILE --level L` into an empty cache: MB/s of the file
  train    `python -m charlm.train --config configs/default.py:smoke` on it for --steps steps
           (the cache is warm, so this is memory-mapped training data plus the source's hash)
Targets: peak memory under 500 MB and independent of the file size; byte-mode preparation at
least 100 MB/s. Prints a table and writes JSON to --out.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
TARGET_RSS_MB, TARGET_BYTE_MBS = 500, 100


def parse_size(text: str) -> int:
  text = text.strip().upper().rstrip('B')
  if text[-1:] in UNITS:
    return int(float(text[:-1]) * UNITS[text[-1]])
  return int(text)


def text_block(size: int, seed: int = 0) -> bytes:
  """About `size` bytes of word-like UTF-8 text, ending with a newline."""
  rng = np.random.default_rng(seed)
  letters = np.array(list('abcdefghijklmnopqrstuvwxyz' * 4 + 'éüñøç'))
  words = [''.join(rng.choice(letters, size=rng.integers(1, 10))) for _ in range(5000)]
  words += ['The', 'And', '—', '“quoted”', 'x²', 'naïve', 'α', '日本']
  weights = 1.0 / np.arange(1, len(words) + 1)
  ids = rng.choice(len(words), size=size // 5, p=weights / weights.sum())
  lines = [' '.join(words[i] for i in ids[k:k + 12]) for k in range(0, len(ids), 12)]
  data = '.\n'.join(lines).encode()[:size]
  return data[:data.rindex(b'\n') + 1]


def write_text(path: str, size: int):
  """Writes `size` bytes (rounded down to whole lines) by repeating a 16 MB block."""
  block = text_block(min(size, 16 << 20))
  with open(path, 'wb') as f:
    written = 0
    while written + len(block) <= size:
      f.write(block)
      written += len(block)
    rest = block[:size - written]
    f.write(rest[:rest.rfind(b'\n') + 1])


# Runs a command and writes its peak resident memory (KiB) to argv[1]. A child's peak counts the
# memory of the process it was forked from, so the command is started from this small launcher
# rather than from the benchmark, which holds the generated text.
LAUNCHER = ('import resource, subprocess, sys\n'
            'rc = subprocess.call(sys.argv[2:])\n'
            'peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n'
            'open(sys.argv[1], "w").write(str(peak))\n'
            'sys.exit(rc)')


def measure(cmd: list[str], env=None) -> dict:
  """Runs `cmd`; returns its wall time and peak resident memory (MB). Exits if it fails."""
  with tempfile.NamedTemporaryFile('r') as peak:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, '-S', '-c', LAUNCHER, peak.name] + cmd, cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
      sys.exit(f'failed ({result.returncode}): {" ".join(cmd)}\n'
               f'{result.stdout.decode(errors="replace")}')
    return {'seconds': seconds, 'peak_rss_mb': int(peak.read()) / 1024}


def run(sizes, levels, steps: int, tmp: str) -> list[dict]:
  rows = []
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  for size in sizes:
    path = os.path.join(tmp, f'bench-{size}.txt')
    write_text(path, size)
    actual = os.path.getsize(path)
    for level in levels:
      cache = os.path.join(tmp, f'cache-{size}-{level}')
      prep = measure([sys.executable, '-m', 'charlm.data', 'prepare', path, '--level', level,
                      '--cache_dir', cache], env)
      train = measure([
          sys.executable, '-m', 'charlm.train', '--config', 'configs/default.py:smoke',
          f'--config.data.path={path}', f'--config.data.level={level}',
          f'--config.data.cache_dir={cache}', f'--config.train.steps={steps}',
          '--config.train.log_every=50', '--config.train.eval_every=0',
          '--config.train.eval_batches=2', '--config.train.ckpt_every=0',
          '--config.train.final_sample_length=0', f'--workdir={os.path.join(tmp, "run")}'], env)
      shutil.rmtree(os.path.join(tmp, 'run'), ignore_errors=True)
      shutil.rmtree(cache)
      row = {'size_mb': actual / 1e6, 'level': level,
             'prepare_mb_per_s': actual / 1e6 / prep['seconds'], 'prepare_seconds': prep['seconds'],
             'prepare_peak_rss_mb': prep['peak_rss_mb'], 'train_steps': steps,
             'train_seconds': train['seconds'], 'train_peak_rss_mb': train['peak_rss_mb']}
      rows.append(row)
      print_row(row)
    os.remove(path)
  return rows


HEADER = (f'{"file MB":>8} {"level":>5} {"prep MB/s":>9} {"prep s":>7} {"prep peak MB":>12} '
          f'{"train peak MB":>13} {"train s":>8}')


def print_row(row):
  print(f'{row["size_mb"]:8.0f} {row["level"]:>5} {row["prepare_mb_per_s"]:9.0f} '
        f'{row["prepare_seconds"]:7.1f} {row["prepare_peak_rss_mb"]:12.0f} '
        f'{row["train_peak_rss_mb"]:13.0f} {row["train_seconds"]:8.1f}', flush=True)


def verdict(rows) -> list[str]:
  peak = max(max(r['prepare_peak_rss_mb'], r['train_peak_rss_mb']) for r in rows)
  lines = [f'peak memory {peak:.0f} MB (target < {TARGET_RSS_MB} MB): '
           f'{"met" if peak < TARGET_RSS_MB else "MISSED"}']
  # Below 100 MB, starting Python is a good part of the time.
  byte = [r['prepare_mb_per_s'] for r in rows if r['level'] == 'byte' and r['size_mb'] >= 100]
  if byte:
    lines.append(f'byte-mode preparation of files of 100 MB and more at least {min(byte):.0f} '
                 f'MB/s (target >= {TARGET_BYTE_MBS}): '
                 f'{"met" if min(byte) >= TARGET_BYTE_MBS else "MISSED"}')
  big = sorted({r['size_mb'] for r in rows})[-2:]  # Side by side: the two largest files.
  for level in sorted({r['level'] for r in rows}):
    same = [r for r in rows if r['level'] == level and r['size_mb'] in big]
    if len(same) == 2:
      for key, what in (('prepare_peak_rss_mb', 'preparation'), ('train_peak_rss_mb', 'training')):
        lines.append(f'{level} {what}: peak memory {same[0][key]:.0f} MB with '
                     f'{same[0]["size_mb"]:.0f} MB of text, {same[1][key]:.0f} MB with '
                     f'{same[1]["size_mb"]:.0f} MB')
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='1M,250M,1G', help='comma-separated file sizes')
  parser.add_argument('--levels', default='byte,char')
  parser.add_argument('--steps', type=int, default=100, help='training steps per run')
  parser.add_argument('--tmp', default='/tmp', help='where the generated files go')
  parser.add_argument('--out', default=os.path.join(ROOT, 'experiments', 'results',
                                                    'bench_data.json'),
                      help="JSON results ('' for none)")
  args = parser.parse_args()
  sizes = [parse_size(s) for s in args.sizes.split(',')]
  with tempfile.TemporaryDirectory(prefix='charlm-bench-data-', dir=args.tmp) as tmp:
    print(HEADER, flush=True)
    rows = run(sizes, args.levels.split(','), args.steps, tmp)
  lines = verdict(rows)
  print('\n'.join(lines))
  if args.out:
    result = {'command': 'python ' + ' '.join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              'machine': f'{platform.machine()}, {os.cpu_count()} cores, {platform.system()}',
              'rows': rows, 'verdict': lines}
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)
      f.write('\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
