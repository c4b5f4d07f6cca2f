"""Bad input fails in one line before any work: nothing is written to the workdir or cache."""
import json
import math
import os

import numpy as np
import pytest
from conftest import read_only, run_cli, smoke_config, write_text

from charlm import data as data_lib
from charlm import inference, trainer, validate
from charlm.checkpoint import Checkpoints
from charlm.errors import UserError
from charlm.evaluation import Evaluator
from charlm.metrics import MetricWriter

SMOKE = ['--config', 'configs/default.py:smoke', '--config.train.final_sample_length=0']


def snapshot(*dirs) -> dict:
  """Every file under `dirs` with its size and mtime: what a failed run must leave alone
  (the workdir lock aside)."""
  files = {}
  for d in dirs:
    for root, _, names in os.walk(d):
      for name in names:
        if name == '.lock':  # The workdir lock: it records the last run's PID.
          continue
        st = os.stat(os.path.join(root, name))
        files[os.path.join(root, name)] = (st.st_size, st.st_mtime_ns)
  return files


def fails_in_one_line(tmp_path, config, workdir=None, match=''):
  """train_and_evaluate raises a one-line UserError and creates neither workdir nor cache."""
  workdir = workdir or str(tmp_path / 'run')
  before = snapshot(workdir, config.data.cache_dir)
  with pytest.raises(UserError) as e:
    trainer.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert '\n' not in message and match in message, message
  assert snapshot(workdir, config.data.cache_dir) == before
  return message


NAN, INF = float('nan'), float('inf')
CASES = [  # (overrides, what the message says)
    ({'train__batch_size': 0}, 'train.batch_size is 0; use a whole number >= 1'),
    ({'train__seq_len': 0}, 'train.seq_len is 0'),
    ({'model__num_layers': 0}, 'model.num_layers is 0'),
    ({'model__hidden': 0}, 'model.hidden is 0'),
    ({'model__embed': -1}, 'model.embed is -1'),
    ({'model__dropout': 1.0}, 'model.dropout is 1.0; use a finite number in [0, 1)'),
    ({'model__dropout': -0.1}, 'model.dropout is -0.1'),
    ({'model__input_dropout': 1.0}, 'model.input_dropout is 1.0; use a finite number in [0, 1)'),
    ({'model__input_dropout': -0.1}, 'model.input_dropout is -0.1'),
    ({'model__embed_dropout': 1.0}, 'model.embed_dropout is 1.0; use a finite number in [0, 1)'),
    ({'model__embed_dropout': -0.1}, 'model.embed_dropout is -0.1'),
    ({'model__weight_drop': 1.0}, 'model.weight_drop is 1.0; use a finite number in [0, 1)'),
    ({'model__weight_drop': -0.5}, 'model.weight_drop is -0.5'),
    ({'model__weight_drop': NAN}, 'model.weight_drop is nan'),
    ({'train__steps': -1}, 'train.steps is -1'),
    ({'train__minutes': -1.0}, 'train.minutes is -1.0; use a finite number >= 0'),
    ({'train__minutes': INF}, 'train.minutes is inf'),
    ({'train__log_every': -1}, 'train.log_every is -1'),
    ({'train__eval_every': -5}, 'train.eval_every is -5'),
    ({'train__ckpt_every': -1}, 'train.ckpt_every is -1'),
    ({'train__sample_every': -1}, 'train.sample_every is -1'),
    ({'train__eval_batches': -1}, 'train.eval_batches is -1'),
    ({'train__keep_checkpoints': 0}, 'train.keep_checkpoints is 0'),
    ({'train__patience': -1}, 'train.patience is -1'),
    ({'train__sample_length': -1}, 'train.sample_length is -1'),
    ({'train__final_sample_length': -1}, 'train.final_sample_length is -1'),
    ({'train__cpu_devices': -1}, 'train.cpu_devices is -1'),
    ({'optim__lr': -1e-3}, 'optim.lr is -0.001; use a finite number > 0'),
    ({'optim__lr': 0.0}, 'optim.lr is 0.0'),
    ({'optim__lr': NAN}, 'optim.lr is nan'),
    ({'optim__lr': INF}, 'optim.lr is inf'),
    ({'optim__clip': -1.0}, 'optim.clip is -1.0; use a finite number >= 0'),
    ({'optim__weight_decay': -0.1}, 'optim.weight_decay is -0.1'),
    ({'optim__weight_decay': 0.1}, "optim.weight_decay=0.1 acts with optim.name='adamw' only"),
    ({'optim__momentum': 1.0}, 'optim.momentum is 1.0; use a finite number in [0, 1)'),
    ({'optim__rmsprop_decay': 0.0}, 'optim.rmsprop_decay is 0.0; use a finite number in (0, 1)'),
    ({'optim__rmsprop_decay': 1.0}, 'optim.rmsprop_decay is 1.0'),
    ({'optim__decay_rate': 0.0}, 'optim.decay_rate is 0.0; use a finite number in (0, 1]'),
    ({'optim__decay_rate': 1.5}, 'optim.decay_rate is 1.5'),
    ({'optim__decay_after_epochs': -1}, 'optim.decay_after_epochs is -1'),
    ({'optim__warmup_steps': -1}, 'optim.warmup_steps is -1'),
    ({'optim__min_lr_ratio': 1.5}, 'optim.min_lr_ratio is 1.5; use a finite number in [0, 1]'),
    ({'optim__name': 'adagrad'}, "unknown optim.name 'adagrad'; use one of adam, adamw"),
    ({'optim__schedule': 'linear'}, "unknown optim.schedule 'linear'"),
    ({'data__level': 'word'}, "unknown data.level 'word'; use one of char, byte"),
    ({'model__cell': 'transformer'}, "unknown model.cell 'transformer'"),
    ({'model__impl': 'cudnn'}, "model.impl='cudnn' was removed"),
    ({'data__split': (0.5, 0.5, 0.5)}, 'summing to 1.5; give fractions summing to 1'),
    ({'data__split': (1.2, -0.1, -0.1)}, 'its parts must be >= 0'),
    ({'data__split': (0.9, 0.1)}, 'give three train/val/test fractions'),
    ({'train__sample_every': 5, 'train__sample_temperatures': ()},
     'train.sample_temperatures is (); with train.sample_every > 0 use a non-empty tuple'),
    ({'train__sample_every': 5, 'train__sample_temperatures': (0.5, -1.0)},
     'train.sample_temperatures is (0.5, -1.0)'),
    ({'train__sample_every': 5, 'train__sample_temperatures': (NAN,)},
     'train.sample_temperatures is (nan,)'),    ({'train__hparams': 'model.hidden,model.hiden'},
     "train.hparams names 'model.hiden', which is not a config field"),
]


