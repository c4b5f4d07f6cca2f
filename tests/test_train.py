import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, run_cli, smoke_config, write_text

from charlm import inference, trainer
from charlm.checkpoint import Checkpoints
from charlm.errors import UserError
from charlm.metrics import HPARAMS


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def losses(workdir, key='train/loss'):
  return {m['step']: m[key] for m in read_metrics(workdir) if key in m}


def test_overfits_a_tiny_text(tmp_path):
  path = tmp_path / 'tiny.txt'
  path.write_text('hello world, hello charlm. ' * 40)
  config = smoke_config(tmp_path, str(path), train__steps=300, train__eval_every=300,
                        train__ckpt_every=0, train__log_every=1, optim__lr=1e-2,
                        data__split=(0.9, 0.1, 0.0))
  summary = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  curve = losses(tmp_path / 'run')
  assert curve[1] > 2.0  # Untrained: about ln(vocab).
  assert curve[300] < 0.1
  assert summary['val_loss'] < 0.1


def test_initial_loss_is_about_log_vocab(tmp_path):
  config = smoke_config(tmp_path, train__steps=1, train__log_every=1)
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  vocab = len(json.load(open(tmp_path / 'run' / 'vocab.json'))['chars'])
  assert abs(losses(tmp_path / 'run')[1] - math.log(vocab)) < 0.3


def test_resume_is_exact(tmp_path):
  overrides = dict(train__log_every=1, train__eval_every=5, train__ckpt_every=5,
                   model__dropout=0.2, model__cell='lstm')
  straight = str(tmp_path / 'straight')
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **overrides), straight)
  resumed = str(tmp_path / 'resumed')
  first = trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=10, **overrides), resumed)
  assert first['step'] == 10
  second = trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=20, **overrides), resumed)
  assert second['step'] == 20
  for key in ('train/loss', 'val/loss', 'grad_norm'):
    assert losses(resumed, key) == losses(straight, key)  # Bitwise, on CPU.
  assert sorted(losses(resumed)) == list(range(1, 21))  # No duplicated lines.


def test_rerunning_a_finished_run_does_not_train(tmp_path, capsys):
  config = smoke_config(tmp_path, train__steps=5, train__log_every=1)
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  summary = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['step'] == 5
  assert 'already trained to step 5' in capsys.readouterr().out
  assert len(losses(tmp_path / 'run')) == 5


@pytest.mark.parametrize('cell', ['gru', 'rnn'])
def test_other_cells_train(tmp_path, cell):
  config = smoke_config(tmp_path, model__cell=cell, train__steps=30, train__log_every=10,
                        optim__lr=1e-2)
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  curve = losses(tmp_path / 'run')
  assert curve[30] < curve[10]


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=10), workdir)
  config = smoke_config(tmp_path, train__steps=20, optim__lr=1e30, optim__clip=0.0,
                        train__log_every=1)
  with pytest.raises(trainer.TrainingDiverged, match=r'non-finite at step 1\d'):
    trainer.train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['10']
  *_, params, step = inference.load_checkpoint(workdir, 'latest')
  assert step == 10
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def test_early_stopping_with_patience(tmp_path):
  config = smoke_config(tmp_path, train__steps=100, train__eval_every=2, train__patience=2,
                        optim__name='sgd', optim__lr=1e-30)  # Below float32's resolution.
  summary = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['step'] == 6  # Evals at 2 (best), 4 and 6 (no improvement twice).


def test_learning_rate_schedules():
  from configs import default
  optim = default.get_config().optim
  optim.schedule, optim.decay_after_epochs, optim.decay_rate = 'char_rnn', 2, 0.5
  schedule = trainer.make_schedule(optim, steps_per_epoch=10, total_steps=100)
  assert [float(schedule(s)) for s in (0, 19, 20, 30, 45)] == pytest.approx(
      [optim.lr, optim.lr, optim.lr / 2, optim.lr / 4, optim.lr / 8])
  optim.schedule, optim.warmup_steps = 'cosine', 10
  schedule = trainer.make_schedule(optim, 10, 100)
  assert float(schedule(0)) == 0 and float(schedule(10)) == pytest.approx(optim.lr)
  assert float(schedule(100)) == pytest.approx(optim.lr * optim.min_lr_ratio)
  optim.schedule = 'linear'
  with pytest.raises(UserError, match='constant, char_rnn or cosine'):
    trainer.make_schedule(optim, 10, 100)


