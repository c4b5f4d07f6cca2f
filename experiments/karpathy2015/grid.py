"""The grid of Karpathy, Johnson and Fei-Fei (2015) as data: corpora, grids and the settings of
every point, and the charlm.sweep command of each (sweep.py runs it, table.py reads it)."""
import os
import sys

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

def sweep_name(corpus: str, grid: str) -> str:
  return f'karpathy2015_{corpus}_{grid}'


def command(corpus: str, grid: str, root: str, parallel=None) -> list[str]:
  argv = [sys.executable, '-m', 'charlm.sweep', '--config', CORPORA[corpus],
          '--name', sweep_name(corpus, grid), '--root', root]
  argv += [f'--grid={field}={values}' for field, values in GRIDS[grid].items()]
  argv += [f'--set={field}={value}' for field, value in SETS[grid].items()]
  return argv + ([f'--parallel={parallel}'] if parallel else [])
