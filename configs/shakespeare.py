"""All of Shakespeare's works (about 5 MB), the seed experiment of char-rnn.

    python -m charlm.train --config configs/shakespeare.py

The seed's model: a 3-layer LSTM with 512 units, dropout 0.5, batch 100 x 100 characters,
Adam 2e-3, 20k steps. It is a GPU run. Expected result: not measured yet.

Variants:
  configs/shakespeare.py:small  a 2-core CPU run (2x256, 2.5k steps; about 4 minutes on the
                                2-core CPU of 2026-12-04): validation loss 1.543 nats/char
                                (2.23 bpc) on 50 batches there, and Shakespeare-shaped text
                                (speaker names, line breaks, words).
  configs/shakespeare.py:cpuN   the best model found for N minutes of a 2-core CPU (common.py's
                                CPU_RECIPES, searched on tinyshakespeare; `make train` runs
                                :cpu10). Expected, as measured on the 2-core CPU of 2026-12-07
                                (AMD EPYC, 396 GFLOP/s) by `python -m charlm.train --config
                                configs/shakespeare.py:cpu5` (and :cpu15), whole splits: the
                                best validation loss logged, the test loss of the best
                                checkpoint (experiments/results/recipes_shakespeare_cpu.json):
                                :cpu5 (2x256) validation 1.492 nats/char (2.15 bpc), test
                                1.419; :cpu15 (2x384) validation 1.426 (2.06 bpc), test 1.376.
                                The Kneser-Ney 8-gram on the same splits: 1.468 and 1.443.
                                `make train` (:cpu10, 9,399 steps there, 10 min 40 s with
                                imports and the closing sample): validation 1.447.
  configs/shakespeare.py:smoke  seconds; for tests.
"""
from configs import common


def get_config(arg=None):
  return common.corpus_config(
      arg, name='shakespeare', data={'name': 'shakespeare'},
      gpu={'num_layers': 3, 'hidden': 512, 'dropout': 0.5, 'batch_size': 100, 'seq_len': 100,
           'steps': 20_000},
      small={'num_layers': 2, 'hidden': 256, 'steps': 2500})
