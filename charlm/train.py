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
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process run, letting JAX detect the cluster (SLURM, TPU '
    'pod, Kubernetes); or give the three flags below.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 in a multi-process run.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process: 0 .. num_processes-1.')
_INIT_TIMEOUT = flags.DEFINE_integer(
    'init_timeout', 300, 'Seconds a multi-process run waits for all its processes to join, '
    'after which each one still waiting gives up with an error (one that failed before joining '
    'holds the others this long).', lower_bound=1)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout', 100, 'Seconds without a heartbeat after which a multi-process run '
    'counts a process as dead (killed, or its host lost) and JAX ends the others; lower it to '
    'stop them sooner, keep it above the longest pause a busy host may have.', lower_bound=1)
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  from charlm import validate
  validate.check_environment()  # Before JAX reads the environment.
  from charlm import host, sharding, trainer  # Imports JAX; keep flag errors fast.
  host.keep_freed_memory()  # Before JAX starts its threads; see host.py.
  config = _CONFIG.value
  validate.validate(config, _WORKDIR.value or trainer.default_workdir(config))  # Before any work.
  host.use_cpu_devices(host.cpu_devices(config))  # The mesh takes every device; see host.py.
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  auto=_DISTRIBUTED.value, init_timeout=_INIT_TIMEOUT.value,
                                  heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)
  summary = trainer.train_and_evaluate(config, _WORKDIR.value or trainer.default_workdir(config))
  if summary['interrupted']:
    sys.exit(130)


if __name__ == '__main__':
  cli.run(main)