@pytest.mark.parametrize('overrides,expect', CASES, ids=lambda c: str(c)[:40])
def test_bad_config_values_are_one_line_before_any_work(tmp_path, overrides, expect):
  fails_in_one_line(tmp_path, smoke_config(tmp_path, **overrides), match=expect)


def test_good_values_at_the_edges_pass(tmp_path):
  config = smoke_config(tmp_path, model__dropout=0.0, model__weight_drop=0.0,
                        model__locked_dropout=True, optim__decay_rate=1.0, optim__momentum=0.0,
                        optim__min_lr_ratio=0.0, train__steps=0, train__sample_every=0,
                        train__sample_temperatures=(), data__split=(1000, 10, 0))
  validate.validate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_paths_that_cannot_work_are_one_line(tmp_path):
  config = smoke_config(tmp_path)
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  fails_in_one_line(tmp_path, config, str(blocker), 'the workdir')
  assert blocker.read_text() == 'x'
  fails_in_one_line(tmp_path, config, str(blocker / 'run'), 'is a file, not a directory')
  for cache in (blocker, blocker / 'cache'):
    bad_cache = smoke_config(tmp_path, data__cache_dir=str(cache))
    fails_in_one_line(tmp_path, bad_cache, match='the cache directory')
  directory = tmp_path / 'texts'
  directory.mkdir()
  fails_in_one_line(tmp_path, smoke_config(tmp_path, str(directory)), match='is a directory')


@pytest.mark.parametrize('encoding,name', [('utf-16-le', 'UTF-16LE'), ('utf-16-be', 'UTF-16BE'),
                                           ('utf-32-le', 'UTF-32LE')])
def test_utf16_or_32_without_a_bom_names_the_conversion(tmp_path, encoding, name):
  path = tmp_path / 'wide.txt'
  path.write_bytes(open(write_text(tmp_path / 'text.txt')).read().encode(encoding))
  message = fails_in_one_line(tmp_path, smoke_config(tmp_path, str(path)),
                              match=f'probably {name} text without a byte-order mark')
  assert f'iconv -f {name} -t UTF-8' in message
  # Bytes are bytes: a byte-level model may train on it.
  validate.check_text_file(str(path), 'byte')


