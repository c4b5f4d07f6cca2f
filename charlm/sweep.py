"""Sweeps hyperparameters: one charlm.train run per point of a grid or a random search.

    python -m charlm.sweep --config configs/shakespeare.py:small \\
        --grid model.hidden=128,256,512 --grid model.num_layers=1,2,3 [--set train.steps=2000] \\
        [--random N --seed S --range optim.lr=1e-4:1e-2:log] [--name NAME] [--parallel K] \\
        [--launcher local|slurm]
    python -m charlm.sweep --name NAME --report

Each point trains in runs/sweeps/NAME/<its overrides>/; the same command again resumes the
sweep (finished points are skipped, interrupted ones resume from their checkpoints, failed ones
are retried once). results.md and results.csv in the sweep directory hold one row per point,
sorted by validation loss. Ctrl-C (or SIGTERM) makes the running points save a checkpoint and
stop, and the sweep exits 130 with one line on stderr; a second Ctrl-C aborts the points.
--random N draws N distinct points, the same for the same --seed; where the --grid lists and
whole-number --range ranges hold fewer than N, it is an error before anything runs.
"""
import os
import sys

from absl import flags

from charlm import cli

_CONFIG = flags.DEFINE_string('config', None, 'Config file of every point, as charlm.train '
                              'takes it (configs/x.py[:variant]).')
_GRID = flags.DEFINE_multi_string('grid', [], 'SECTION.FIELD=V1,V2,...: values of one field; '
                                  'the points are every combination (repeatable).')
_RANGE = flags.DEFINE_multi_string('range', [], 'SECTION.FIELD=LOW:HIGH[:log]: a range to draw '
                                   'from, with --random (repeatable).')
_SET = flags.DEFINE_multi_string('set', [], 'SECTION.FIELD=VALUE for every point (repeatable).')
_RANDOM = flags.DEFINE_integer('random', 0, 'Draw this many distinct random points from --grid '
                               'lists and --range ranges instead of taking the whole grid (an '
                               'error where fewer exist).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random points.')
_NAME = flags.DEFINE_string('name', None, 'The sweep\'s name: its directory is ROOT/NAME '
                            '(default: the config\'s name).')
_ROOT = flags.DEFINE_string('root', os.path.join('runs', 'sweeps'), 'Where sweeps live.')
_PARALLEL = flags.DEFINE_integer('parallel', None, 'Points at once: each on its own GPU locally '
                                 '(default 1; a CPU runs one at a time); under SLURM the job '
                                 'array\'s limit (default: all at once).')
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'Run the points here, or '
                              'as a SLURM job array through submitit (pip install charlm[sweep]).')
_RETRY = flags.DEFINE_bool('retry_failed', False, 'Run failed points again even when they have '
                           'failed twice.')
_REPORT = flags.DEFINE_bool('report', False, 'Print (and rewrite) the results of the sweep '
                            '--name; run nothing.')
_PARTITION = flags.DEFINE_string('slurm_partition', None, 'SLURM partition.')
_NODES = flags.DEFINE_integer('nodes', 1, 'SLURM nodes per point; above 1, each point trains '
                              'with --distributed (jax.distributed reads SLURM\'s environment).')
_GPUS = flags.DEFINE_integer('gpus_per_node', None, 'GPUs per node of each SLURM job.')
_CPUS = flags.DEFINE_integer('cpus_per_task', None, 'CPUs of each SLURM task.')
_TIMEOUT = flags.DEFINE_integer('timeout_min', 240, 'Time limit of each SLURM job, in minutes.')


def main(argv):
  del argv
  from charlm import sweeping
  from charlm.errors import UserError
  if _REPORT.value:
    if not _NAME.value and not _CONFIG.value:
      raise UserError('--report needs the sweep: give --name NAME (or its --config)')
    name = _NAME.value or sweeping.load_config(_CONFIG.value).name
    rows = sweeping.write_results(os.path.join(_ROOT.value, name))
    print(sweeping.results_markdown(rows))
    return
  if not _CONFIG.value:
    raise UserError('give the config of the points: --config configs/x.py[:variant]')
  spec = sweeping.Spec(
      config=_CONFIG.value, grid=sweeping.parse_assignments(_GRID.value, '--grid', True),
      ranges=sweeping.parse_assignments(_RANGE.value, '--range'), random=_RANDOM.value,
      seed=_SEED.value, sets=list(_SET.value))
  name = _NAME.value or sweeping.load_config(spec.config).name
  slurm = {'timeout_min': _TIMEOUT.value, 'nodes': _NODES.value}
  for key, flag in [('slurm_partition', _PARTITION), ('gpus_per_node', _GPUS),
                    ('cpus_per_task', _CPUS)]:
    if flag.value is not None:
      slurm[key] = flag.value
  sweepdir = os.path.join(_ROOT.value, name)
  try:
    rows, finished = sweeping.run(spec, sweepdir, _LAUNCHER.value, _PARALLEL.value,
                                  _RETRY.value, slurm)
  except KeyboardInterrupt:  # Ctrl-C outside the points' runs: planning, waiting for SLURM.
    rows, finished = None, False
  if not finished:
    if _LAUNCHER.value == 'slurm':
      resume = 'points submitted run on; --report with the same --name gives their results'
    else:
      done = '' if rows is None else (
          f'{sum(r["status"] == "done" for r in rows)} of {len(rows)} points done; ')
      resume = f'{done}run the same command to resume {sweepdir}'
    print(f'interrupted: {resume}', file=sys.stderr, flush=True)
    sys.exit(130)
  failed = [r for r in rows if r['status'] == 'failed']
  if failed:
    raise UserError(f'{len(failed)} of {len(rows)} points failed (the table gives each one\'s '
                    f'error; {sweepdir}/<point>/train.log has the rest); run the same command to '
                    'retry them once')


if __name__ == '__main__':
  cli.run(main)
