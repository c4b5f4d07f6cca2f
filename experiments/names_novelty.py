"""How many sampled names are new: the seed's baby-names check (there, about 90% were).

    python -m charlm.train --config configs/names.py:small
    python experiments/names_novelty.py --workdir runs/names_small

Samples names from a trained names model (streams started from a newline; each line is a name)
and prints, per temperature, the share of sampled names that do not occur in the training list
(the whole list, so validation names count as known) and in its train split only, with a few
of the new names.
"""
import argparse
import json
import os

from charlm import corpora
from charlm import data as data_lib
from charlm.errors import UserError, exit_on_user_error


def training_names(config) -> tuple[set, set]:
  """(every name of the corpus, the names wholly inside its train split)."""
  with open(corpora.text_path(config.data), encoding='utf-8') as f:
    text = f.read()
  train = len(data_lib.split(range(len(text)), config.data.split)['train'])
  everything = {line for line in text.split('\n') if line}
  return everything, {line for line in text[:train].split('\n')[:-1] if line}


def sample_names(model, count: int, temperature: float, seed: int) -> list[str]:
  names = []
  while len(names) < count:
    texts = model.samples(64, '\n', 400, temperature=temperature, seed=seed)
    for text in texts:
      names += [line for line in text.split('\n')[1:-1] if line]  # The last line is unfinished.
    seed += 1
  return names[:count]


@exit_on_user_error
def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/names_small', help='a trained names run')
  parser.add_argument('--step', default=None,
                      help="'best', 'latest' or a step number (default: best, else latest)")
  parser.add_argument('--num', type=int, default=2000, help='names to sample per temperature')
  parser.add_argument('--temperatures', default='0.5,1.0')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default='', help='also write the results here')
  args = parser.parse_args()

  import charlm  # Imports JAX.
  model = charlm.load(args.workdir, args.step)
  if model.vocab.unknown('\n'):
    raise UserError(f'{args.workdir} was not trained on a list of lines; train configs/names.py')
  known, train = training_names(model.config)
  print(f'{args.workdir} at step {model.step}: {len(known):,} distinct training names '
        f'({len(train):,} in the train split)')
  print(f'{"temperature":>11} {"sampled":>8} {"distinct":>8} {"new":>7} {"new vs train":>12}'
        '  examples of new names')
  rows = []
  for temperature in (float(t) for t in args.temperatures.split(',')):
    names = sample_names(model, args.num, temperature, args.seed)
    new = [n for n in names if n not in known]
    row = {'temperature': temperature, 'sampled': len(names), 'distinct': len(set(names)),
           'new_share': len(new) / len(names),
           'new_vs_train_share': sum(n not in train for n in names) / len(names),
           'examples': list(dict.fromkeys(new))[:8]}
    rows.append(row)
    print(f'{temperature:11.2f} {row["sampled"]:8d} {row["distinct"]:8d} '
          f'{row["new_share"]:7.1%} {row["new_vs_train_share"]:12.1%}  '
          f'{" ".join(row["examples"])}', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'workdir': os.path.abspath(args.workdir), 'step': model.step, 'rows': rows}, f,
                indent=2)


if __name__ == '__main__':
  main()
