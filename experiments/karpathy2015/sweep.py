"""The grid of Karpathy, Johnson and Fei-Fei (2015), "Visualizing and Understanding Recurrent
Networks", as charlm.sweep commands: LSTM, GRU and RNN; 1, 2 and 3 layers; four sizes.

    python experiments/karpathy2015/sweep.py --grid cpu                  # this 2-core CPU's part
    python experiments/karpathy2015/sweep.py --grid full --parallel 8    # the whole grid, GPUs
    python experiments/karpathy2015/sweep.py --grid full --corpus warandpeace --dry_run

Each corpus is one sweep, runs/sweeps/karpathy2015_<corpus>_<grid>/, every point an ordinary
`charlm.train` run of the corpus' config with the grid's overrides (so a rerun resumes, as any
sweep does). The paper trained on Linux kernel source (6.2 M characters; here `linux_small`,
the kernel/ and mm/ directories as bytes, 17 MB) and War and Peace (3.3 M characters; here the
`warandpeace` recipe, which needs the Gutenberg text: `python -m charlm.data prepare
warandpeace --source pg2600.txt` where there is no network). Sizes are hidden units per layer
(the paper matched parameter counts across cell types instead). `table.py` prints the result.
"""
import os
import subprocess
import sys

from absl import app, flags
from grid import CORPORA, GRIDS, ROOT, command

_GRID = flags.DEFINE_enum('grid', 'cpu', list(GRIDS), 'Which grid.')
_CORPUS = flags.DEFINE_multi_enum('corpus', ['linux'], list(CORPORA), 'Corpora (repeatable).')
_PARALLEL = flags.DEFINE_integer('parallel', None, "charlm.sweep's --parallel (GPUs).")
_ROOT = flags.DEFINE_string('root', os.path.join('runs', 'sweeps'), 'Where sweeps live.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands; run nothing.')


def main(argv):
  del argv
  failed = 0
  for corpus in _CORPUS.value:
    argv = command(corpus, _GRID.value, _ROOT.value, _PARALLEL.value)
    print(' '.join(argv[1:]), flush=True)
    if not _DRY_RUN.value:
      failed += subprocess.call(argv, cwd=ROOT) != 0
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  app.run(main)
