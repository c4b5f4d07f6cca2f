"""Sampling: the compiled step, determinism, temperature/top-k/top-p, primes, the API and CLI."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli, smoke_config

import charlm
from charlm import sampling, trainer
from charlm.data import Vocab
from charlm.errors import UserError
from charlm.model import CharRNN

VOCAB = Vocab('char', sorted(set('\nabcdefghijklmnopqrstuvwxyz ROMEOJULIET.,:')))


def init(model, seed=0):
  return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32),
                    model.initial_carry(1))['params']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A smoke training run that writes samples every 10 steps: (workdir, summary)."""
  tmp = tmp_path_factory.mktemp('sampling')
  config = smoke_config(tmp, train__sample_every=10, train__sample_length=40)
  workdir = str(tmp / 'run')
  return workdir, trainer.train_and_evaluate(config, workdir)


@pytest.fixture(scope='module')
def model(run):
  return charlm.load(run[0])


@pytest.mark.parametrize('cell,embed,table', [('lstm', 0, True), ('gru', 12, True),
                                              ('rnn', 0, True), ('lstm', 12, False)])
def test_step_matches_model_apply(cell, embed, table):
  model = CharRNN(vocab_size=VOCAB.size, cell=cell, num_layers=2, hidden=16, embed=embed)
  params = init(model)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 0, VOCAB.size)
  want_logits, want_carry = jax.jit(model.apply)({'params': params}, tokens,
                                                 model.initial_carry(3))
  weights = sampling.step_weights(model, params, sampling.TABLE_LIMIT if table else 0)
  assert ('table' in weights['layers'][0]) == table
  one_step = lambda carry, token: sampling.step(model, weights, carry, token)[::-1]
  carry, logits = jax.lax.scan(one_step, model.initial_carry(3), tokens.T)
  np.testing.assert_allclose(jnp.swapaxes(logits, 0, 1), want_logits, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), carry, want_carry)


def test_logprobs_match_model_apply():
  model = CharRNN(vocab_size=VOCAB.size, num_layers=2, hidden=16)
  params = init(model)
  sampler = sampling.Sampler(model, VOCAB)
  ids = VOCAB.encode('romeo and juliet. ' * 10)  # Longer than a chunk.
  got = sampler.logprobs(params, ids)
  inputs = np.concatenate([[sampler.start_token], ids[:-1]])[None]
  logits, _ = model.apply({'params': params}, inputs, model.initial_carry(1))
  want = np.take_along_axis(jax.nn.log_softmax(logits[0]), ids[:, None], axis=1)[:, 0]
  assert got.shape == (len(ids),)
  np.testing.assert_allclose(got, want, atol=1e-5)


def greedy(model, params, vocab, prime, length):
  """Temperature-0 text the slow way: model.apply, one character at a time, after a newline."""
  ids = list(vocab.encode('\n' + prime))
  apply = jax.jit(model.apply)
  _, carry = apply({'params': params}, jnp.asarray([ids[:-1]]), model.initial_carry(1))
  for _ in range(length):
    logits, carry = apply({'params': params}, jnp.asarray([ids[-1:]]), carry)
    ids.append(int(jnp.argmax(logits[0, -1])))
  return vocab.decode(ids[1:])


def test_temperature_zero_is_argmax(model):
  want = greedy(model.module, model.params, model.vocab, 'the ', 100)
  assert model.sample(prime='the ', length=100, temperature=0) == want


def test_top_k_one_is_argmax(model):
  want = model.sample(prime='the ', length=150, temperature=0)
  for seed in range(3):
    assert model.sample(prime='the ', length=150, top_k=1, seed=seed) == want
  assert model.sample(prime='the ', length=150, top_p=1e-6, seed=0) == want


def test_same_seed_same_text(model):
  a = model.sample(prime='ROMEO', length=300, seed=7)
  assert len(a) == len('ROMEO') + 300 and a.startswith('ROMEO')
  assert model.sample(prime='ROMEO', length=300, seed=7) == a
  assert model.sample(prime='ROMEO', length=300, seed=8) != a
  batch = model.samples(4, prime='ROMEO', length=50, seed=7)
  assert len(set(batch)) == 4  # Parallel samples differ from each other.
  assert model.samples(4, prime='ROMEO', length=50, seed=7) == batch


def test_choose_follows_the_distribution():
  probs = np.array([0.5, 0.3, 0.15, 0.05, 0.0], np.float32)
  n = 20000
  logits = jnp.broadcast_to(jnp.log(probs), (n, 5))
  u = 1 - jax.random.uniform(jax.random.PRNGKey(0), (n,))
  ones = jnp.ones(n)
  counts = lambda tokens: np.bincount(np.asarray(tokens), minlength=5) / n
  np.testing.assert_allclose(counts(sampling.choose(u, logits, ones)), probs, atol=0.015)
  # top-p keeps the fewest most likely tokens whose probability reaches p.
  assert set(np.flatnonzero(counts(sampling.choose(u, logits, ones, top_p=0.7)))) == {0, 1}
  assert set(np.flatnonzero(counts(sampling.choose(u, logits, ones, top_p=0.85)))) == {0, 1, 2}
  assert set(np.flatnonzero(counts(sampling.choose(u, logits, ones, top_k=2)))) == {0, 1}
  # Edge uniforms never pick a token of probability zero.
  edge = sampling.choose(jnp.array([1.0, 1e-9]), logits[:2], ones[:2], top_k=3)
  assert edge.tolist() == [2, 0]
  assert sampling.choose(u[:3], logits[:3], jnp.zeros(3)).tolist() == [0, 0, 0]