BUDGET = dict(train__minutes=0.1, train__log_every=10, train__eval_every=0,
              train__eval_batches=2, train__ckpt_every=25, optim__schedule='cosine')


def test_a_time_budget_sets_the_steps_records_them_and_a_resume_keeps_them(
    tmp_path, capsys, monkeypatch):
  workdir = str(tmp_path / 'run')
  timed = []  # What the run measured; the count is fixed, so that a busy machine passes too.
  monkeypatch.setattr(trainer.loop, 'steps_within', lambda *args: timed.append(args) or 60)
  budget = dict(BUDGET, optim__schedule='auto')  # Cosine, since the run has a budget.
  summary = trainer.train_and_evaluate(smoke_config(tmp_path, **budget), workdir)
  steps = summary['step']
  (seconds, step_s, periodic), = timed
  assert steps == 60 and seconds < 60 * BUDGET['train__minutes'] and step_s > 0
  assert set(periodic) == {'eval', 'checkpoint'} and periodic['checkpoint'][1] == 25
  config = json.load(open(os.path.join(workdir, 'config.json')))
  assert config['train']['steps'] == config['resolved']['train']['steps'] == steps
  assert config['resolved']['train']['budget']['step_s'] == step_s
  assert config['optim']['schedule'] == 'cosine'
  assert max(losses(workdir)) == steps
  out = capsys.readouterr().out
  assert f'train.minutes=0.1: {steps} steps' in out and ' left 0:00:' in out
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'))
  assert ckpts.restore_meta(steps)['config']['train']['steps'] == steps
  assert not os.path.exists(os.path.join(workdir, '.budget-timing'))
  ckpts.manager.delete(steps)  # Back to an earlier checkpoint, as if killed there.
  earlier = ckpts.latest_step()
  ckpts.close()
  assert 0 < earlier < steps
  first = {key: losses(workdir, key) for key in ('train/loss', 'val/loss', 'grad_norm')}

  def timed_again(*args):
    raise AssertionError('a resume timed the run again')
  monkeypatch.setattr(trainer, '_fit_budget', timed_again)
  resumed = trainer.train_and_evaluate(smoke_config(tmp_path, **budget), workdir)
  assert resumed['step'] == steps and f'train.minutes=0.1: {steps} steps, as recorded' in (
      capsys.readouterr().out)
  again = {key: losses(workdir, key) for key in first}
  assert again == first  # The same schedule: bitwise the same losses.
  assert json.load(open(os.path.join(workdir, 'config.json')))['resolved'] == config['resolved']
  with pytest.raises(UserError, match='was started with train.minutes=0.1, now 0.2; .*same value'):
    trainer.train_and_evaluate(smoke_config(tmp_path, **dict(BUDGET, train__minutes=0.2)),
                               workdir)


def test_the_auto_schedule_is_cosine_under_a_budget_and_constant_otherwise(tmp_path):
  config = smoke_config(tmp_path)
  assert config.optim.schedule == 'auto'  # The default.
  assert trainer.resolve_schedule(config).optim.schedule == 'constant'
  assert trainer.resolve_schedule(smoke_config(tmp_path, train__minutes=1.0)).optim.schedule == (
      'cosine')
  chosen = smoke_config(tmp_path, train__minutes=1.0, optim__schedule='char_rnn')
  assert trainer.resolve_schedule(chosen) is chosen  # A named schedule is what runs.


@pytest.mark.slow
def test_a_budgeted_cosine_schedule_ends_its_decay_at_the_last_step_within_the_time(tmp_path):
  workdir = str(tmp_path / 'run')
  config = smoke_config(tmp_path, **dict(BUDGET, train__minutes=0.5, train__log_every=1))
  assert config.optim.schedule == 'cosine'
  began = time.perf_counter()
  summary = trainer.train_and_evaluate(config, workdir)
  assert time.perf_counter() - began < 1.2 * 60 * 0.5  # Timings on a shared machine vary.
  resolved = json.load(open(os.path.join(workdir, 'config.json')))['resolved']
  assert resolved['train']['steps'] == summary['step']
  lrs = losses(workdir, 'lr')  # The lr of each step's update, logged after it.
  assert lrs[summary['step']] == pytest.approx(
      float(trainer.make_schedule(config.optim, 1, summary['step'])(summary['step'] - 1)))
  assert lrs[summary['step']] < 1.01 * config.optim.lr * config.optim.min_lr_ratio


