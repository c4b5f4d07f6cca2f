"""Hyperparameter sweeps: many `charlm.train` runs, one a point of a grid or a random search.

A sweep lives in one directory (runs/sweeps/NAME):

    sweep.json              what was asked (config, grid, ranges, sets) and the points
    .lock                   held while the sweep runs: one sweep of a name at a time
    <point>/                an ordinary charlm.train workdir, named by the point's overrides
    <point>/point.json      the sweep's record: status, failures, error line, seconds, step
    <point>/train.log       what charlm.train printed
    results.md, results.csv one row per point, sorted by validation loss

Every point is a subprocess `python -m charlm.train --config C --workdir <point> --config.K=V
...`, so a crash cannot take the sweep down and each point resumes as any run does. Running
the same sweep again skips finished points (point.json says done and its last checkpoint is
there), resumes interrupted ones from their checkpoints and retries a failed one once. Points
run one at a time, or one per GPU at once (`slot_environments`), or as a SLURM job array
through submitit (`run_submitit`).
"""
import copy
import csv
import dataclasses
import io
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

from charlm import atomic, locks, overrides
from charlm.errors import UserError

FAILURES_RETRIED = 1  # A point that failed is run again this many times, then left failed.
RESULT_FIELDS = ('point', 'overrides', 'params', 'steps', 'best_val_loss', 'best_val_bpc',
                 'train_seconds', 'chars_per_sec', 'status', 'error', 'workdir')
LN2 = math.log(2)


@dataclasses.dataclass
class Spec:
  """What a sweep asks for: the config (`configs/x.py[:variant]`), grid values (text, as typed)
  and ranges ('LOW:HIGH[:log]') per dotted field, `random` points drawn (0: the whole grid)
  with `seed`, and overrides `sets` shared by every point."""
  config: str
  grid: dict = dataclasses.field(default_factory=dict)
  ranges: dict = dataclasses.field(default_factory=dict)
  random: int = 0
  seed: int = 0
  sets: list = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    return {'config': self.config, 'grid': {k: list(v) for k, v in self.grid.items()},
            'ranges': dict(self.ranges), 'random': self.random, 'seed': self.seed,
            'sets': list(self.sets)}


@dataclasses.dataclass
class Point:
  name: str  # Its workdir's name: 'hidden=128,num_layers=2'.
  overrides: list  # The swept fields' 'SECTION.FIELD=VALUE'.


# ---------------------------------------------------------------------------------------------
# Parsing what the user typed.

def parse_assignments(texts, what: str, split_values: bool = False) -> dict:
  """['model.hidden=128,256', ...] -> {'model.hidden': ['128', '256']} (`split_values`) or
  {'model.hidden': '128,256'}; a field given twice is a UserError."""
  parsed = {}
  for text in texts:
    key, value = overrides.parse(text)
    if key in parsed:
      raise UserError(f'{what} {text!r}: {key} is given twice')
    if split_values:
      value = split_values_text(value)
      if not value:
        raise UserError(f'{what} {text!r}: give at least one value, e.g. model.hidden=128,256')
    parsed[key] = value
  return parsed


def split_values_text(text: str) -> list:
  """'128,256' -> ['128', '256']; commas inside brackets stay: '(0.8,0.1,0.1),(0.9,0.05,0.05)'
  is two values."""
  values, depth, start = [], 0, 0
  for i, c in enumerate(text):
    depth += (c in '([{') - (c in ')]}')
    if c == ',' and depth == 0:
      values.append(text[start:i].strip())
      start = i + 1
  values.append(text[start:].strip())
  return [v for v in values if v]


def parse_range(key: str, text: str, old) -> tuple:
  """'1e-4:1e-2:log' -> (0.0001, 0.01, 'log') for a number field whose value is `old`."""
  parts = text.split(':')
  what = f'--range {key}={text}'
  if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ('lin', 'log')):
    raise UserError(f'{what}: use LOW:HIGH or LOW:HIGH:log, e.g. optim.lr=1e-4:1e-2:log')
  if isinstance(old, bool) or not isinstance(old, int | float):
    raise UserError(f'{what}: {key} is not a number (it is {old!r}); use --grid for it')
  try:
    low, high = float(parts[0]), float(parts[1])
  except ValueError:
    raise UserError(f'{what}: LOW and HIGH must be numbers') from None
  scale = parts[2] if len(parts) == 3 else 'lin'
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    raise UserError(f'{what}: give finite LOW < HIGH')
  if scale == 'log' and low <= 0:
    raise UserError(f'{what}: a log range needs LOW > 0')
  return low, high, scale


