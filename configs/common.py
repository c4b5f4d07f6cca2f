"""What the corpus configs share: the seed's GPU recipe and the `:small` and `:smoke` variants.

A corpus config names its data, its GPU model and its `:small` model; everything else comes from
here, so the configs differ only where the experiments do.
"""
from configs import default


def corpus_config(arg, *, name: str, data: dict, gpu: dict, small: dict):
  """A locked config for corpus `name`. `gpu` and `small` set model.* and train.* fields by
  their short names (num_layers, hidden, dropout, batch_size, seq_len, steps, ...)."""
  config = default.get_config()
  config.unlock()
  config.name = name
  config.data.update(data)
  config.model.cell = 'lstm'
  config.optim.name = 'adam'
  config.optim.lr = 2e-3
  config.optim.schedule = 'cosine'
  config.train.update(eval_every=1000, ckpt_every=1000, sample_every=1000)
  _set(config, gpu)
  if arg == 'small':
    config.name = f'{name}_small'
    config.model.dropout = 0.0
    config.train.update(batch_size=32, seq_len=64, eval_every=500, eval_batches=50,
                        ckpt_every=500, sample_every=500)
    _set(config, small)
  elif arg == 'smoke':
    config.name = f'{name}_smoke'
    config.model.update(num_layers=1, hidden=32, dropout=0.0)
    config.train.update(batch_size=4, seq_len=16, steps=10, eval_every=5, eval_batches=2,
                        ckpt_every=5, sample_every=0, final_sample_length=50)
  elif arg:
    raise ValueError(f'unknown variant {arg!r} of configs/{name}.py; use small or smoke')
  config.lock()
  return config


def _set(config, fields: dict):
  for key, value in fields.items():
    section = config.model if key in config.model else config.train
    if key not in section:
      raise KeyError(f'{key!r} is neither a model nor a train field')
    section[key] = value