def test_a_budget_too_short_for_one_step_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  config = smoke_config(tmp_path, **dict(BUDGET, train__minutes=1e-4))
  with pytest.raises(UserError, match='train.minutes=0.0001 leaves no time to train: .*give more'):
    trainer.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == ['.lock', 'checkpoints']
  assert os.listdir(workdir / 'checkpoints') == []


def test_workdir_from_another_vocabulary_or_shape_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=5), workdir)
  other = tmp_path / 'other.txt'
  other.write_text('completely different characters: 0123456789 ' * 100)
  with pytest.raises(UserError, match='another vocabulary'):
    trainer.train_and_evaluate(smoke_config(tmp_path, str(other), train__steps=10), workdir)
  with pytest.raises(UserError, match='another model shape'):
    trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=10, model__hidden=48), workdir)


@pytest.mark.parametrize('make,expect', [
    (lambda p: None, 'not found'),
    (lambda p: p.write_text(''), 'empty'),
    (lambda p: p.write_text('tiny'), 'too few for one batch'),
    (lambda p: p.write_bytes(b'caf\xe9 au lait\n' * 200), r'not valid UTF-8 \(byte 3\)'),
])
def test_bad_text_files_fail_before_writing_anything(tmp_path, make, expect):
  path = tmp_path / 'input.txt'
  make(path)
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=expect) as e:
    trainer.train_and_evaluate(smoke_config(tmp_path, str(path)), str(workdir))
  assert '\n' not in str(e.value)
  assert not workdir.exists()


def test_batch_size_must_divide_over_devices():
  from charlm import sharding
  mesh = sharding.create_mesh()
  sharding.check_batch_size(mesh.size * 3, mesh)
  if mesh.size > 1:
    with pytest.raises(UserError, match='multiple of'):
      sharding.check_batch_size(mesh.size * 3 + 1, mesh)
  assert jax.device_count() == mesh.size


def test_cpu_devices_split_small_models_only(monkeypatch):
  from charlm import host, lstm_cpu
  from configs import default
  monkeypatch.delenv('JAX_NUM_CPU_DEVICES', raising=False)
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)

  def devices(hidden=128, batch_size=32, cpu_devices=0, cell='lstm', dtype='float32',
              impl='auto', native_cpu=True):
    config = default.get_config()
    config.model.hidden, config.train.batch_size = hidden, batch_size
    config.model.cell, config.model.dtype, config.model.impl = cell, dtype, impl
    config.model.native_cpu = native_cpu
    config.train.cpu_devices = cpu_devices
    return host.cpu_devices(config)

  # The native LSTM loops split the batch over the cores themselves: one device.
  monkeypatch.setattr(host, 'accelerator_possible', lambda: False)
  assert lstm_cpu.available()
  assert devices() == 1 and devices(hidden=256) == 1 and devices(impl='fused') == 1
  assert devices(impl='wavefront') == 2  # XLA's loops.
  assert devices(cell='gru') == 2 and devices(dtype='bfloat16') == 2  # XLA's loops.
  assert devices(native_cpu=False) == 2 and devices(hidden=256, native_cpu=False) == 2
  # Nothing is built on machines with accelerators.
  monkeypatch.setattr(lstm_cpu, 'available', lambda: pytest.fail('built the native loops'))
  monkeypatch.setattr(host, 'accelerator_possible', lambda: True)
  assert devices() == 2
  assert devices(hidden=512) == 1  # One device's matmuls already use both cores.
  assert devices(batch_size=33) == 1  # The batch must split evenly.
  assert devices(hidden=512, cpu_devices=2) == 2 and devices(cpu_devices=1) == 1
  monkeypatch.setattr(os, 'cpu_count', lambda: 1)
  assert devices() == 1
  monkeypatch.setenv('JAX_NUM_CPU_DEVICES', '4')
  assert devices() == 4 and devices(cpu_devices=2) == 2