# ---------------------------------------------------------------------------------------------
# The points.

def load_config(spec: str):
  """The config `spec` ('configs/x.py[:variant]') names: its `get_config(variant)`, locked, as
  charlm.train's --config loads it."""
  import importlib.util
  path, _, variant = spec.partition(':')
  if not os.path.isfile(path):
    raise UserError(f'config file not found: {path}; pass a Python config file, for example '
                    '--config configs/shakespeare.py')
  try:
    module_spec = importlib.util.spec_from_file_location('charlm_sweep_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(*([variant] if variant else []))
  except Exception as e:  # The config file's own error, in one line.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raise UserError(f'cannot load --config {spec}: {lines[-1] if lines else repr(e)}') from None
  config.lock()
  return config


def plan(spec: Spec, config) -> list:
  """The sweep's points, each checked against `config`: an unknown field or a value of the
  wrong type anywhere is one UserError before anything runs. Ranges (`validate`'s) are left to
  each point's run, so that one bad value fails that point alone."""
  for key in list(spec.grid) + list(spec.ranges):
    overrides.lookup(config, key, f'--grid/--range {key}')
  both = set(spec.grid) & set(spec.ranges)
  if both:
    raise UserError(f'{", ".join(sorted(both))} is given by both --grid and --range; give one')
  if spec.ranges and not spec.random:
    raise UserError('--range draws random points: give their number with --random N')
  if spec.random < 0:
    raise UserError(f'--random is {spec.random}; give a number of points >= 1')
  ranges = {k: parse_range(k, v, overrides.lookup(config, k, '--range'))
            for k, v in spec.ranges.items()}
  combos = _draw(spec, config, ranges) if spec.random else _grid(spec.grid)
  names = _short_names(list(spec.grid) + list(spec.ranges))
  points, taken = [], set()
  for combo in combos:
    name = ','.join(f'{names[k]}={v}' for k, v in combo.items()) or 'base'
    name = re.sub(r'[^\w.=,+-]', '_', name)[:200]
    unique, n = name, 1
    while unique in taken:
      n += 1
      unique = f'{name}-{n}'
    taken.add(unique)
    point = Point(unique, [f'{k}={v}' for k, v in combo.items()])
    overrides.apply(copy.deepcopy(config), spec.sets + point.overrides)  # Types, up front.
    points.append(point)
  return points


def _grid(grid: dict) -> list:
  combos = [{}]
  for key, values in grid.items():
    combos = [{**c, key: v} for c in combos for v in values]
  return combos


def _draw(spec: Spec, config, ranges: dict) -> list:
  """`spec.random` distinct points: a random value of each grid list, a random number in each
  range (log-uniform for ':log'; whole numbers for whole-number fields, others to 3 significant
  digits), drawn in turn from `spec.seed`, a draw that repeats an earlier point skipped.

  Never fewer points than asked: where the space is finite (grid lists and whole-number ranges
  only) and holds fewer than `spec.random` distinct points, a UserError says so before any draw;
  where `_draws` draws turn up fewer (ranges narrow at 3 significant digits), a UserError too.
  Both depend on the spec alone: every run of the same sweep plans the same points or fails."""
  whole = {k: isinstance(overrides.lookup(config, k, '--range'), int) for k in ranges}
  distinct = _distinct_points(spec.grid, ranges, whole)
  if distinct is not None and distinct < spec.random:
    raise UserError(_too_few(spec, ranges, distinct))
  rng = random.Random(spec.seed)
  combos, seen = [], set()
  for _ in range(_draws(spec)):
    combo = {k: rng.choice(v) for k, v in spec.grid.items()}
    for key, (low, high, scale) in ranges.items():
      if scale == 'log':
        x = math.exp(rng.uniform(math.log(low), math.log(high)))
      else:
        x = rng.uniform(low, high)
      combo[key] = str(round(x)) if whole[key] else f'{x:.3g}'
    frozen = tuple(combo.items())
    if frozen not in seen:
      seen.add(frozen)
      combos.append(combo)
      if len(combos) == spec.random:
        break
  else:
    raise UserError(f'--random {spec.random}: {len(combos)} distinct point'
                    f'{"s" if len(combos) != 1 else ""} turned up in '
                    f'{_draws(spec):,} draws (--seed {spec.seed}; ranges are drawn to 3 '
                    'significant digits or whole numbers); widen the --range ranges or ask for '
                    f'--random {len(combos)} or fewer')
  return combos


def _draws(spec: Spec) -> int:
  """How many draws `_draw` makes at most before it gives up finding `spec.random` points."""
  return 100 * spec.random + 1000


def _distinct_points(grid: dict, ranges: dict, whole: dict) -> int | None:
  """How many distinct points a random draw can give: the product of each grid list's distinct
  values and each whole-number range's whole numbers; None (unbounded) with a range of
  another number field."""
  count = 1
  for values in grid.values():
    count *= len(set(values))
  for key, (low, high, _) in ranges.items():
    if not whole[key]:
      return None
    count *= math.ceil(high + 0.5) - math.floor(low - 0.5) - 1  # round(x) for x in (low, high).
  return count


def _too_few(spec: Spec, ranges: dict, distinct: int) -> str:
  if not spec.grid and not ranges:
    return (f'--random {spec.random} draws from --grid lists and --range ranges, and none is '
            'given (there is 1 point, the config itself); give some, or drop --random')
  held = ' and '.join(w for w, given in [('the --grid lists', spec.grid),
                                         ('the whole-number --range ranges', ranges)] if given)
  fix = ('give their values as --grid lists (without --random) to run them all' if ranges else
         'drop --random to run the whole grid')
  return (f'--random {spec.random} asks for {spec.random} distinct points, and {held} hold only '
          f'{distinct}; {fix}, or ask for --random {distinct} or fewer')


def _short_names(keys: list) -> dict:
  """Each dotted key by its last part ('hidden'), or whole where two keys share it."""
  last = [k.split('.')[-1] for k in keys]
  return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def train_overrides(spec: Spec, point: Point) -> list:
  """All the overrides a point trains with: the shared sets, its own, and the HParams fields
  (the fields swept and set), unless the sets choose train.hparams themselves."""
  given = spec.sets + point.overrides
  keys = [overrides.parse(o)[0] for o in given]
  if 'train.hparams' in keys or not keys:
    return given
  return given + [f'train.hparams={",".join(keys)}']


def train_command(spec: Spec, point: Point, workdir: str, distributed: bool = False) -> list:
  """The point's `python -m charlm.train ...`, as a user would type it."""
  path, colon, variant = spec.config.partition(':')
  config = os.path.abspath(path) + colon + variant  # Jobs may start elsewhere.
  return ([sys.executable, '-m', 'charlm.train', '--config', config, '--workdir', workdir]
          + (['--distributed'] if distributed else [])
          + [f'--config.{o}' for o in train_overrides(spec, point)])


# ---------------------------------------------------------------------------------------------
# Devices.

def visible_gpus(environ=None, nvidia_smi: str | None = None) -> list:
  """The GPUs this process may use: $CUDA_VISIBLE_DEVICES if set, else what `nvidia-smi`
  lists (none without it). Asks no JAX, which would take memory on a GPU."""
  environ = os.environ if environ is None else environ
  if 'CUDA_VISIBLE_DEVICES' in environ:
    return [g.strip() for g in environ['CUDA_VISIBLE_DEVICES'].split(',') if g.strip()]
  nvidia_smi = nvidia_smi or shutil.which('nvidia-smi')
  if not nvidia_smi:
    return []
  try:
    out = subprocess.run([nvidia_smi, '--query-gpu=index', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def slot_environments(parallel: int, gpus: list) -> list:
  """The environment changes of each of `parallel` run slots. One slot changes nothing (a point
  sees every device, as charlm.train does); several each get one GPU of `gpus` and no
  preallocation (JAX's default takes 75% of a GPU's memory at start)."""
  if parallel < 1:
    raise UserError(f'--parallel is {parallel}; give a number of points at once >= 1')
  if parallel == 1:
    return [{}]
  if not gpus:
    raise UserError(f'--parallel {parallel} runs one point per GPU, and no GPU is visible; on '
                    'a CPU points run one at a time (they would share its cores): use '
                    '--parallel 1')
  if parallel > len(gpus):
    raise UserError(f'--parallel {parallel} needs a GPU per point, and {len(gpus)} are visible '
                    f'({",".join(gpus)}); use --parallel {len(gpus)} or fewer')
  return [{'CUDA_VISIBLE_DEVICES': g, 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}
          for g in gpus[:parallel]]


# ---------------------------------------------------------------------------------------------
# The sweep directory.

def open_sweep(sweepdir: str, spec: Spec, points: list) -> None:
  """Records the sweep in `sweepdir`/sweep.json, or checks that the one there is the same;
  another one of the same name is a UserError."""
  path = os.path.join(sweepdir, 'sweep.json')
  record = {**spec.to_json(), 'points': [dataclasses.asdict(p) for p in points]}
  if os.path.exists(path):
    old = read_sweep(sweepdir)
    differs = [k for k in spec.to_json() if old.get(k) != record[k]]
    if differs:
      raise UserError(f'{sweepdir} holds another sweep (its {", ".join(differs)} differ: '
                      f'{"; ".join(f"{k} was {old.get(k)!r}" for k in differs)}); give the '
                      'same flags to resume it or another --name for a new sweep')
    return
  os.makedirs(sweepdir, exist_ok=True)
  atomic.write_json(path, record, indent=2)


def read_sweep(sweepdir: str) -> dict:
  path = os.path.join(sweepdir, 'sweep.json')
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f'no sweep in {sweepdir} (no sweep.json); run it first, or give its --name '
                    '(and --root)') from None
  except ValueError as e:
    raise UserError(f'{path} is not readable JSON ({e}); move it away to start over') from None


def read_point(workdir: str) -> dict:
  """The sweep's record of a point (status 'pending' when there is none)."""
  try:
    with open(os.path.join(workdir, 'point.json')) as f:
      return json.load(f)
  except (FileNotFoundError, ValueError):
    return {'status': 'pending', 'failures': 0, 'seconds': 0.0}


def last_checkpoint(workdir: str) -> int | None:
  """The newest finished checkpoint's step in `workdir` (Orbax names each by its step)."""
  try:
    steps = [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()]
  except FileNotFoundError:
    return None
  return max(steps, default=None)


def is_finished(workdir: str) -> bool:
  """Trained: the sweep saw it exit 0, and the checkpoint it then had is still there."""
  record = read_point(workdir)
  return (record['status'] == 'done' and record.get('step') is not None
          and last_checkpoint(workdir) == record['step'])


def to_run(sweepdir: str, points: list, retry_failed: bool = False) -> list:
  """The points this invocation runs: not finished, and not failed more than retried."""
  todo = []
  for point in points:
    workdir = os.path.join(sweepdir, point.name)
    record = read_point(workdir)
    if is_finished(workdir):
      continue
    if record['status'] == 'failed' and record['failures'] > FAILURES_RETRIED and not retry_failed:
      continue
    todo.append(point)
  return todo


def error_line(log: str) -> str:
  """The one line that says why a run failed: its last `error: ...`; for a crash, the fatal
  message of XLA's log (`F1204 ... file.cc:161] message`) or the exception a traceback ends in;
  else the last line."""
  lines = [line.strip() for line in re.split(r'[\r\n]', log) if line.strip()]
  errors = [line for line in lines if line.startswith('error: ')]
  if errors:
    return errors[-1][len('error: '):]
  fatal = [m.group(1) for m in map(_FATAL.match, lines) if m]
  if fatal:
    return f'crashed: {fatal[-1]}'
  if 'Traceback (most recent call last):' in lines:
    after = lines[len(lines) - lines[::-1].index('Traceback (most recent call last):'):]
    raised = [line for line in after if _RAISED.match(line)]
    if raised:
      return f'crashed: {raised[-1]}'
  return lines[-1] if lines else 'exited without output'


_FATAL = re.compile(r'^F\d{4} [\d:.]+\s+\d+ [^\]]+\] (.+)$')  # absl's FATAL log line.
_RAISED = re.compile(r'^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*')


def record_result(workdir: str, returncode: int, seconds: float, log: str) -> dict:
  """Writes point.json after a run of the point ended with `returncode`."""
  record = read_point(workdir)
  record['seconds'] = record.get('seconds', 0.0) + seconds
  record['returncode'] = returncode
  if returncode == 0:
    record.update(status='done', step=last_checkpoint(workdir), error='')
  elif returncode in (130, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM):
    record.update(status='interrupted', error='interrupted; run the sweep again to resume it')
  else:
    record.update(status='failed', failures=record.get('failures', 0) + 1,
                  error=error_line(log))
  os.makedirs(workdir, exist_ok=True)
  atomic.write_json(os.path.join(workdir, 'point.json'), record, indent=2)
  return record


def _child_env(extra: dict) -> dict:
  """The environment of a point's run: this one, `extra`, and this charlm first on the path."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, **extra)
  env['PYTHONPATH'] = os.pathsep.join([root] + [p for p in [env.get('PYTHONPATH')] if p])
  return env


def _die_with_parent():
  """In a point's process: a SIGTERM when the sweep dies (kill -9 included), so the run saves
  a checkpoint and stops instead of training on, orphaned, holding its workdir (Linux)."""
  try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class _Run:
  """One point's charlm.train process, its output going to `workdir`/train.log."""

  def __init__(self, spec: Spec, point: Point, sweepdir: str, env: dict, distributed=False):
    self.point, self.env = point, env
    self.workdir = os.path.join(sweepdir, point.name)
    os.makedirs(self.workdir, exist_ok=True)
    self.log_path = os.path.join(self.workdir, 'train.log')
    self.log = open(self.log_path, 'ab')
    self.offset = self.log.tell()
    self.start = time.perf_counter()
    self.process = subprocess.Popen(
        train_command(spec, point, self.workdir, distributed), stdout=self.log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_child_env(env),
        start_new_session=True, preexec_fn=_die_with_parent)  # The sweep forwards signals.

  def finish(self, returncode: int) -> dict:
    self.log.close()
    with open(self.log_path, 'rb') as f:
      f.seek(self.offset)
      log = f.read().decode('utf-8', errors='replace')
    return record_result(self.workdir, returncode, time.perf_counter() - self.start, log)


def run_point(spec: Spec, point: Point, sweepdir: str, env: dict | None = None,
              distributed: bool = False) -> dict:
  """Runs one point to its end (a submitit job's body); its point.json record. In a job of
  several tasks, each runs the point's train process and only the first records it."""
  run = _Run(spec, point, sweepdir, env or {}, distributed)
  returncode = run.process.wait()
  if int(os.environ.get('SLURM_PROCID', '0')) != 0:
    run.log.close()
    return {}
  return run.finish(returncode)


def run_local(spec: Spec, points: list, sweepdir: str, slots: list, say=print) -> bool:
  """Runs `points`, as many at once as there are `slots` (each an environment change), from
  this thread. A SIGINT or SIGTERM goes on to the running points (one started as it arrives
  too) as a SIGTERM, and no new point starts: a point that trains saves a checkpoint and stops
  (charlm.train's handler), one still starting ends at once. A SIGINT would not do: Python
  raises it as a KeyboardInterrupt, which a point still starting (no handler yet) can lose in a
  garbage collection callback ('Exception ignored in: _xla_gc_callback') and train on to its
  end. A second signal goes on too, and aborts them. True when nothing was interrupted."""
  pending, running, free = list(points), [], list(range(len(slots)))
  stopping = []  # The signals received, in order.
  told = {}  # How many of them each running point has been sent.
  total = len(points)

  def on_signal(signum, frame):  # Only notes it: the loop below sends it on, printing here
    del frame  # could interrupt a print of the loop (a reentrant call, a RuntimeError).
    stopping.append(signum)

  old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  done, said = 0, False
  try:
    while (pending and not stopping) or running:
      while pending and free and not stopping:
        slot = free.pop(0)
        point = pending.pop(0)
        running.append((slot, _Run(spec, point, sweepdir, slots[slot])))
        where = f' on GPU {slots[slot]["CUDA_VISIBLE_DEVICES"]}' if slots[slot] else ''
        say(f'[{done + len(running)}/{total}] {point.name}: training{where}')
      if stopping and not said:
        said = True
        say('stopping: ' + ('the running points save a checkpoint and stop' if len(running) > 1
                            else 'the running point saves a checkpoint and stops' if running
                            else 'no point starts') + ' (signal again to abort)')
      for _, run in running:  # Each signal once to each point, those started since included.
        received = len(stopping)  # The handler may append while this runs.
        for _ in stopping[told.get(run, 0):received]:
          try:
            os.killpg(run.process.pid, signal.SIGTERM)
          except ProcessLookupError:
            pass
        told[run] = received
      time.sleep(0.1)
      for slot, run in list(running):
        returncode = run.process.poll()
        if returncode is None:
          continue
        running.remove((slot, run))
        free.append(slot)
        done += 1
        record = run.finish(returncode)
        say(f'[{done}/{total}] {run.point.name}: {_outcome(record)}')
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  return not stopping


def _outcome(record: dict) -> str:
  if record['status'] == 'done':
    return f'done in {record["seconds"]:.0f} s'
  if record['status'] == 'failed':
    again = (' (it runs once more when the sweep runs again)'
             if record['failures'] <= FAILURES_RETRIED else '')
    return f'failed: {record["error"]}{again}'
  return record['status']


def run_submitit(spec: Spec, points: list, sweepdir: str, cluster: str | None = 'slurm',
                 parameters: dict | None = None, distributed: bool = False, say=print) -> list:
  """Submits `points` as one job array through submitit's AutoExecutor (`cluster` 'slurm', or
  'local' to run them here), waits for them and returns their records. `parameters` go to
  `executor.update_parameters` (timeout_min, slurm_partition, nodes, gpus_per_node, ...)."""
  try:
    import submitit
  except ImportError:
    raise UserError('--launcher slurm needs submitit: pip install "charlm[sweep]"') from None
  executor = submitit.AutoExecutor(folder=os.path.join(sweepdir, 'submitit'), cluster=cluster)
  executor.update_parameters(name=f'charlm-sweep-{os.path.basename(sweepdir)}',
                             **(parameters or {}))
  n = len(points)
  jobs = executor.map_array(run_point, [spec] * n, points, [sweepdir] * n, [None] * n,
                            [distributed] * n)
  say(f'submitted {n} point{"s" if n != 1 else ""} as job array {jobs[0].job_id.split("_")[0]} '
      f'(logs in {executor.folder}); waiting for them (Ctrl-C leaves them running)')
  records = []
  for point, job in zip(points, jobs, strict=True):
    try:
      record = job.result()
    except Exception as e:  # The job itself failed (killed, timed out): record it.
      line = error_line(str(e))
      record = record_result(os.path.join(sweepdir, point.name), 1, 0.0, f'error: {line}')
    records.append(record)
    say(f'{point.name}: {_outcome(record)}')
  return records


def run(spec: Spec, sweepdir: str, launcher: str = 'local', parallel: int | None = None,
        retry_failed: bool = False, slurm: dict | None = None, say=print) -> tuple:
  """Plans, checks and runs (or resumes) the sweep in `sweepdir`; writes its results and
  returns (rows, whether it ran to the end: False after a SIGINT or SIGTERM). Holds
  `sweepdir`/.lock throughout: one sweep of a name at a time. `slurm`: submitit's parameters,
  and 'cluster' ('slurm'; 'local' runs the job array here)."""
  config = load_config(spec.config)
  points = plan(spec, config)
  if launcher == 'local':
    slots = slot_environments(parallel or 1, visible_gpus() if (parallel or 1) > 1 else [])
  elif launcher != 'slurm':
    raise UserError(f'unknown --launcher {launcher!r}; use local or slurm')
  with locks.workdir_lock(sweepdir, what='sweep', flag='--name'):
    open_sweep(sweepdir, spec, points)
    todo = to_run(sweepdir, points, retry_failed)
    say(f'sweep {sweepdir}: {len(points)} points, {len(points) - len(todo)} finished or given '
        f'up, {len(todo)} to run')
    finished = True
    if todo and launcher == 'local':
      finished = run_local(spec, todo, sweepdir, slots, say)
    elif todo:
      slurm = dict(slurm or {})
      cluster = slurm.pop('cluster', 'slurm')
      if parallel:
        slurm['slurm_array_parallelism'] = parallel
      run_submitit(spec, todo, sweepdir, cluster, slurm, slurm.get('nodes', 1) > 1, say)
    rows = write_results(sweepdir)
  say(results_markdown(rows))
  return rows, finished


# ---------------------------------------------------------------------------------------------
# Results.

def point_row(sweepdir: str, point: dict) -> dict:
  """A point's results row, from its workdir's metrics.jsonl, config.json and point.json."""
  workdir = os.path.join(sweepdir, point['name'])
  record = read_point(workdir)
  val, rates, steps = [], [], None
  try:
    with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8', errors='replace') as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        steps = max(steps or 0, int(row.get('step', 0)))
        if 'val/loss' in row:
          val.append(row['val/loss'])
        if 'chars_per_sec' in row:
          rates.append(row['chars_per_sec'])
  except FileNotFoundError:
    pass
  params = None
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      params = json.load(f).get('resolved', {}).get('train', {}).get('params')
  except (FileNotFoundError, ValueError):
    pass
  best = min(val) if val else None
  status = 'done' if is_finished(workdir) else record['status']
  return {'point': point['name'], 'overrides': ' '.join(point['overrides']), 'params': params,
          'steps': steps, 'best_val_loss': best, 'best_val_bpc': best / LN2 if val else None,
          'train_seconds': record.get('seconds') or None,
          'chars_per_sec': statistics.median(rates) if rates else None, 'status': status,
          'error': record.get('error', '') if status == 'failed' else '', 'workdir': workdir}


def collect(sweepdir: str) -> list:
  """Every point's row, sorted by best validation loss (points without one last)."""
  rows = [point_row(sweepdir, p) for p in read_sweep(sweepdir)['points']]
  return sorted(rows, key=lambda r: (r['best_val_loss'] is None, r['best_val_loss'] or 0))


def write_results(sweepdir: str) -> list:
  """Writes results.csv and results.md in `sweepdir`; returns the rows."""
  rows = collect(sweepdir)
  out = io.StringIO()
  writer = csv.DictWriter(out, RESULT_FIELDS, lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  atomic.write_text(os.path.join(sweepdir, 'results.csv'), out.getvalue())
  atomic.write_text(os.path.join(sweepdir, 'results.md'), results_markdown(rows) + '\n')
  return rows


def results_markdown(rows: list) -> str:
  """The results as a Markdown table: losses in nats per character and bits per character."""
  def number(value, spec):
    return '' if value is None else format(value, spec)
  lines = ['| overrides | params | steps | val loss (nats) | val bpc | train s | chars/s '
           '| status |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |']
  for r in rows:
    status = f'failed: {r["error"]}' if r['status'] == 'failed' else r['status']
    lines.append(f'| {r["overrides"] or "(none)"} | {number(r["params"], ",")} | '
                 f'{number(r["steps"], "d")} | {number(r["best_val_loss"], ".4f")} | '
                 f'{number(r["best_val_bpc"], ".4f")} | {number(r["train_seconds"], ".0f")} | '
                 f'{number(r["chars_per_sec"], ",.0f")} | {status.replace("|", "/")} |')
  return '\n'.join(lines)
