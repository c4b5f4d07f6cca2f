"""charlm.sweep: a 2x2 sweep of :smoke runs, its rerun, a failing point, a kill, submitit."""
import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli, write_text

from charlm import sweeping
from charlm.errors import UserError

# Points that differ in neither shape nor program: after the first, each compiles from the
# test session's XLA cache.
GRID = ['--grid', 'optim.lr=0.002,0.004', '--grid', 'train.seed=0,1']
NAMES = {'lr=0.002,seed=0', 'lr=0.002,seed=1', 'lr=0.004,seed=0', 'lr=0.004,seed=1'}


def sweep_args(tmp, *args):
  return ['--config', 'configs/default.py:smoke', '--set', f'data.path={tmp}/text.txt',
          '--set', f'data.cache_dir={tmp}/cache', '--set', 'train.final_sample_length=0',
          '--root', str(tmp / 'sweeps'), *args]


def rerun_completes_the_rest(args, sweepdir, first, done):
  """The same sweep command again runs the three points left, leaving the finished one's files
  (`first`, modified at `done`) untouched, and all four end done."""
  again = run_cli('charlm.sweep', *args)
  assert again.returncode == 0, again.stdout + again.stderr
  assert '1 finished or given up, 3 to run' in again.stdout
  assert mtimes(first) == done
  with open(sweepdir / 'results.csv') as f:
    assert [r['status'] for r in csv.DictReader(f)] == ['done'] * 4


