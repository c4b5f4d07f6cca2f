"""Tolstoy's War and Peace (Project Gutenberg ebook 2600, about 3.2 MB), the seed's corpus for
watching samples improve during training.

    python -m charlm.data prepare warandpeace [--source pg2600.txt]
    python -m charlm.train --config configs/warandpeace.py

The GPU model is a 3-layer LSTM of 512 units (6.4M parameters), dropout 0.5, batch 100 x 100
characters, 10k steps. Expected result: not measured yet.

Variants:
  configs/warandpeace.py:small  a 2-core CPU run of about 10 minutes (2x256, 2.5k steps).
                                Expected result: not measured yet.
  configs/warandpeace.py:smoke  seconds; for tests.
"""
from configs import common


def get_config(arg=None):
  return common.corpus_config(
      arg, name='warandpeace', data={'name': 'warandpeace'},
      gpu={'num_layers': 3, 'hidden': 512, 'dropout': 0.5, 'batch_size': 100, 'seq_len': 100,
           'steps': 10_000},
      small={'num_layers': 2, 'hidden': 256, 'steps': 2500})