def test_top_p_limits_the_support_of_samples(model):
  probs = np.exp(model.logprobs('the'))
  assert probs.shape == (3,) and np.all(probs > 0) and np.all(probs <= 1)
  # With top_p tiny only the most likely character remains: the same as temperature 0.
  texts = model.samples(8, prime='the', length=60, top_p=1e-3, temperature=1.5, seed=1)
  assert set(texts) == {model.sample(prime='the', length=60, temperature=0)}


def test_per_sample_temperatures(model):
  sampler = sampling.Sampler(model.module, model.vocab)
  texts = sampler.sample(model.params, 'the', 40, temperature=[0.0, 1.0, 0.0], num_samples=3)
  assert texts[0] == texts[2] == model.sample(prime='the', length=40, temperature=0)


def test_unknown_prime_characters(model):
  with pytest.raises(UserError, match="'é', 'ü'.*unknown='skip'"):
    model.sample(prime='théü', length=10)
  assert model.sample(prime='théü', length=10, seed=0, unknown='skip').startswith('th')
  assert model.sample(prime='théü', length=10, seed=0, unknown='skip') == model.sample(
      prime='th', length=10, seed=0)


def test_byte_level_model_takes_any_text():
  model = CharRNN(vocab_size=256, num_layers=1, hidden=16)
  sampler = sampling.Sampler(model, Vocab('byte'))
  text = sampler.sample(init(model), 'naïve ✓ 日本', 20, seed=0)[0]
  assert text.startswith('naïve ✓ 日本')
  assert len(sampler.logprobs(init(model), Vocab('byte').encode('✓'))) == 3


def test_streams_chunk_by_chunk(model):
  sampler = sampling.Sampler(model.module, model.vocab)
  chunks = sampler.generate(model.params, model.vocab.encode('the'), 300, seed=3)
  first = next(chunks)  # Available before the rest is generated.
  rest = list(chunks)
  assert [c.shape for c in [first] + rest] == [(1, 128), (1, 128), (1, 44)]
  text = model.vocab.decode(np.concatenate([first] + rest, axis=1))
  assert 'the' + text == model.sample(prime='the', length=300, seed=3)


def test_bad_options(model):
  for options in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(length=-1)):
    with pytest.raises(UserError):
      model.sample(**options)


def test_default_step_is_best_and_steps_are_checked(run, model):
  with open(os.path.join(run[0], 'metrics.jsonl')) as f:
    val = {m['step']: m['val/loss'] for m in map(json.loads, f) if 'val/loss' in m}
  assert sorted(val) == [10, 20] and model.step == min(val, key=val.get)
  assert charlm.load(run[0], 10).step == 10
  with pytest.raises(UserError, match='choose latest, best or one of the steps 10, 20'):
    charlm.load(run[0], 7)


def test_samples_md_and_tensorboard_text(run):
  workdir, summary = run
  with open(os.path.join(workdir, 'samples.md')) as f:
    md = f.read()
  assert '## step 10, val loss' in md and f'## step 20, val loss {summary["val_loss"]:.4f}' in md
  assert md.count('temperature 0.5:\n\n    ') == 2 and md.count('temperature 1.0:\n\n    ') == 2
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(workdir, size_guidance={'tensors': 0})
  events.Reload()
  texts = events.Tensors('samples/temperature_0.5/text_summary')
  assert [e.step for e in texts] == [10, 20]
  assert texts[-1].tensor_proto.string_val[0].decode().startswith('    ')


def test_cli_sample_matches_the_api(run, model, tmp_path):
  out = tmp_path / 'out.txt'
  result = run_cli('charlm.sample', f'--workdir={run[0]}', '--prime=ROMEO', '--length=200',
                   '--seed=5', f'--output={out}')
  assert result.returncode == 0, result.stderr
  assert out.read_text() == model.sample(prime='ROMEO', length=200, temperature=0.8,
                                         seed=5) + '\n'


@pytest.mark.parametrize('module', ['charlm.sample', 'charlm.evaluate'])
def test_cli_errors_for_missing_or_empty_workdir_are_one_line(module, tmp_path):
  for workdir, says in ((tmp_path / 'missing', 'does not exist'),
                        (tmp_path, 'no checkpoints in')):
    result = run_cli(module, f'--workdir={workdir}')
    assert result.returncode == 1
    assert result.stderr.startswith('error: ') and says in result.stderr
    assert result.stderr.count('\n') == 1, result.stderr
