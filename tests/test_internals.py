"""Looking inside: activations against the training path, streams and chunks, clamps, ablation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli, smoke_config

import charlm
from charlm import clamp as clamp_lib
from charlm import internals, lstm_cpu, sampling, trainer
from charlm.clamp import Clamp
from charlm.data import Vocab
from charlm.errors import UserError
from charlm.lstm_cell import LoopOptions
from charlm.model import STATES, CharRNN

VOCAB = 11
START = 0
sigmoid = jax.nn.sigmoid

# Each LSTM loop the model can run (the native CPU loops where they build), and the other cells.
VARIANTS = {
    'lstm-fused-xla': dict(cell='lstm', impl='fused'),
    'lstm-fused-feature-major': dict(cell='lstm', impl='fused',
                                     loops=LoopOptions(feature_major=True, unroll=2)),
    'lstm-fused-native': dict(cell='lstm', impl='fused', loops=LoopOptions(native=True)),
    'lstm-scan': dict(cell='lstm', impl='scan'),
    'lstm-wavefront': dict(cell='lstm', impl='wavefront'),
    'gru': dict(cell='gru', impl='fused'),
    'rnn': dict(cell='rnn', impl='fused'),
}


def make(variant, layers=2, hidden=8, seed=0, scale=0.7):
  """A tiny model of `variant` with random parameters (numpy: quick, where init compiles)."""
  options = VARIANTS[variant]
  if options.get('loops', LoopOptions()).native and not lstm_cpu.available():
    pytest.skip('no native CPU loops here')
  model = CharRNN(vocab_size=VOCAB, num_layers=layers, hidden=hidden, **options)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                          model.initial_carry(1))['params']
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype),
                        shapes)
  return model, params


def text_ids(n=50, seed=1):
  return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int32)


def read(model, params, ids, **kwargs):
  return internals.activations(model, params, ids, start_token=START, **kwargs)


def apply_logprobs(model, params, ids):
  """log-softmax of model.apply's logits on the start token and the text, in one call."""
  inputs = np.concatenate([[START], ids])[None]
  logits, _ = jax.jit(model.apply)({'params': params}, inputs, model.initial_carry(1))
  return np.asarray(jax.nn.log_softmax(logits[0, 1:]))


def assert_all_close(a, b, atol=1e-6):
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(a[name], b[name], atol=atol, err_msg=name)


def check_layer_equations(cell, p, x, acts, layer, held=()):
  """The states of `layer` at n >= 1 are its step applied to x[n] and the states at n - 1, as
  textbooks write the step; the cells `held` ((kind, index): clamped) are left out of their
  own update's equation."""
  get = lambda kind: acts[f'layer{layer}/{kind}']
  h = get('h')
  gx = x[1:] @ p['input']['kernel'] + p['input']['bias']
  hz = h[:-1] @ p['recurrent']
  free, free_c = (np.setdiff1d(np.arange(h.shape[1]), [i for k, i in held if k == kind])
                  for kind in ('h', 'c'))
  if cell == 'lstm':
    zi, zf, zg, zo = np.split(gx + hz, 4, axis=-1)
    want = {'i': sigmoid(zi), 'f': sigmoid(zf), 'g': np.tanh(zg), 'o': sigmoid(zo)}
    for kind, value in want.items():
      np.testing.assert_allclose(get(kind)[1:], value, atol=2e-5, err_msg=kind)
    want_c = get('f')[1:] * get('c')[:-1] + get('i')[1:] * get('g')[1:]
    np.testing.assert_allclose(get('c')[1:, free_c], want_c[:, free_c], atol=2e-5)
    np.testing.assert_allclose(h[:, free], (get('o') * np.tanh(get('c')))[:, free], atol=2e-5)
  elif cell == 'gru':
    xr, xz, xn = np.split(gx, 3, axis=-1)
    hr, hz_, hn = np.split(hz + p['recurrent_bias'], 3, axis=-1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz_)
    np.testing.assert_allclose(get('r')[1:], r, atol=2e-5)
    np.testing.assert_allclose(get('z')[1:], z, atol=2e-5)
    want_h = (1 - z) * np.tanh(xn + r * hn) + z * h[:-1]
    np.testing.assert_allclose(h[1:, free], want_h[:, free], atol=2e-5)
  else:
    np.testing.assert_allclose(h[1:, free], np.tanh(gx + hz)[:, free], atol=2e-5)