def test_only_whitespace_warns(tmp_path, capsys):
  path = tmp_path / 'blank.txt'
  path.write_text('\n' * 500)
  for level in ('char', 'byte'):
    corpus = data_lib.prepare(str(path), level, str(tmp_path / 'cache'))
    validate.warn_if_blank(corpus.vocab, corpus.tokens, str(path))
    err = capsys.readouterr().err
    assert err.startswith('warning: ') and "only whitespace ('\\n')" in err and err.count('\n') == 1
  corpus = data_lib.prepare(write_text(tmp_path / 'text.txt'), 'char', str(tmp_path / 'cache'))
  validate.warn_if_blank(corpus.vocab, corpus.tokens, 'text.txt')
  assert capsys.readouterr().err == ''


@pytest.mark.parametrize('split,which', [((1.0, 0.0, 0.0), 'val'), ((0.001, 0.999, 0.0), 'train')])
def test_a_too_small_split_fails_before_any_step(tmp_path, split, which):
  config = smoke_config(tmp_path, data__split=split)
  data_lib.prepare(config.data.path, 'char', config.data.cache_dir)  # The cache stays as it is.
  fails_in_one_line(tmp_path, config, match=f'gives the {which} split')


def test_a_val_split_is_not_needed_without_steps(tmp_path):
  config = smoke_config(tmp_path, data__split=(1.0, 0.0, 0.0), train__steps=0)
  splits = data_lib.split(np.zeros(1000, np.uint8), config.data.split)
  validate.check_splits(config, splits)


def test_a_checkpoint_of_another_optimizer_or_layout_is_one_line(tmp_path):
  workdir, text = str(tmp_path / 'run'), write_text(tmp_path / 'text.txt')
  trainer.train_and_evaluate(smoke_config(tmp_path, text, train__steps=2), workdir)
  fails_in_one_line(tmp_path, smoke_config(tmp_path, text, train__steps=4, optim__name='sgd'),
                    workdir, "made with optim.name='adam', now 'sgd'")
  old = str(tmp_path / 'old')  # A layout without the config in the metadata.
  ckpts = Checkpoints(os.path.join(old, 'checkpoints'))
  ckpts.save(2, {'x': np.zeros(2, np.float32)}, {'vocab': {'level': 'byte', 'chars': []}})
  ckpts.close()
  fails_in_one_line(tmp_path, smoke_config(tmp_path, text), old, 'older charlm layout (no config')
  with pytest.raises(UserError, match='older charlm layout'):
    inference.load_checkpoint(old)


# ---------------------------------------------------------------------------------------------
# Errors after the first steps lose none of them.

def test_an_evaluation_error_saves_the_steps_first(tmp_path, monkeypatch):
  overrides = dict(train__steps=20, train__log_every=1, train__ckpt_every=0)
  straight = str(tmp_path / 'straight')
  trainer.train_and_evaluate(smoke_config(tmp_path, **overrides), straight)

  def fail(self, *args, **kwargs):
    raise UserError('evaluation failed')
  workdir = str(tmp_path / 'run')
  with monkeypatch.context() as patch:
    patch.setattr(Evaluator, '__call__', fail)
    with pytest.raises(UserError, match='evaluation failed'):
      trainer.train_and_evaluate(smoke_config(tmp_path, **overrides), workdir)
  assert Checkpoints(os.path.join(workdir, 'checkpoints'), read_only=True).all_steps() == [10]
  summary = trainer.train_and_evaluate(smoke_config(tmp_path, **overrides), workdir)
  assert summary['step'] == 20
  rows = lambda w: [json.loads(line) for line in open(os.path.join(w, 'metrics.jsonl'))]
  train_rows = lambda w: {r['step']: r['train/loss'] for r in rows(w) if 'train/loss' in r}
  assert train_rows(workdir) == train_rows(straight)  # The same steps, none lost or repeated.
  assert math.isclose(summary['val_loss'], rows(straight)[-1]['val/loss'])


def test_a_sampling_error_comes_after_the_save(tmp_path, monkeypatch):
  def fail(self, *args, **kwargs):
    raise UserError('sampling failed')
  monkeypatch.setattr(MetricWriter, 'samples', fail)
  workdir = str(tmp_path / 'run')
  with pytest.raises(UserError, match='sampling failed'):
    trainer.train_and_evaluate(smoke_config(tmp_path, train__sample_every=10,
                                            train__sample_length=5), workdir)
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), read_only=True)
  assert ckpts.all_steps() == [10] and ckpts.best_step() == 10  # Saved with its val loss.


# ---------------------------------------------------------------------------------------------
# Through the command lines, where the CLI is the point: checks before JAX starts or devices
# are set up, and one line on stderr.

def _cli_fails_in_one_line(result, expect):
  assert result.returncode != 0
  assert result.stderr.strip().count('\n') == 0 and 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.startswith('error: ') and expect in result.stderr, result.stderr


