"""What the corpus configs share: the seed's GPU recipe and the `:small`, `:cpuN` and `:smoke`
variants.

A corpus config names its data, its GPU model and its `:small` model; everything else comes from
here, so the configs differ only where the experiments do.

`:cpuN` is the best model found for a budget of N minutes on a 2-core CPU (`train.minutes=N`):
the fields of CPU_RECIPES' entry for the largest budget up to N (5 minutes searched with
charlm.sweep on tinyshakespeare, 15 minutes checked against the 5-minute recipe:
experiments/results/recipes_cpu.md; experiments/bench_quality.py measures them).
"""
from configs import default

# Budget in minutes -> the fields that measured best for it (short names, as `small` takes).
# Searched with `python -m charlm.sweep --config configs/tinyshakespeare.py:small --name
# recipe_cpu5 --grid model.hidden=256,384 --grid model.dropout=0.2,0.35 --set train.minutes=5
# ...` (the command and its table: experiments/results/recipes_cpu.md).
CPU_RECIPES = {
    5: {'num_layers': 2, 'hidden': 256, 'dropout': 0.2, 'locked_dropout': True,
        'lr': 3e-3, 'schedule': 'cosine'},
    15: {'num_layers': 2, 'hidden': 384, 'dropout': 0.25, 'locked_dropout': True,
         'lr': 3e-3, 'schedule': 'cosine'},
}


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
  elif arg and arg.startswith('cpu') and arg[3:].replace('.', '', 1).isdigit():
    minutes = float(arg[3:])
    if minutes <= 0:
      raise ValueError(f'variant {arg!r} of configs/{name}.py: give a budget above 0 minutes')
    config.name = f'{name}_{arg}'
    config.model.dropout = 0.0
    config.train.update(batch_size=32, seq_len=64, minutes=minutes, eval_every=500,
                        eval_batches=0, ckpt_every=1000, sample_every=0)
    _set(config, CPU_RECIPES[max([b for b in CPU_RECIPES if b <= minutes] or [min(CPU_RECIPES)])])
  elif arg == 'smoke':
    config.name = f'{name}_smoke'
    config.model.update(num_layers=1, hidden=32, dropout=0.0)
    config.train.update(batch_size=4, seq_len=16, steps=10, eval_every=5, eval_batches=2,
                        ckpt_every=5, sample_every=0, final_sample_length=50)
  elif arg:
    raise ValueError(f'unknown variant {arg!r} of configs/{name}.py; use small, cpuN (N minutes) '
                     'or smoke')
  config.lock()
  return config


def _set(config, fields: dict):
  for key, value in fields.items():
    section = next((s for s in (config.model, config.train, config.optim) if key in s),
                   config.train)
    if key not in section:
      raise KeyError(f'{key!r} is not a model, train or optim field')
    section[key] = value