def check_all_layers(model, params, ids, acts, clamps=()):
  x = np.asarray(params['embed']['embedding'])[ids]
  for layer in range(model.num_layers):
    p = jax.tree.map(np.asarray, params[f'layer{layer}'])
    held = [(c.kind, c.index) for c in clamps if c.layer == layer]
    check_layer_equations(model.cell, p, x, acts, layer, held)
    x = acts[f'layer{layer}/h']


@pytest.mark.parametrize('loop', ['layers', 'steps'])
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_activations_are_what_the_training_path_computes(variant, loop):
  model, params = make(variant)
  ids = text_ids()
  acts = read(model, params, ids, chunk=16, loop=loop)
  names = {f'layer{layer}/{kind}' for layer in range(2) for kind in STATES[model.cell]}
  assert set(acts) == names | {'logprobs'}
  assert all(a.dtype == np.float32 and a.shape == (50, 8) for n, a in acts.items()
             if n != 'logprobs')
  np.testing.assert_allclose(acts['logprobs'], apply_logprobs(model, params, ids), atol=1e-5)
  # The last layer's h is what the output layer reads.
  out = jax.tree.map(np.asarray, params['output'])
  np.testing.assert_allclose(
      jax.nn.log_softmax(acts['layer1/h'] @ out['kernel'] + out['bias']), acts['logprobs'],
      atol=1e-5)
  check_all_layers(model, params, ids, acts)


def test_native_loops_write_the_states_xla_loops_compute():
  """The native loops write every step's states into the arrays returned themselves (lstm_cpu.cc's
  forward_into), two chunks per stream; at 24 units they take every width of vector (16 or 8
  floats, then 8, then one) and, over 25 streams, row blocks full and partial."""
  model, params = make('lstm-fused-native', hidden=24)
  xla = CharRNN(vocab_size=VOCAB, num_layers=2, hidden=24, **VARIANTS['lstm-fused-xla'])
  ids = text_ids(400)
  native = read(model, params, ids, streams=25, chunk=8)
  assert_all_close(native, read(xla, params, ids, streams=25, chunk=8), atol=2e-5)
  assert not native['layer0/c'].flags.writeable  # Returned as written: no copy.


@pytest.mark.parametrize('loop', ['layers', 'steps'])
def test_chunks_and_kinds_do_not_change_the_result(loop):
  model, params = make('lstm-fused-xla')
  ids = text_ids(45)
  whole = read(model, params, ids, chunk=64, loop=loop)
  for chunk in (1, 7, 16):
    assert_all_close(read(model, params, ids, chunk=chunk, loop=loop), whole)
  some = read(model, params, ids, chunk=16, kinds=['c', 'h'], loop=loop)
  assert set(some) == {'layer0/h', 'layer0/c', 'layer1/h', 'layer1/c', 'logprobs'}
  assert_all_close(some, {name: whole[name] for name in some})
  empty = read(model, params, ids[:0], loop=loop)
  assert empty['layer0/h'].shape == (0, 8) and empty['logprobs'].shape == (0, VOCAB)


@pytest.mark.parametrize('variant', ['lstm-fused-xla', 'lstm-scan', 'gru'])
def test_streams_read_each_part_from_the_start_token(variant):
  model, params = make(variant)
  ids = text_ids(50)
  assert internals.stream_bounds(50, 4) == [(0, 13), (13, 26), (26, 39), (39, 50)]
  assert internals.stream_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]
  # The parts are read in whole chunks: 13 characters each round up to two chunks of 8.
  assert internals.stream_bounds(50, 4, 8) == [(0, 16), (16, 32), (32, 48), (48, 50)]
  for loop in ('layers', 'steps'):
    together = read(model, params, ids, streams=4, chunk=8, loop=loop)
    parts = [read(model, params, ids[b:e], chunk=8, loop=loop)
             for b, e in internals.stream_bounds(50, 4, 8)]
    assert_all_close(together, {name: np.concatenate([p[name] for p in parts])
                                for name in together})
  with pytest.raises(UserError, match='streams must be'):
    read(model, params, ids, streams=0)