def test_freed_memory_kept_only_where_jax_runs_on_the_cpu_alone(monkeypatch):
  """One malloc heap speeds CPU steps but slowed an H200's compiles 7x (host.py): skip it there."""
  import ctypes

  from charlm import host
  previous = jax.config.jax_platforms  # Read when JAX starts its backends, done by now.
  try:
    jax.config.update('jax_platforms', 'cpu')
    assert not host.accelerator_possible()
    jax.config.update('jax_platforms', 'cuda,cpu')
    assert host.accelerator_possible()
    jax.config.update('jax_platforms', None)
    monkeypatch.setattr(host, '_installed_plugins', lambda: ['xla_cuda13'])
    assert host.accelerator_possible()
    monkeypatch.setattr(host, '_installed_plugins', lambda: [])
    assert not host.accelerator_possible()
  finally:
    jax.config.update('jax_platforms', previous)

  def no_mallopt(*args):
    raise AssertionError('keep_freed_memory reached mallopt where an accelerator may run')

  monkeypatch.setattr(host, 'accelerator_possible', lambda: True)
  monkeypatch.setattr(ctypes, 'CDLL', no_mallopt)
  assert host.keep_freed_memory() is False


# ---------------------------------------------------------------------------------------------
# Through the command line, in fresh processes.

SMOKE = ['--config', 'configs/default.py:smoke', '--config.train.final_sample_length=0']


def test_cli_smoke_run_leaves_a_readable_workdir(tmp_path):
  text = write_text(tmp_path / 'text.txt')
  workdir = tmp_path / 'run'
  result = run_cli('charlm.train', *SMOKE, f'--config.data.path={text}',
                   f'--config.data.cache_dir={tmp_path}/cache', '--config.train.sample_every=0',
                   '--config.train.final_sample_length=40', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert 'sample at step 20' in result.stdout
  assert 'step 20/20' in result.stdout  # Plain progress lines when not on a terminal.
  if jax.default_backend() == 'cpu' and 'JAX_NUM_CPU_DEVICES' not in os.environ:
    # The native LSTM loops split the batch over the cores on one CPU device.
    assert ("training on 1 CPU device, model.impl='fused' (native CPU loops), dtype float32, "
            'gate inputs float32, saved gates float32\n') in result.stdout  # 'auto' chose.
  config = json.load(open(workdir / 'config.json'))
  assert config['data']['path'] == text and config['model']['hidden'] == 32
  rows = read_metrics(workdir)
  assert {'step', 'train/loss', 'train/bpc', 'lr', 'grad_norm', 'chars_per_sec'} <= set(rows[0])
  assert any('val/bpc' in r for r in rows)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20']

  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(workdir))
  events.Reload()
  tags = events.Tags()['scalars']
  assert {'train/loss', 'val/loss', 'val/bpc', 'lr', 'chars_per_sec'} <= set(tags)
  assert [e.step for e in events.Scalars('val/loss')] == [10, 20]
  assert events.Scalars('train/loss')[-1].value == pytest.approx(rows[-2]['train/loss'])
  # A run that names no train.hparams shows a few notable fields in the HParams dashboard.
  from tensorboard.plugins.hparams import metadata
  start = events.PluginTagToContent('hparams')[metadata.SESSION_START_INFO_TAG]
  hparams = metadata.parse_session_start_info_plugin_data(start).hparams
  assert set(hparams) == set(HPARAMS) and hparams['model.hidden'].number_value == 32
  assert hparams['optim.name'].string_value == 'adam'
  assert config['resolved']['train']['params'] > 0


@pytest.mark.parametrize('args,expect', [
    (['--config.model.hiden=3'], 'unknown config field --config.model.hiden (did you mean'),
    (['--config.train.steps=many'], "--config.train.steps=many: invalid literal"),
    (['--config.data.path=/no/such/file.txt'], 'text file not found: /no/such/file.txt'),
])
def test_cli_errors_are_one_line(tmp_path, args, expect):
  result = run_cli('charlm.train', *SMOKE, *args, f'--workdir={tmp_path}/run')
  assert result.returncode != 0
  assert result.stderr.strip().count('\n') == 0, result.stderr
  assert result.stderr.startswith('error: ') and expect in result.stderr
  assert not (tmp_path / 'run').exists()


