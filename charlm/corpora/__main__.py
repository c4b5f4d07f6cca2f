"""The command line that prepares corpora ahead of training (training does the same on first use).

    python -m charlm.corpora prepare NAME [--source PATH] [--level byte] | list [--cache_dir D]

`python -m charlm.data ...` is the same command. This module sits above both packages: it fetches
with corpora and encodes with data, which do not import each other.
"""
import argparse
import os

import numpy as np

from charlm import corpora
from charlm import data as data_lib
from charlm.cache import default_cache_dir
from charlm.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv=None, prog='python -m charlm.corpora'):
  parser = argparse.ArgumentParser(prog=prog, description='Prepares corpora ahead of training.')
  commands = parser.add_subparsers(dest='command', required=True)
  prep = commands.add_parser(
      'prepare', help='fetch, verify and encode a named corpus (or encode a text file)',
      description='Fetches, verifies and encodes a named corpus into the token cache, or '
                  'encodes a text file. Training does the same on first use.')
  prep.add_argument('name', help=f'{", ".join(sorted(corpora.RECIPES))}, or a text file')
  prep.add_argument('--source', help='a local copy of the corpus source (a file, archive or '
                    'directory) to use instead of the usual download')
  prep.add_argument('--level', choices=('char', 'byte'),
                    help="tokens: characters or bytes (default: the corpus' own; char for files)")
  listing = commands.add_parser('list', help='the named corpora, and which are prepared')
  for command in (prep, listing):
    command.add_argument('--cache_dir', default='',
                         help='cache directory (default: $CHARLM_CACHE or ~/.cache/charlm)')
  args = parser.parse_args(argv)
  if args.command == 'list':
    _list_corpora(default_cache_dir(args.cache_dir))
  else:
    _prepare_command(args)


def _list_corpora(cache_dir: str):
  for name, recipe in sorted(corpora.RECIPES.items()):
    meta = os.path.join(corpora.core.corpus_dir(cache_dir, name), 'meta.json')
    state = 'prepared' if os.path.exists(meta) else 'not prepared'
    print(f'{name:16} {recipe.level:4}  {state:12}  {recipe.about}')


def _prepare_command(args):
  if args.name in corpora.RECIPES:
    recipe = corpora.get(args.name)
    print(f'{recipe.name}: {recipe.about}\nlicence: {recipe.licence}', flush=True)
    path = corpora.fetch(recipe.name, default_cache_dir(args.cache_dir), args.source)
    level, fractions = args.level or recipe.level, recipe.split
  elif os.path.isfile(args.name) and args.source is None:
    path, level, fractions = args.name, args.level or 'char', (0.9, 0.05, 0.05)
  else:
    raise UserError(f'{args.name} is neither a corpus name ({", ".join(sorted(corpora.RECIPES))})'
                    ' nor a text file; give one of those (and --source only with a name)')
  corpus = data_lib.prepare(path, level, args.cache_dir)
  vocab = corpus.vocab
  print(f'text:   {corpus.source} ({os.path.getsize(corpus.source):,} bytes)')
  print(f'tokens: {len(corpus.tokens):,} {level}s, vocabulary {vocab.size:,} '
        f'({np.dtype(vocab.dtype).name}), in {corpus.cache}')
  parts = data_lib.split(corpus.tokens, fractions)
  print('split:  ' + ', '.join(f'{k} {len(v):,}' for k, v in parts.items()), flush=True)


if __name__ == '__main__':
  main()