def test_a_clamp_holds_the_cell_and_the_rest_follows():
  model, params = make('lstm-fused-xla')
  ids = text_ids()
  clamps = (Clamp(0, 'c', 2, 0.7), Clamp(1, 'h', 5, -0.3))
  held = read(model, params, ids, chunk=16, clamp=clamps)
  free = read(model, params, ids, chunk=16)
  np.testing.assert_array_equal(held['layer0/c'][:, 2], np.float32(0.7))
  np.testing.assert_array_equal(held['layer1/h'][:, 5], np.float32(-0.3))
  # The held c reaches h in the same step, layer 1 reads layer 0's h, and every step reads the
  # held state: the cell equations hold around the held cells.
  check_all_layers(model, params, ids, held, clamps)
  assert np.abs(held['logprobs'] - free['logprobs']).max() > 1e-2
  np.testing.assert_allclose(held['layer0/h'][:, 2], held['layer0/o'][:, 2] * np.tanh(0.7),
                             atol=1e-6)
  # Strings parse to the same clamps; the layers loop cannot hold cells.
  assert_all_close(read(model, params, ids, chunk=16, clamp=['0:c:2=0.7', '1:h:5=-0.3']), held)
  with pytest.raises(UserError, match="'steps' loop only"):
    read(model, params, ids, clamp=clamps, loop='layers')
  gru, gru_params = make('gru')
  clamps = [Clamp(1, 'h', 0, 0.5)]
  held = read(gru, gru_params, ids, clamp=clamps)
  np.testing.assert_array_equal(held['layer1/h'][:, 0], np.float32(0.5))
  check_all_layers(gru, gru_params, ids, held, clamps)


@pytest.mark.parametrize('variant', ['lstm-fused-xla', 'gru', 'rnn'])
def test_sampling_with_a_clamp_is_what_activations_predict(variant):
  model, params = make(variant, scale=2.1)  # Large weights: greedy text that varies.
  vocab = Vocab('char', list('\nabcdefghij'))
  sampler = sampling.Sampler(model, vocab)
  clamps = (Clamp(0, 'h', 1, 0.9),)
  prime = vocab.encode('abc')
  tokens = np.concatenate(list(sampler.generate(params, prime, 150, temperature=0,
                                                clamp=clamps)), axis=1)[0]
  free = np.concatenate(list(sampler.generate(params, prime, 150, temperature=0)), axis=1)[0]
  assert len(set(tokens.tolist())) > 2 and not np.array_equal(tokens, free)
  acts = read(model, params, np.concatenate([prime, tokens]), clamp=clamps)
  np.testing.assert_array_equal(acts['logprobs'][len(prime) - 1:-1].argmax(-1), tokens)
  text = np.concatenate([prime, tokens])
  logprobs = sampler.logprobs(params, text, clamp=clamps)
  np.testing.assert_allclose(logprobs[1:], acts['logprobs'][np.arange(len(text) - 1), text[1:]],
                             atol=1e-4)  # Large weights: rounding grows along the text.


# A one-layer LSTM wired by hand whose cell 0 knows whether it is inside double quotes: c = -1
# outside, +1 inside. Its output gate is always open (o = 1); on '"' the input gate opens and
# the forget gate shuts (i = 1, f = 0) and g = tanh(-30 h) flips the sign of c; on a newline
# c is set to -1 (quotes close at the end of a line); on any other character i = 0, f = 1 and
# c stays. The output layer reads h = tanh(c): 'b' inside quotes, 'a' outside. Cell 1 runs on
# its own (i, g from the input) and nothing reads it.
QUOTES = Vocab('char', list('\n "ab'))


