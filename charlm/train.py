"""Trains a character-level language model.

    python -m charlm.train --config configs/shakespeare.py [--config.model.hidden=256 ...] \\
        [--workdir runs/NAME]

The workdir defaults to runs/<config name>; running the same command again resumes the run.
"""
import sys

from absl import flags
from ml_collections import config_flags

from charlm import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config name>).')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  from charlm import trainer  # Imports JAX; keep flag errors fast.
  config = _CONFIG.value
  summary = trainer.train_and_evaluate(config, _WORKDIR.value or trainer.default_workdir(config))
  if summary['interrupted']:
    sys.exit(130)


if __name__ == '__main__':
  cli.run(main)
