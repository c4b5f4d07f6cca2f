"""US first names, one per line (about 5,500 from the 1990 census lists): the seed's baby-names
experiment, where most sampled names are new.

    python -m charlm.train --config configs/names.py
    python experiments/names_novelty.py --workdir runs/names

The seed does not give its model; a 2-layer LSTM of 256 units (0.8M parameters) with dropout 0.3
is plenty for 38 KB of names. Expected result: not measured yet.

Variants:
  configs/names.py:small  a 2-core CPU run of about 2 minutes (2x128, 1500 steps). Expected,
                          as measured on a 2-core CPU (2026-11-26; the share of new names by
                          experiments/names_novelty.py, at 159edaf): best validation loss 2.006
                          nats/char (step 1250); of 2000 names sampled at temperature 1.0, 88%
                          are not in the list (56% at 0.5), e.g. Dyrea, Bannia, Lusonio, Enison.
  configs/names.py:smoke  seconds; for tests.
"""
from configs import common


def get_config(arg=None):
  config = common.corpus_config(
      arg, name='names', data={'name': 'names'},
      gpu={'num_layers': 2, 'hidden': 256, 'dropout': 0.3, 'batch_size': 32, 'seq_len': 32,
           'steps': 3000},
      small={'num_layers': 2, 'hidden': 128, 'batch_size': 32, 'seq_len': 32, 'steps': 1500,
             'eval_every': 250, 'eval_batches': 0, 'ckpt_every': 250, 'sample_every': 250})
  config.unlock()
  config.train.sample_prime = '\n'
  config.train.final_sample_length = 300
  config.lock()
  return config