def quote_counter():
  model = CharRNN(vocab_size=QUOTES.size, num_layers=1, hidden=2, embed=QUOTES.size)
  v, hidden = QUOTES.size, 2
  i, f, g, o = (k * hidden for k in range(4))  # Cell 0's column in each gate.
  kernel, bias, recurrent = (np.zeros((v, 4 * hidden)), np.zeros(4 * hidden),
                             np.zeros((hidden, 4 * hidden)))
  newline, quote, a = (QUOTES.encode(c)[0] for c in '\n"a')
  kernel[:, i], kernel[:, f] = -30, 30
  kernel[[quote, newline], i], kernel[[quote, newline], f] = 30, -30
  kernel[newline, g] = -60
  recurrent[0, g] = -30
  bias[o] = 30
  bias[i + 1], kernel[a, g + 1] = 3, 2  # Cell 1: its own dynamics, read by nothing.
  output = np.zeros((hidden, v))
  output[0, QUOTES.encode('a')[0]], output[0, QUOTES.encode('b')[0]] = -6, 6
  params = {'embed': {'embedding': np.eye(v)},
            'layer0': {'input': {'kernel': kernel, 'bias': bias}, 'recurrent': recurrent},
            'output': {'kernel': output, 'bias': np.array([-3, -1, -2, 0, 0])}}
  return model, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def quoted_text(lines=30, seed=0):
  rng = np.random.default_rng(seed)
  words = lambda: ' '.join('a' * rng.integers(1, 6) for _ in range(rng.integers(2, 6)))
  return ''.join(f'{words()} "{"b" * rng.integers(1, 5)}" {words()}\n' for _ in range(lines))


def test_ablating_the_quote_cell_costs_inside_quotes():
  model, params = quote_counter()
  text = quoted_text()
  ids = QUOTES.encode(text)
  start = QUOTES.encode('\n')[0]
  acts = internals.activations(model, params, ids, start_token=start, streams=4)
  inside = np.cumsum(ids == QUOTES.encode('"')[0]) % 2 == 1
  c = acts['layer0/c'][:, 0]
  assert np.all(c[inside] > 0.99) and np.all(c[~inside] < -0.99)
  quoted = ids == QUOTES.encode('b')[0]
  report = internals.ablate(model, params, ids, ['0:c:0', (0, 'c', 1), (0, 'h', 1)],
                            start_token=start, where=quoted, streams=4)
  counter, *others = report
  assert counter['mean'] == pytest.approx(c.mean(), abs=1e-5)
  assert counter['where_change'] > 3 and counter['where_change'] > 3 * counter['change'] > 0
  assert counter['chars'] == len(ids) and counter['where_chars'] == quoted.sum()
  for r in others:  # Cell 1 reaches nothing: ablating it changes nothing.
    assert abs(r['change']) < 1e-6 and abs(r['where_change']) < 1e-6
  # The unablated loss is the text's loss as scoring reads it, in the same streams.
  logp = np.concatenate([sampling.Sampler(model, QUOTES).logprobs(params, ids[:1]),
                         acts['logprobs'][np.arange(len(ids) - 1), ids[1:]]])
  assert counter['loss'] == pytest.approx(-logp.mean(), abs=1e-5)
  assert counter['where_loss'] == pytest.approx(-logp[quoted].mean(), abs=1e-5)
  plain = internals.ablate(model, params, ids, ['0:c:0'], start_token=start, streams=4)[0]
  assert plain['where_change'] is None and plain['change'] == pytest.approx(counter['change'])
  with pytest.raises(UserError, match='boolean array of one entry per character'):
    internals.ablate(model, params, ids, ['0:c:0'], start_token=start, where=quoted[1:])


