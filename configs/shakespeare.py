"""All of Shakespeare's works (about 5 MB), the seed experiment of char-rnn.

    python -m charlm.train --config configs/shakespeare.py

The seed's model: a 3-layer LSTM with 512 units, dropout 0.5, batch 100 x 100 characters,
Adam 2e-3. It is a GPU run; on such a run char-rnn-class models reach a validation loss of about
1.35 nats/char (about 1.95 bits per character) on this corpus (an estimate, not measured here).

Variants:
  configs/shakespeare.py:small  a 2-core CPU run of about 10 minutes (`make train`): prints
                                Shakespeare-shaped text (speaker names, line breaks, words).
  configs/shakespeare.py:smoke  seconds; for tests.
"""
from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.unlock()
  config.name = 'shakespeare'
  config.data.name = 'shakespeare'
  config.model.cell = 'lstm'
  config.model.num_layers = 3
  config.model.hidden = 512
  config.model.dropout = 0.5
  config.train.batch_size = 100
  config.train.seq_len = 100
  config.train.steps = 20000
  config.train.eval_every = 1000
  config.train.ckpt_every = 1000
  config.train.sample_every = 1000
  config.optim.name = 'adam'
  config.optim.lr = 2e-3
  config.optim.schedule = 'cosine'

  if arg == 'small':
    config.name = 'shakespeare_small'
    config.model.num_layers = 2
    config.model.hidden = 256
    config.model.dropout = 0.0
    config.train.batch_size = 32
    config.train.seq_len = 64
    config.train.steps = 2500
    config.train.eval_every = 500
    config.train.eval_batches = 50
    config.train.ckpt_every = 500
    config.train.sample_every = 500
  elif arg == 'smoke':
    config.name = 'shakespeare_smoke'
    config.model.num_layers = 1
    config.model.hidden = 32
    config.model.dropout = 0.0
    config.train.batch_size = 4
    config.train.seq_len = 16
    config.train.steps = 10
    config.train.eval_every = 5
    config.train.eval_batches = 2
    config.train.ckpt_every = 5
    config.train.sample_every = 0
  elif arg:
    raise ValueError(f'unknown variant {arg!r} of configs/shakespeare.py; use small or smoke')
  config.lock()
  return config
