"""Data parallelism across devices and processes, on CPU devices (JAX_NUM_CPU_DEVICES)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, run_cli, write_text

SMOKE = ['--config', 'configs/default.py:smoke', '--config.train.final_sample_length=0',
         '--config.train.log_every=1', '--config.model.dropout=0.1']


def curve(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {(r['step'], k): r[k] for r in rows for k in ('train/loss', 'val/loss') if k in r}


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def devices_env(n):
  return {'JAX_NUM_CPU_DEVICES': str(n), 'JAX_PLATFORMS': 'cpu'}


@pytest.fixture(scope='module')
def four_device_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('four')
  text = write_text(tmp / 'text.txt')
  args = [*SMOKE, f'--config.data.path={text}', f'--config.data.cache_dir={tmp}/cache']
  result = run_cli('charlm.train', *args, f'--workdir={tmp}/run', env=devices_env(4))
  assert result.returncode == 0, result.stderr
  return args, tmp


def start_two_processes(args, workdir, extra=((), ())):
  """Two processes of 2 CPU devices each; `extra` holds each one's own further arguments."""
  port = free_port()
  joins = [  # Process 0 joins through flags, process 1 through the environment.
      ([f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', '--process_id=0'], {}),
      ([], {'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}', 'JAX_NUM_PROCESSES': '2',
            'JAX_PROCESS_ID': '1'})]
  return [subprocess.Popen(
      [sys.executable, '-m', 'charlm.train', *args, f'--workdir={workdir}', *flags, *more],
      cwd=ROOT, env=dict(os.environ, **devices_env(2), **env), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for (flags, env), more in zip(joins, extra, strict=True)]


def finish(procs, timeout=240):
  """The (stdout, stderr) of each process; a hung child must not outlive the test."""
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()


def test_two_processes_match_one_process_with_four_devices(four_device_run, tmp_path):
  args, tmp = four_device_run
  workdir = tmp_path / 'run'
  procs = start_two_processes(args, workdir)
  outputs = finish(procs)
  assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert 'step 20/20' in outputs[0][0] and 'step 20/20' not in outputs[1][0]  # Process 0 logs.
  single, multi = curve(tmp / 'run'), curve(workdir)
  assert single.keys() == multi.keys() and len(single) == 22
  np.testing.assert_allclose([multi[k] for k in single], list(single.values()), rtol=2e-5)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20']


def steps_logged(workdir):
  """The steps of the train rows in metrics.jsonl."""
  path = workdir / 'metrics.jsonl'
  rows = [json.loads(line) for line in open(path)] if path.exists() else []
  return [r['step'] for r in rows if 'train/loss' in r]


@pytest.mark.slow  # About 27 s: two processes started twice.
def test_sigterm_to_one_process_stops_both_at_one_checkpoint_and_resumes(tmp_path):
  # A preempted host gets the signal alone: both processes agree at the next logged step, save
  # the same checkpoint and exit 130, as one process does; the same command resumes.
  text = write_text(tmp_path / 'text.txt')
  args = [*SMOKE, f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache',
          '--config.train.steps=300', '--config.train.ckpt_every=0',
          '--config.train.eval_every=0', '--config.train.log_every=5']
  workdir = tmp_path / 'run'
  procs = start_two_processes(args, workdir)
  deadline = time.time() + 120
  while time.time() < deadline and len(steps_logged(workdir)) < 4 and procs[1].poll() is None:
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  outputs = finish(procs, timeout=120)
  errors = outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert [p.returncode for p in procs] == [130, 130], errors
  stopped = [int(s) for s in os.listdir(workdir / 'checkpoints')]
  assert len(stopped) == 1 and 0 < stopped[0] < 300 and stopped[0] % 5 == 0, (stopped, errors)
  assert f'interrupted at step {stopped[0]}' in outputs[0][0]
  assert 'stopping: saving a checkpoint at the next logging step' in outputs[1][1]

  procs = start_two_processes(args, workdir)
  outputs = finish(procs)
  assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert f'resuming {workdir} from step {stopped[0]}' in outputs[0][0]
  assert steps_logged(workdir) == list(range(5, 301, 5))


def test_an_error_in_one_process_stops_the_other_with_its_message(tmp_path):
  # Process 1 alone fails (its copy of the text is UTF-16): process 0 would wait for it in the
  # first collective until JAX's heartbeat or shutdown timeout (minutes); it exits at once.
  text = write_text(tmp_path / 'text.txt')
  utf16 = tmp_path / 'utf16.txt'
  utf16.write_bytes(open(text).read().encode('utf-16-le'))
  args = [*SMOKE, f'--config.data.cache_dir={tmp_path}/cache']
  procs = start_two_processes(args, tmp_path / 'run', extra=(
      [f'--config.data.path={text}'], [f'--config.data.path={utf16}']))
  started = time.time()
  outputs = finish(procs, timeout=90)
  assert time.time() - started < 20  # Was 30 s (a Gloo timeout) without the message.
  assert [p.returncode for p in procs] == [1, 1], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  error = f'{utf16} is 50% NUL bytes: probably UTF-16LE text'
  assert f'error: {error}' in outputs[1][1]
  assert f'error: process 1 failed: {error}' in outputs[0][1]


def test_a_failure_inside_the_loop_of_one_process_stops_the_other(tmp_path):
  # A second Ctrl-C aborts process 1 mid-run (no step syncs before the end), while process 0
  # waits for it in a train step's all-reduce: that one exits too, at once and saying why.
  text = write_text(tmp_path / 'text.txt')
  args = [*SMOKE, f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache',
          '--config.train.steps=1000000', '--config.train.log_every=0',
          '--config.train.eval_every=0', '--config.train.ckpt_every=0']
  procs = start_two_processes(args, tmp_path / 'run')
  for line in procs[0].stdout:  # Then compiles the step and trains.
    if line.startswith('training on'):
      break
  time.sleep(2)
  procs[1].send_signal(signal.SIGINT)
  time.sleep(0.5)
  procs[1].send_signal(signal.SIGINT)
  started = time.time()
  outputs = finish(procs, timeout=60)
  assert time.time() - started < 20
  assert [p.returncode for p in procs] == [1, 130], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert 'error: interrupted by a second signal' in outputs[1][1]
  assert 'error: process 1 failed: interrupted by a second signal' in outputs[0][1]


def test_a_run_whose_other_processes_never_join_gives_up_after_init_timeout(tmp_path):
  # Process 1 never starts (or failed before joining): process 0 would wait 300 s in JAX.
  text = write_text(tmp_path / 'text.txt')
  args = [*SMOKE, f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache',
          '--init_timeout=2']
  started = time.time()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'charlm.train', *args, f'--workdir={tmp_path}/run',
       f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2', '--process_id=0'],
      cwd=ROOT, env=dict(os.environ, **devices_env(2)), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)]
  outputs = finish(procs, timeout=60)
  assert time.time() - started < 30
  assert procs[0].returncode == 1
  assert outputs[0][1].startswith('error: not every process of the distributed run joined '
                                  'within --init_timeout=2 s (2 expected at 127.0.0.1:')
  assert outputs[0][1].count('\n') == 1 and not (tmp_path / 'run').exists()


def test_a_workdir_in_use_stops_every_process_with_the_same_error(tmp_path):
  from charlm import locks
  text = write_text(tmp_path / 'text.txt')
  args = [*SMOKE, f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache']
  with locks.workdir_lock(str(tmp_path / 'run')):  # Another run holds it.
    procs = start_two_processes(args, tmp_path / 'run')
    started = time.time()
    outputs = finish(procs, timeout=90)
  assert time.time() - started < 20
  assert [p.returncode for p in procs] == [1, 1], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  error = f'{tmp_path / "run"} is in use by another run (PID {os.getpid()} on host '
  assert outputs[0][1].startswith(f'error: {error}') and outputs[0][1].count('\n') == 1
  assert f'error: process 0 failed: {error}' in outputs[1][1]
  assert 'training on' not in outputs[0][0]


@pytest.mark.slow
def test_a_killed_process_ends_the_others_after_the_heartbeat_timeout(tmp_path):
  text = write_text(tmp_path / 'text.txt')
  args = [*SMOKE, f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache',
          '--config.train.steps=1000000', '--config.train.log_every=0',
          '--config.train.eval_every=0', '--config.train.ckpt_every=0', '--heartbeat_timeout=3']
  procs = start_two_processes(args, tmp_path / 'run')
  for line in procs[0].stdout:
    if line.startswith('training on'):
      break
  time.sleep(2)
  procs[1].kill()  # No handler runs: only the missing heartbeats tell process 0.
  started = time.time()
  outputs = finish(procs, timeout=90)
  # JAX aborts it (SIGABRT, its own message) 3 s on. With the default 100 s, Gloo's 30 s
  # timeout in the next all-reduce ended it first, after 30-45 s here.
  assert time.time() - started < 15, outputs[0][1][-2000:]
  assert procs[0].returncode != 0


def test_resume_a_four_device_checkpoint_on_one_device(four_device_run, tmp_path):
  args, tmp = four_device_run
  workdir = tmp_path / 'run'
  first = run_cli('charlm.train', *args, '--config.train.steps=10', f'--workdir={workdir}',
                  env=devices_env(4))
  assert first.returncode == 0, first.stderr
  resumed = run_cli('charlm.train', *args, f'--workdir={workdir}', env=devices_env(1))
  assert resumed.returncode == 0, resumed.stderr
  assert 'from step 10' in resumed.stdout
  straight, mixed = curve(tmp / 'run'), curve(workdir)
  assert straight.keys() == mixed.keys()
  np.testing.assert_allclose([mixed[k] for k in straight], list(straight.values()), rtol=2e-5)


def test_batch_size_that_does_not_divide_is_a_clear_error(tmp_path):
  text = write_text(tmp_path / 'text.txt')
  result = run_cli('charlm.train', *SMOKE, f'--config.data.path={text}',
                   f'--config.data.cache_dir={tmp_path}/cache', '--config.train.batch_size=6',
                   f'--workdir={tmp_path}/run', env=devices_env(4))
  assert result.returncode == 1
  assert result.stderr.strip() == (
      'error: batch_size 6 does not divide evenly over 4 devices; use a multiple of 4 (for '
      'example 4, 8, 12, 16) with --config.train.batch_size')
  assert not (tmp_path / 'run').exists()


COLLECTIVES = '''
import collections, json, re, sys
import jax
from charlm import sharding, trainer
from configs import default
config = default.get_config('smoke')
config.model.update(cell=sys.argv[1], impl=sys.argv[2], native_cpu=sys.argv[3] == 'native')
if sys.argv[3] == 'gpu_loops':  # The GPU's loops, compiled for CPU devices.
  config.model.update(loop_layout='batch_major', unroll=8, unroll_backward=8)
mesh = sharding.create_mesh()
model, tx, init_state = trainer.build(config, 30, steps_per_epoch=100)
state = jax.eval_shape(init_state, jax.random.PRNGKey(0))
shardings, data = trainer.state_shardings(state, mesh), sharding.batch_sharding(mesh)
step = jax.jit(trainer.make_train_step(model, tx),
               in_shardings=(shardings, data, data, data, None))
shape = (config.train.batch_size, config.train.seq_len)
batch = [jax.ShapeDtypeStruct(shape, d) for d in ('int32', 'int32', 'float32')]
hlo = step.lower(state, *batch, jax.ShapeDtypeStruct((), 'bool')).compile().as_text()
ops = re.findall(r' (all-gather|all-reduce|all-to-all|collective-permute)(?:-start)?\\(', hlo)
print(json.dumps(dict(collections.Counter(ops), native=hlo.count('target="charlm_lstm'))))
'''


@pytest.mark.parametrize('cell,impl,loops', [('lstm', 'fused', 'native'),
                                             ('lstm', 'fused', 'cpu_loops'),
                                             ('lstm', 'fused', 'gpu_loops'),
                                             ('lstm', 'wavefront', 'gpu_loops'),
                                             ('gru', 'fused', '-'), ('lstm', 'scan', '-')])
def test_data_parallel_step_only_all_reduces(cell, impl, loops):
  # Each device computes its part of every weight gradient, then one all-reduce at the end sums
  # them with the loss. A product over a flattened [time * batch] axis once made XLA gather the
  # whole batch's activations onto every device instead (7 all-gathers per step, each device
  # computing the full gradients), and dividing the loss by the batch's total weight before
  # differentiating added a sum across devices that the backward pass waited for. With both,
  # 2 CPU devices trained 2x128 slower than 1; without, 1.4x faster.
  result = subprocess.run([sys.executable, '-c', COLLECTIVES, cell, impl, loops], cwd=ROOT,
                          env=dict(os.environ, **devices_env(4), PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
  collectives = json.loads(result.stdout.strip().splitlines()[-1])
  # The native loops: 2 layers x (forward, backward), each device running its rows.
  assert collectives.pop('native') == (4 if loops == 'native' else 0)
  assert set(collectives) == {'all-reduce'}, collectives
  if cell == 'lstm' and impl != 'scan':  # Autodiff through lax.scan sums some gradients early.
    assert collectives['all-reduce'] == 1, collectives
