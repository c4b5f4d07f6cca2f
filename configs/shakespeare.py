"""All of Shakespeare's works (about 5 MB), the seed experiment of char-rnn.

    python -m charlm.train --config configs/shakespeare.py

The seed's model: a 3-layer LSTM with 512 units, dropout 0.5, batch 100 x 100 characters,
Adam 2e-3, 20k steps. It is a GPU run. Expected result: not measured yet.

Variants:
  configs/shakespeare.py:small  a 2-core CPU run of about 10 minutes (`make train`; 2x256, 2.5k
                                steps): prints Shakespeare-shaped text (speaker names, line
                                breaks, words). Its validation loss is not measured yet.
  configs/shakespeare.py:smoke  seconds; for tests.
"""
from configs import common


def get_config(arg=None):
  return common.corpus_config(
      arg, name='shakespeare', data={'name': 'shakespeare'},
      gpu={'num_layers': 3, 'hidden': 512, 'dropout': 0.5, 'batch_size': 100, 'seq_len': 100,
           'steps': 20_000},
      small={'num_layers': 2, 'hidden': 256, 'steps': 2500})