def mtimes(directory) -> dict:
  """Every file under `directory` but the sweep's records and results, with its mtime."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      if name not in ('point.json', 'train.log', '.lock', 'results.csv', 'results.md'):
        out[os.path.join(root, name)] = os.stat(os.path.join(root, name)).st_mtime_ns
  return out


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
  """A 2x2 sweep, run, then run again: (sweep dir, first result, second result)."""
  tmp = tmp_path_factory.mktemp('sweep')
  write_text(tmp / 'text.txt')
  first = run_cli('charlm.sweep', *sweep_args(tmp, *GRID, '--name', 'grid'))
  before = mtimes(tmp / 'sweeps' / 'grid')
  second = run_cli('charlm.sweep', *sweep_args(tmp, *GRID, '--name', 'grid'))
  return tmp / 'sweeps' / 'grid', first, second, before


def test_a_grid_trains_every_point_in_its_own_workdir(grid):
  sweepdir, first, _, _ = grid
  assert first.returncode == 0, first.stderr + first.stdout
  assert {p.name for p in sweepdir.iterdir() if p.is_dir()} == NAMES
  for name in NAMES:
    assert (sweepdir / name / 'checkpoints').is_dir()
    assert json.load(open(sweepdir / name / 'point.json'))['status'] == 'done'
  with open(sweepdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert {r['point'] for r in rows} == NAMES and all(r['status'] == 'done' for r in rows)
  losses = [float(r['best_val_loss']) for r in rows]
  assert losses == sorted(losses) and all(0 < x < 10 for x in losses)
  for r in rows:
    assert float(r['best_val_bpc']) == pytest.approx(float(r['best_val_loss']) / 0.693147, 1e-4)
    assert int(r['steps']) == 20 and int(r['params']) > 0 and float(r['chars_per_sec']) > 0
    point = r['point'].split(',')
    assert r['overrides'] == f'optim.{point[0]} train.{point[1]}'
  table = (sweepdir / 'results.md').read_text().splitlines()
  assert len(table) == 2 + 4 and table[0].startswith('| overrides | params | steps | val loss')
  assert '\n'.join(table) in first.stdout  # Printed at the end.


def test_running_it_again_trains_nothing(grid):
  sweepdir, _, second, before = grid
  assert second.returncode == 0, second.stderr
  assert '4 points, 4 finished or given up, 0 to run' in second.stdout
  assert 'training' not in second.stdout
  assert mtimes(sweepdir) == before


def test_report_prints_the_table_and_runs_nothing(grid):
  sweepdir, first, _, _ = grid
  report = run_cli('charlm.sweep', '--name', 'grid', '--root', str(sweepdir.parent), '--report')
  assert report.returncode == 0, report.stderr
  assert report.stdout.strip() == (sweepdir / 'results.md').read_text().strip()


def test_each_point_carries_its_overrides_as_hparams_in_its_own_run(grid):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tensorboard.plugins.hparams import metadata
  sweepdir = grid[0]
  workdir = sweepdir / 'lr=0.004,seed=1'
  assert len([n for n in os.listdir(workdir) if n.startswith('events.out')]) == 1
  assert not [d for d in os.listdir(workdir) if (workdir / d).is_dir() and d != 'checkpoints']
  events = EventAccumulator(str(workdir))
  events.Reload()
  content = events.PluginTagToContent('hparams')
  # No experiment summary: the dashboard gathers all runs' hparams and takes their scalars,
  # val/loss among them, as metrics.
  assert set(content) == {metadata.SESSION_START_INFO_TAG}
  assert 'val/loss' in events.Tags()['scalars']
  info = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
  hparams = {k: v.number_value if v.HasField('number_value') else v.string_value
             for k, v in info.hparams.items()}
  assert hparams == {'optim.lr': 0.004, 'train.seed': 1, 'data.path': f'{sweepdir.parent.parent}'
                     '/text.txt', 'data.cache_dir': f'{sweepdir.parent.parent}/cache',
                     'train.final_sample_length': 0}


def test_a_point_with_a_bad_value_fails_alone_and_is_retried_once(grid):
  sweepdir, *_ = grid
  tmp = sweepdir.parent.parent
  args = sweep_args(tmp, '--grid', 'optim.lr=0.002,-1', '--name', 'bad')
  first = run_cli('charlm.sweep', *args)
  assert first.returncode == 1
  error = 'optim.lr is -1.0; use a finite number > 0'
  assert f'lr=-1: failed: {error}' in first.stdout
  assert first.stderr.strip().splitlines()[-1].startswith('error: 1 of 2 points failed')
  with open(tmp / 'sweeps' / 'bad' / 'results.csv') as f:
    rows = {r['point']: r for r in csv.DictReader(f)}
  assert rows['lr=0.002']['status'] == 'done' and rows['lr=-1']['status'] == 'failed'
  assert rows['lr=-1']['error'] == error
  second = run_cli('charlm.sweep', *args)
  assert '1 finished or given up, 1 to run' in second.stdout and 'lr=0.002: training' not in \
      second.stdout
  third = run_cli('charlm.sweep', *args)
  assert '2 finished or given up, 0 to run' in third.stdout and third.returncode == 1
  assert f'| failed: {error} |' in third.stdout


@pytest.mark.parametrize('args,expect', [
    (['--grid', 'model.hiden=16,32'], 'the config has no field model.hiden (did you mean '
     '"model.hidden"?)'),
    (['--grid', 'model.hidden=16,big'], "override 'model.hidden=big': bad value for model."
     'hidden (type int'),
    (['--set', 'optim.lrr=1e-3'], 'the config has no field optim.lrr (did you mean "optim.lr"?)'),
    (['--range', 'optim.lr=1e-4:1e-2:log'], '--range draws random points: give their number'),
    (['--random', '3', '--range', 'optim.name=1:2'], 'optim.name is not a number'),
    (['--random', '3', '--grid', 'optim.lr=0.1,0.2'], '--random 3 asks for 3 distinct points, and '
     'the --grid lists hold only 2; drop --random to run the whole grid, or ask for --random 2 '
     'or fewer'),
    (['--grid', 'optim.lr=0.1', '--parallel', '2'], '--parallel 2 runs one point per GPU, and no '
     'GPU is visible'),
])
def test_mistakes_stop_the_whole_sweep_before_anything_runs(tmp_path, args, expect):
  result = run_cli('charlm.sweep', *sweep_args(tmp_path, *args, '--name', 'x'),
                   env={'CUDA_VISIBLE_DEVICES': ''})
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # One line.
  assert expect in result.stderr, result.stderr
  assert not (tmp_path / 'sweeps').exists()


def test_another_sweep_of_the_same_name_is_one_line(tmp_path):
  sweepdir = str(tmp_path / 's')
  spec = sweeping.Spec('configs/default.py:smoke', grid={'optim.lr': ['0.1']})
  config = sweeping.load_config(spec.config)
  sweeping.open_sweep(sweepdir, spec, sweeping.plan(spec, config))
  other = sweeping.Spec('configs/default.py:smoke', grid={'optim.lr': ['0.2']})
  with pytest.raises(UserError, match=r'holds another sweep \(its grid differ.*another --name'):
    sweeping.open_sweep(sweepdir, other, sweeping.plan(other, config))


def test_grid_and_random_points():
  config = sweeping.load_config('configs/default.py:smoke')
  spec = sweeping.Spec('c', grid={'model.hidden': ['16', '32'], 'model.cell': ['lstm', 'gru'],
                                  'data.split': sweeping.split_values_text(
                                      '(0.8,0.1,0.1),(0.9,0.05,0.05)')})
  points = sweeping.plan(spec, config)
  assert len(points) == 8
  assert points[0].name == 'hidden=16,cell=lstm,split=_0.8,0.1,0.1_'
  assert points[-1].overrides == ['model.hidden=32', 'model.cell=gru',
                                  'data.split=(0.9,0.05,0.05)']
  spec = sweeping.Spec('c', grid={'model.cell': ['lstm', 'gru']}, random=5, seed=3,
                       ranges={'optim.lr': '1e-4:1e-2:log', 'model.hidden': '8:64'})
  points = sweeping.plan(spec, config)
  assert points == sweeping.plan(spec, config) and len(points) == 5
  for p in points:
    values = dict(o.split('=') for o in p.overrides)
    assert 1e-4 <= float(values['optim.lr']) <= 1e-2 and 8 <= int(values['model.hidden']) <= 64
  assert sweeping.train_overrides(sweeping.Spec('c', sets=['train.steps=5']), points[0])[-1] == (
      'train.hparams=train.steps,model.cell,optim.lr,model.hidden')


def test_random_points_are_as_many_as_asked_or_an_error():
  """--random N never yields fewer than N points: where the lists (and whole-number ranges) hold
  fewer distinct points, or the draws find fewer, planning stops with one line that says so."""
  config = sweeping.load_config('configs/default.py:smoke')
  grid = {'model.cell': ['lstm', 'gru'], 'model.hidden': ['16', '32']}
  with pytest.raises(UserError, match=r'^--random 5 asks for 5 distinct points, and the --grid '
                     r'lists hold only 4; drop --random to run the whole grid, or ask for '
                     r'--random 4 or fewer$'):
    sweeping.plan(sweeping.Spec('c', grid=grid, random=5), config)
  assert len(sweeping.plan(sweeping.Spec('c', grid=grid, random=4), config)) == 4
  # A repeated value is one value; a whole-number range holds its whole numbers.
  spec = sweeping.Spec('c', grid={'model.cell': ['lstm', 'gru', 'gru']}, random=7,
                       ranges={'model.hidden': '8:10'})
  with pytest.raises(UserError, match=r'^--random 7 asks for 7 distinct points, and the --grid '
                     r'lists and the whole-number --range ranges hold only 6; give their values '
                     r'as --grid lists \(without --random\) to run them all, or ask for --random '
                     r'6 or fewer$'):
    sweeping.plan(spec, config)
  spec.random = 6  # Exactly as many: every one of them, the same ones each time.
  points = sweeping.plan(spec, config)
  assert points == sweeping.plan(spec, config)
  assert sorted(p.name for p in points) == sorted(
      f'cell={c},hidden={h}' for c in ('lstm', 'gru') for h in (8, 9, 10))
  log = sweeping.Spec('c', ranges={'model.hidden': '1:3:log'}, random=3)
  assert sorted(p.name for p in sweeping.plan(log, config)) == ['hidden=1', 'hidden=2', 'hidden=3']
  with pytest.raises(UserError, match=r'^--random 2 draws from --grid lists and --range ranges, '
                     'and none is given'):
    sweeping.plan(sweeping.Spec('c', random=2), config)
  # A range of another number field is drawn to 3 significant digits: a narrow one holds few.
  narrow = sweeping.Spec('c', ranges={'model.dropout': '0.1:0.1004'}, random=2, seed=5)
  with pytest.raises(UserError, match=r'^--random 2: 1 distinct point turned up in 1,200 draws '
                     r'\(--seed 5; .*\); widen the --range ranges or ask for --random 1 or fewer$'):
    sweeping.plan(narrow, config)


def test_parallel_points_each_get_their_own_gpu():
  assert sweeping.slot_environments(1, []) == [{}]
  assert sweeping.slot_environments(1, ['0', '1']) == [{}]  # One point sees them all.
  assert sweeping.slot_environments(2, ['4', '6', '7']) == [
      {'CUDA_VISIBLE_DEVICES': '4', 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'},
      {'CUDA_VISIBLE_DEVICES': '6', 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}]
  with pytest.raises(UserError, match='--parallel 3 needs a GPU per point, and 2 are visible'):
    sweeping.slot_environments(3, ['0', '1'])
  with pytest.raises(UserError, match='no GPU is visible'):
    sweeping.slot_environments(2, [])
  assert sweeping.visible_gpus({'CUDA_VISIBLE_DEVICES': '2,3'}) == ['2', '3']
  assert sweeping.visible_gpus({'CUDA_VISIBLE_DEVICES': ''}) == []
  assert sweeping.visible_gpus({}, nvidia_smi='/nonexistent/nvidia-smi') == []


def test_error_line_is_the_last_error():
  assert sweeping.error_line('step 1\rstep 2\nerror: model.hidden is -1; use ...\n') == (
      'model.hidden is -1; use ...')
  assert sweeping.error_line('Traceback\n  File x\nRuntimeError: boom\n') == 'RuntimeError: boom'


def test_error_line_of_a_crash_is_its_cause():
  """A process that XLA aborts ends in a list of extension modules; the line that says why is
  XLA's fatal log line, or the exception its traceback raised."""
  xla = ('training on 2 CPU devices\n'
         'E1204 04:06:49.904172    9656 rendezvous.cc:116] [id=0] This thread has been waiting\n'
         'F1204 04:07:29.904627    9656 rendezvous.cc:161] [id=0] Termination timeout for `all '
         'reduce` of 40 seconds exceeded.\n*** Check failure stack trace: ***\n'
         '    @     0x7f9e6b040634  absl::LogMessage::SendToLog()\nFatal Python error: Aborted\n'
         'Extension modules: yaml._yaml, jaxlib.cpu_feature_guard (total: 2)\n')
  assert sweeping.error_line(xla) == (
      'crashed: [id=0] Termination timeout for `all reduce` of 40 seconds exceeded.')
  python = ('step 10\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
            '    f()\nValueError: bad shape\nException ignored in: <function>\n')
  assert sweeping.error_line(python) == 'crashed: ValueError: bad shape'


