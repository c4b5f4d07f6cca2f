"""The LaTeX source of the Stacks project, an algebraic geometry book (the seed's LaTeX
experiment).

    python -m charlm.data prepare latex [--source DIR_OR_TARBALL]
    python -m charlm.train --config configs/latex.py

Any directory of .tex files works with --source (`git clone` of the Stacks project, say); the
files are concatenated in sorted order. The GPU model is a 3-layer LSTM of 512 units (6.4M
parameters), dropout 0.25, batch 100 x 100 characters, 20k steps. Expected result: not
measured yet.

Variants:
  configs/latex.py:small  a 2-core CPU run of about 10 minutes (2x256, 2.5k steps). Expected
                          result: not measured yet.
  configs/latex.py:smoke  seconds; for tests.
"""
from configs import common


def get_config(arg=None):
  return common.corpus_config(
      arg, name='latex', data={'name': 'latex'},
      gpu={'num_layers': 3, 'hidden': 512, 'dropout': 0.25, 'batch_size': 100, 'seq_len': 100,
           'steps': 20_000},
      small={'num_layers': 2, 'hidden': 256, 'steps': 2500})
