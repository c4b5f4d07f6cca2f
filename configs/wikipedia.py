"""enwik8, the Hutter Prize's 100 MB of raw English Wikipedia XML, as bytes (the seed's Wikipedia
experiment).

    python -m charlm.data prepare wikipedia   # once; training also prepares it on first use
    python -m charlm.train --config configs/wikipedia.py

Split as the literature reports bits per character on enwik8: the first 90M bytes train, the
next 5M validation, the last 5M test. The GPU model is a 3-layer LSTM of 640 units (10.2M
parameters, the size of the seed's largest), batch 100 x 100 bytes, 50k steps (5.5 epochs).
Expected result: not measured yet.

Variants:
  configs/wikipedia.py:small  a 2-core CPU run of about 10 minutes (2x256, 2.5k steps).
                              Expected result: not measured yet.
  configs/wikipedia.py:smoke  seconds; for tests.
"""
from configs import common


def get_config(arg=None):
  return common.corpus_config(
      arg, name='wikipedia',
      data={'name': 'wikipedia', 'level': 'byte', 'split': (0.9, 0.05, 0.05)},  # 90M/5M/5M.
      gpu={'num_layers': 3, 'hidden': 640, 'dropout': 0.1, 'batch_size': 100, 'seq_len': 100,
           'steps': 50_000},
      small={'num_layers': 2, 'hidden': 256, 'steps': 2500})