def _free(lock_path) -> bool:
  with open(lock_path) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      return False


@pytest.mark.slow
def test_a_killed_sweep_completes_when_run_again(tmp_path):
  """SIGKILL of the sweep after its first point: the running point saves and stops (it gets
  SIGTERM when the sweep dies); a rerun leaves the first point alone and finishes the rest."""
  write_text(tmp_path / 'text.txt')
  longer = ['--set', 'train.steps=400', '--set', 'train.eval_every=50', '--set',
            'train.ckpt_every=50', '--set', 'train.log_every=25']
  args = sweep_args(tmp_path, *GRID, *longer, '--name', 'k')
  sweepdir = tmp_path / 'sweeps' / 'k'
  process = subprocess.Popen([sys.executable, '-m', 'charlm.sweep', *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  first, second = sweepdir / 'lr=0.002,seed=0', sweepdir / 'lr=0.002,seed=1'
  deadline = time.time() + 240
  while time.time() < deadline and not (
      (second / 'train.log').exists() and 'step 100/' in (second / 'train.log').read_text()):
    time.sleep(0.1)
  process.send_signal(signal.SIGKILL)
  process.wait()
  done = mtimes(first)
  for name in NAMES:  # Wait for the orphaned point to save and exit.
    while (sweepdir / name / '.lock').exists() and not _free(sweepdir / name / '.lock'):
      time.sleep(0.2)
  rerun_completes_the_rest(args, sweepdir, first, done)
  log = (second / 'train.log').read_text()
  assert 'stopping: saving a checkpoint' in log and f'resuming {second} from step' in log


def _interrupt(process, line: str, delay: float = 0.0, after=lambda: True, wait: float = 60):
  """Reads the sweep's output up to `line`, waits `delay` seconds and until `after()`, sends
  SIGINT (Ctrl-C) and waits for the sweep to end: (its output, its stderr, seconds from the
  signal to its end)."""
  out = []
  while not out or line not in out[-1]:
    out.append(process.stdout.readline())
    assert out[-1], f'the sweep ended before {line!r}: {"".join(out)}{process.stderr.read()}'
  time.sleep(delay)
  while not after():
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  start = time.time()
  rest, err = process.communicate(timeout=wait)
  return ''.join(out) + rest, err, time.time() - start


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_and_running_it_again_completes_it(tmp_path):
  """Ctrl-C while a point trains: it saves and stops, recorded 'interrupted', and the sweep
  exits 130 with one line; Ctrl-C as a point starts (before charlm.train's handler) stops it
  too, neither lost nor counted as a failure; the same command then finishes every point and
  leaves the finished one alone."""
  write_text(tmp_path / 'text.txt')
  longer = ['--set', 'train.steps=400', '--set', 'train.eval_every=50', '--set',
            'train.ckpt_every=50', '--set', 'train.log_every=25']
  args = sweep_args(tmp_path, *GRID, *longer, '--name', 'c')
  sweepdir = tmp_path / 'sweeps' / 'c'
  first, second = sweepdir / 'lr=0.002,seed=0', sweepdir / 'lr=0.002,seed=1'

  def start():
    return subprocess.Popen([sys.executable, '-m', 'charlm.sweep', *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def trains():
    return 'step 50/' in (second / 'train.log').read_text()

  out, err, seconds = _interrupt(start(), 'lr=0.002,seed=1: training', after=trains)
  assert 'Traceback' not in out + err and seconds < 30, out + err
  assert err.splitlines() == [f'interrupted: 1 of 4 points done; run the same command to resume '
                              f'{sweepdir}'], out + err
  assert 'stopping: the running point saves a checkpoint and stops' in out
  assert 'lr=0.002,seed=1: interrupted' in out
  record = json.load(open(second / 'point.json'))
  assert record['status'] == 'interrupted' and record['failures'] == 0
  assert json.load(open(first / 'point.json'))['status'] == 'done'
  assert not (sweepdir / 'lr=0.004,seed=0').exists()
  with open(sweepdir / 'results.csv') as f:
    assert {r['point']: r['status'] for r in csv.DictReader(f)} == {
        'lr=0.002,seed=0': 'done', 'lr=0.002,seed=1': 'interrupted',
        'lr=0.004,seed=0': 'pending', 'lr=0.004,seed=1': 'pending'}
  log = (second / 'train.log').read_text()
  assert 'stopping: saving a checkpoint' in log and 'checkpoint saved' in log
  done = mtimes(first)

  # Ctrl-C half a second after the resumed point starts, while it imports JAX: before the fix
  # that point lost the KeyboardInterrupt in a gc callback and trained on to its end, or
  # aborted and was recorded as failed.
  out, err, _ = _interrupt(start(), 'lr=0.002,seed=1: training', delay=0.5)
  assert 'Traceback' not in out + err, out + err
  assert len(err.splitlines()) == 1 and err.startswith('interrupted: 1 of 4 points done'), err
  record = json.load(open(second / 'point.json'))
  assert record['status'] == 'interrupted' and record['failures'] == 0, record
  assert mtimes(first) == done

  rerun_completes_the_rest(args, sweepdir, first, done)
  assert f'resuming {second} from step' in (second / 'train.log').read_text()


@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_point_sweep(tmp_path):
  write_text(tmp_path / 'text.txt')
  spec = sweeping.Spec('configs/default.py:smoke', grid={'optim.lr': ['0.002', '0.004']},
                       sets=[f'data.path={tmp_path}/text.txt', f'data.cache_dir={tmp_path}/cache',
                             'train.final_sample_length=0'])
  sweepdir = str(tmp_path / 'sweeps' / 's')
  rows, finished = sweeping.run(spec, sweepdir, 'slurm', slurm={'cluster': 'local',
                                                                'timeout_min': 10})
  assert finished and [r['status'] for r in rows] == ['done', 'done']
  assert os.listdir(os.path.join(sweepdir, 'submitit'))  # The jobs' logs.