def test_clamp_and_cell_errors_are_one_line():
  lstm = CharRNN(vocab_size=VOCAB, num_layers=2, hidden=8)
  gru = CharRNN(vocab_size=VOCAB, cell='gru', num_layers=2, hidden=8)
  assert clamp_lib.parse('1:c:3=0.5', lstm) == Clamp(1, 'c', 3, 0.5)
  assert str(clamp_lib.parse(' 0 : h : 7 = -2 ', lstm)) == '0:h:7=-2'
  bad = [('1:c:3', lstm, 'use LAYER:KIND:INDEX=VALUE'), ('1:c=3', lstm, 'use LAYER:KIND:INDEX'),
         ('2:c:0=1', lstm, 'layer 2 out of range; the model has layers 0..1'),
         ('-1:c:0=1', lstm, 'layer -1 out of range'),
         ('x:c:0=1', lstm, "LAYER 'x' is not a whole number"),
         ('0:z:0=1', lstm, "lstm layers hold h and c, not 'z'"),
         ('0:c:0=1', gru, "gru layers hold h, not 'c'"),
         ('0:h:8=1', lstm, 'index 8 out of range; each layer has 8 cells, 0..7'),
         ('0:h:1.5=1', lstm, "INDEX '1.5' is not a whole number"),
         ('0:h:1=abc', lstm, "VALUE 'abc' is not a finite number"),
         ('0:h:1=nan', lstm, "VALUE 'nan' is not a finite number")]
  for text, model, says in bad:
    with pytest.raises(UserError, match=f'^clamp {text!r}: ') as error:
      clamp_lib.parse(text, model)
    assert says in str(error.value) and '\n' not in str(error.value), (text, error.value)
  with pytest.raises(UserError, match="^clamp 0:h:9=1: index 9 out of range"):
    clamp_lib.check([Clamp(0, 'h', 9, 1.0)], lstm)
  with pytest.raises(UserError, match=r"^cell '0:c:0': gru layers hold h, not 'c'"):
    internals.ablate(gru, None, [1, 2], ['0:c:0'], start_token=START)


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('internals')
  workdir = str(tmp / 'run')
  trainer.train_and_evaluate(smoke_config(tmp), workdir)
  return workdir


def test_api_activations_and_ablate(smoke_run):
  model = charlm.load(smoke_run)
  text = 'the love of night\nROMEO'
  acts = model.activations(text)
  n, hidden = len(text), model.module.hidden
  np.testing.assert_array_equal(acts['ids'], model.vocab.encode(text))
  assert acts['layer1/f'].shape == (n, hidden) and acts['logprobs'].shape == (n, model.vocab.size)
  np.testing.assert_allclose(acts['logprobs'][np.arange(n - 1), acts['ids'][1:]],
                             model.logprobs(text)[1:], atol=1e-5)
  held = model.activations(text, clamp=['1:c:3=2'])
  np.testing.assert_array_equal(held['layer1/c'][:, 3], np.float32(2))
  where = np.array([c == 'o' for c in text])
  report = model.ablate(text, ['1:c:3', (0, 'h', 0)], where=where, streams=2)
  assert [(r['layer'], r['kind'], r['index']) for r in report] == [(1, 'c', 3), (0, 'h', 0)]
  assert report[0]['where_chars'] == where.sum() and report[0]['chars'] == n
  with pytest.raises(UserError, match='outside the model'):
    model.activations('thé')


def test_cli_sample_with_a_clamp(smoke_run):
  model = charlm.load(smoke_run)
  clamps = ['1:h:3=0.9', '0:c:5=-3']
  result = run_cli('charlm.sample', f'--workdir={smoke_run}', '--prime=the', '--length=120',
                   '--seed=4', *[f'--clamp={c}' for c in clamps])
  assert result.returncode == 0, result.stderr
  held = model.sample(prime='the', length=120, temperature=0.8, seed=4, clamp=clamps)
  assert result.stdout == held + '\n'
  assert held != model.sample(prime='the', length=120, temperature=0.8, seed=4)
  bad = run_cli('charlm.sample', f'--workdir={smoke_run}', '--clamp=2:c:0=1')
  assert bad.returncode == 1
  assert bad.stderr.startswith("error: clamp '2:c:0=1': layer 2 out of range")
  assert bad.stderr.count('\n') == 1, bad.stderr
