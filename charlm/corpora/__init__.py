"""Named corpora: recipes that fetch, verify and cache the text files configs name.

    python -m charlm.corpora prepare NAME [--source PATH]   # or python -m charlm.data ...

prepares one by hand; a config whose `data.name` names one prepares it on first use. Each
recipe records its source, licence note, size and checksum in `<cache>/corpora/NAME/meta.json`.
"""
from charlm.cache import default_cache_dir
from charlm.corpora import babynames, books, core, trees, wikipedia
from charlm.corpora.core import Recipe
from charlm.errors import UserError

RECIPES = {r.name: r for r in (
    books.SHAKESPEARE, books.TINYSHAKESPEARE, books.WARANDPEACE, wikipedia.RECIPE, trees.LATEX,
    trees.LINUX, trees.LINUX_SMALL, babynames.RECIPE)}


def get(name: str) -> Recipe:
  if name not in RECIPES:
    raise UserError(f'unknown corpus {name!r}; choose one of {", ".join(sorted(RECIPES))}, or set '
                    '--config.data.path=FILE')
  return RECIPES[name]


def fetch(name: str, cache_dir: str, source: str | None = None) -> str:
  """Returns the path of the text file of corpus `name`, preparing it on first use (from
  `source`, a local file or directory, when given)."""
  return core.fetch(get(name), cache_dir, source)


def text_path(data_config) -> str:
  """The text file a data config trains on: its `path`, else the text of corpus `name`, fetched
  into the config's cache directory on first use. data.prepare encodes it."""
  if data_config.path:
    return data_config.path
  if data_config.name:
    return fetch(data_config.name, default_cache_dir(data_config.cache_dir))
  raise UserError('no corpus given; set --config.data.path=FILE or --config.data.name=NAME')
