"""charlm: character-level recurrent language models in JAX/Flax. `charlm.load(workdir)`."""


def __getattr__(name):
  # Lazy, so that `import charlm.cli` and friends stay fast and free of JAX.
  if name == 'load':
    from charlm.api import load
    return load
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
