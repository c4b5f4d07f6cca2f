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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CORPORA = {'linux': 'configs/linux.py:small', 'warandpeace': 'configs/warandpeace.py:small'}
GRIDS = {
    # The whole grid: a GPU job (`--parallel K` runs K points at once, one a GPU).
    'full': {'model.cell': 'lstm,gru,rnn', 'model.num_layers': '1,2,3',
             'model.hidden': '64,128,256,512'},
    # What a 2-core CPU trains in well under an hour: the two small sizes, 1-2 layers.
    'cpu': {'model.cell': 'lstm,gru', 'model.num_layers': '1,2', 'model.hidden': '64,128'},
}
SETS = {
    'full': {'train.steps': 20_000, 'train.batch_size': 100, 'train.seq_len': 100,
             'train.eval_every': 2000, 'train.ckpt_every': 2000, 'train.sample_every': 0,
             'train.final_sample_length': 0, 'train.patience': 3},
    'cpu': {'train.steps': 5000, 'train.sample_every': 0, 'train.final_sample_length': 0,
            'train.eval_every': 1000, 'train.ckpt_every': 1000},
}

_GRID = flags.DEFINE_enum('grid', 'cpu', list(GRIDS), 'Which grid.')
_CORPUS = flags.DEFINE_multi_enum('corpus', ['linux'], list(CORPORA), 'Corpora (repeatable).')
_PARALLEL = flags.DEFINE_integer('parallel', None, "charlm.sweep's --parallel (GPUs).")
_ROOT = flags.DEFINE_string('root', os.path.join('runs', 'sweeps'), 'Where sweeps live.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands; run nothing.')


def sweep_name(corpus: str, grid: str) -> str:
  return f'karpathy2015_{corpus}_{grid}'


def command(corpus: str, grid: str, root: str, parallel=None) -> list[str]:
  argv = [sys.executable, '-m', 'charlm.sweep', '--config', CORPORA[corpus],
          '--name', sweep_name(corpus, grid), '--root', root]
  argv += [f'--grid={field}={values}' for field, values in GRIDS[grid].items()]
  argv += [f'--set={field}={value}' for field, value in SETS[grid].items()]
  return argv + ([f'--parallel={parallel}'] if parallel else [])


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