SPEED_FIELDS = {'impl': 'fused', 'dtype': 'bfloat16', 'gate_inputs': 'bfloat16',
                'saved_gates': 'float16', 'loop_layout': 'batch_major', 'unroll': 3,
                'unroll_backward': 2, 'unroll_divides': False, 'native_cpu': False}


def test_speed_fields_set_on_the_command_line_run_and_are_recorded(tmp_path):
  """Every speed field of config.model, set on the command line: charlm.train says what runs
  and config.json records it beside the config; a bad value is one line, before any work."""
  text = write_text(tmp_path / 'text.txt')
  data = [f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache']
  fields = [f'--config.model.{k}={v}' for k, v in SPEED_FIELDS.items()]
  workdir = tmp_path / 'run'
  result = run_cli('charlm.train', *SMOKE, *data, *fields, '--config.train.steps=4',
                   f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert ("model.impl='fused' (XLA's loops, batch-major, unroll 3/2 (not rounded to divisors)), "
          'dtype bfloat16, gate inputs bfloat16, saved gates float16\n') in result.stdout
  config = json.load(open(workdir / 'config.json'))
  assert config['resolved']['model'] == SPEED_FIELDS
  assert {k: config['model'][k] for k in SPEED_FIELDS} == SPEED_FIELDS
  bad = run_cli('charlm.train', *SMOKE, *data, '--config.model.saved_gates=float8',
                f'--workdir={tmp_path}/bad')
  assert bad.returncode == 1
  assert bad.stderr.strip() == ("error: unknown model.saved_gates 'float8'; use one of auto, "
                                'float32, float16')
  assert not (tmp_path / 'bad').exists()


def test_one_device_and_four_devices_give_the_same_losses(tmp_path):
  """The batch split over 4 devices trains as on one, dropout and the regularisers' masks
  included."""
  text = write_text(tmp_path / 'text.txt')
  curves = {}
  for n in (1, 4):
    workdir = tmp_path / f'run{n}'
    result = run_cli('charlm.train', *SMOKE, f'--config.data.path={text}',
                     f'--config.data.cache_dir={tmp_path}/cache', '--config.train.log_every=1',
                     '--config.model.dropout=0.1', '--config.model.input_dropout=0.1',
                     '--config.model.embed_dropout=0.1', '--config.model.weight_drop=0.2',
                     f'--workdir={workdir}',
                     env={'JAX_NUM_CPU_DEVICES': str(n), 'JAX_PLATFORMS': 'cpu'})
    assert result.returncode == 0, result.stderr
    curves[n] = [*losses(workdir).values(), *losses(workdir, 'val/loss').values()]
    assert len(curves[n]) == 22
  np.testing.assert_allclose(curves[4], curves[1], rtol=2e-5)


def _lines(path):
  return open(path).readlines() if path.exists() else []


def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path):
  text = write_text(tmp_path / 'text.txt')
  args = [*SMOKE, f'--config.data.path={text}', f'--config.data.cache_dir={tmp_path}/cache',
          '--config.train.log_every=1', '--config.train.steps=400', '--config.train.ckpt_every=0',
          '--config.train.eval_every=0']
  straight = run_cli('charlm.train', *args, f'--workdir={tmp_path}/straight')
  assert straight.returncode == 0, straight.stderr

  workdir = tmp_path / 'run'
  proc = subprocess.Popen([sys.executable, '-m', 'charlm.train', *args, f'--workdir={workdir}'],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and len(_lines(workdir / 'metrics.jsonl')) < 20:
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert 'interrupted at step' in out
  assert os.listdir(workdir / 'checkpoints'), out + err
  stopped = int(os.listdir(workdir / 'checkpoints')[0])
  assert 0 < stopped < 400

  resumed = run_cli('charlm.train', *args, f'--workdir={workdir}')
  assert resumed.returncode == 0, resumed.stderr
  assert f'resuming {workdir} from step {stopped}' in resumed.stdout
  assert losses(workdir) == losses(tmp_path / 'straight')