@pytest.mark.parametrize('args,env,expect', [
    (['--config.train.batch_size=0'], {}, 'train.batch_size is 0'),
    (['--config.optim.lr=-1'], {}, 'optim.lr is -1.0'),
    ([], {'JAX_NUM_CPU_DEVICES': 'two'}, "JAX_NUM_CPU_DEVICES is 'two'"),
    (['--config.data.split=(1.0,0.0,0.0)'], {}, 'gives the val split 0 tokens'),
], ids=['batch_size', 'lr', 'env', 'val_split'])
def test_cli_bad_input_is_one_line(tmp_path, args, env, expect):
  text = write_text(tmp_path / 'text.txt')
  cache = tmp_path / 'cache'
  data_lib.prepare(text, 'char', str(cache))
  before = snapshot(cache)
  result = run_cli('charlm.train', *SMOKE, f'--config.data.path={text}',
                   f'--config.data.cache_dir={cache}', *args, f'--workdir={tmp_path}/run', env=env)
  _cli_fails_in_one_line(result, expect)
  assert not (tmp_path / 'run').exists() and snapshot(cache) == before
  assert 'step' not in result.stdout


# Read-only directories, through the CLI in a process that file permissions bind, root's too
# (see conftest.without_root_power).

def test_cli_unwritable_workdir_is_one_line(tmp_path):
  locked = tmp_path / 'locked'
  locked.mkdir(mode=0o500)
  text = write_text(tmp_path / 'text.txt')
  for workdir in (locked / 'run', locked):
    result = run_cli('charlm.train', *SMOKE, f'--config.data.path={text}',
                     f'--config.data.cache_dir={tmp_path}/cache', f'--workdir={workdir}',
                     without_root=True)
    _cli_fails_in_one_line(result, f'the workdir {locked}')
    assert 'is not writable; give a writable directory with --workdir=DIR' in result.stderr
  assert os.listdir(locked) == [] and not (tmp_path / 'cache').exists()


def test_cli_trains_on_a_read_only_cache_that_holds_the_corpus(tmp_path):
  text = write_text(tmp_path / 'text.txt')
  cache = tmp_path / 'cache'
  data_lib.prepare(text, 'char', str(cache))
  before = snapshot(cache)
  with read_only(cache):
    result = run_cli('charlm.train', *SMOKE, f'--config.data.path={text}',
                     f'--config.data.cache_dir={cache}', '--config.train.steps=2',
                     f'--workdir={tmp_path}/run', without_root=True)
  assert result.returncode == 0, result.stderr
  assert 'step 2: val loss' in result.stdout
  assert Checkpoints(str(tmp_path / 'run' / 'checkpoints'), read_only=True).all_steps() == [2]
  assert snapshot(cache) == before


def test_cli_a_read_only_cache_that_must_encode_is_one_line(tmp_path):
  """A read-only cache passes validation (it may hold the corpus); preparing says in one line
  that it cannot encode the text there, and leaves no workdir behind."""
  text = write_text(tmp_path / 'text.txt')
  cache = tmp_path / 'cache'
  data_lib.prepare(text, 'char', str(cache))
  with open(text, 'a') as f:  # The cache's tokens of it are out of date.
    f.write('and more\n')
  before = snapshot(cache)
  with read_only(cache):
    result = run_cli('charlm.train', *SMOKE, f'--config.data.path={text}',
                     f'--config.data.cache_dir={cache}', f'--workdir={tmp_path}/run',
                     without_root=True)
  _cli_fails_in_one_line(result, f'the cache directory {cache} is not writable, and the cache '
                         f'holds no up-to-date tokens of {text}; give a writable directory with '
                         '--config.data.cache_dir=DIR or $CHARLM_CACHE')
  assert not (tmp_path / 'run').exists() and snapshot(cache) == before


def test_cli_a_read_only_cache_without_the_named_corpus_is_one_line(tmp_path):
  cache = tmp_path / 'cache'
  cache.mkdir()
  with read_only(cache):
    result = run_cli('charlm.train', *SMOKE, '--config.data.path=',
                     '--config.data.name=shakespeare', f'--config.data.cache_dir={cache}',
                     f'--workdir={tmp_path}/run', without_root=True)
  _cli_fails_in_one_line(result, f'the cache directory {cache} is not writable, and corpus '
                         'shakespeare is not fetched into it; give a writable directory with '
                         '--config.data.cache_dir=DIR or $CHARLM_CACHE')
  assert not (tmp_path / 'run').exists() and os.listdir(cache) == []


def test_cli_prime_file_that_is_a_directory_is_one_line(tmp_path):
  result = run_cli('charlm.sample', f'--workdir={tmp_path}/run', f'--prime_file={tmp_path}')
  _cli_fails_in_one_line(result, 'is a directory')
  assert not (tmp_path / 'run').exists()
