"""n-gram baselines: numpy counts against brute-force dictionaries, normalisation, the CLI."""
import collections
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_cli

from charlm import ngram
from charlm.errors import UserError

TRAIN = 'abracadabra cadabra abba dab! arc bad crab, a bar'
VAL = 'cabbara dabra xa'  # 'x' never occurs in training.
VOCAB = sorted(set(TRAIN + VAL))


def ids(text):
  return np.array([VOCAB.index(c) for c in text], np.int64)


# ---------------------------------------------------------------------------------------------
# The reference: the same two smoothings written out with dictionaries of tuples.

def brute_discounts(counts):
  n = [sum(1 for c in counts if c == k) for k in range(1, 5)]
  if min(n) == 0:
    return ngram.DISCOUNT_FALLBACK
  y = n[0] / (n[0] + 2 * n[1])
  d = [k - (k + 1) * y * n[k] / n[k - 1] for k in (1, 2, 3)]
  return tuple(d) if all(0 < d[k - 1] <= k for k in (1, 2, 3)) else ngram.DISCOUNT_FALLBACK


class Brute:
  """Interpolated modified Kneser-Ney and Witten-Bell by counting tuples in dictionaries."""

  def __init__(self, train, vocab_size, order):
    self.v, self.order = vocab_size, order
    t = tuple(train)
    self.raw = {m: collections.Counter(t[i:i + m] for i in range(len(t) - m + 1))
                for m in range(1, order + 1)}
    self.cont = {}
    for m in range(1, order):
      left = collections.defaultdict(set)
      for g in self.raw[m + 1]:
        left[g[1:]].add(g[0])
      self.cont[m] = {g: len(left[g]) + (g == t[:m]) for g in self.raw[m]}

  def p(self, method, context, w, m=None, top=True):
    m = self.order if m is None else m
    if m == 0:
      return 1 / self.v
    lower = self.p(method, context, w, m - 1, top=False)
    h = tuple(context[len(context) - m + 1:]) if m > 1 else ()
    if len(h) < m - 1:  # The context is shorter than this order's: as if unseen.
      return lower
    counts = self.raw[m] if method == 'wb' or top else self.cont[m]
    followers = {g[-1]: c for g, c in counts.items() if g[:-1] == h}
    total = sum(followers.values())
    if total == 0:
      return lower
    if method == 'wb':
      types = len(followers)
      return (followers.get(w, 0) + types * lower) / (total + types)
    d = brute_discounts(list(counts.values()))
    disc = lambda c: 0 if c == 0 else d[min(c, 3) - 1]
    gamma = sum(disc(c) for c in followers.values()) / total
    c = followers.get(w, 0)
    return (c - disc(c)) / total + gamma * lower


@pytest.mark.parametrize('order', [1, 2, 3, 5])
@pytest.mark.parametrize('method', ['kn', 'wb'])
def test_probabilities_match_brute_force_and_sum_to_one(order, method):
  v = len(VOCAB)
  model = ngram.Model(ids(TRAIN), v, order, method)
  brute = Brute(ids(TRAIN), v, order)
  # Every context seen in training or validation, unseen ones, and ones shorter than the order.
  contexts = {tuple(ids(text)[i:i + order - 1]) for text in (TRAIN, VAL)
              for i in range(len(text))}
  contexts |= {(), (0,), tuple(ids('xx')), tuple(ids('!!!!'))}
  for context in sorted(contexts):
    p = model.probs(model.state(context))
    want = [brute.p(method, context, w) for w in range(v)]
    np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-12, err_msg=str(context))
    assert abs(p.sum() - 1) < 1e-12 and p.min() > 0


@pytest.mark.parametrize('order', [1, 2, 4])
def test_evaluate_scores_each_position_as_the_model_does(order):
  v = len(VOCAB)
  train, val = ids(TRAIN), ids(VAL)
  rows = ngram.evaluate(train, {'val': val, 'empty': val[:0]}, v, range(1, order + 1))
  assert [r['order'] for r in rows] == list(range(1, order + 1))
  for method in ngram.METHODS:
    model = ngram.Model(train, v, order, method)
    # Each position's context is what precedes it inside the split.
    nats = [-math.log(model.probs(model.state(val[:i]))[val[i]]) for i in range(len(val))]
    assert rows[-1][f'{method}_val_nats'] == pytest.approx(np.mean(nats), rel=1e-12)
    assert rows[-1][f'{method}_val_bpc'] == pytest.approx(np.mean(nats) / math.log(2))
    assert math.isnan(rows[-1][f'{method}_empty_nats'])


def test_order_one_is_the_unigram_where_every_character_is_common():
  # Every character 3 times or more: each loses D3+ and gets D3+ back from the uniform base.
  rng = np.random.default_rng(0)
  train = np.concatenate([np.repeat(np.arange(6), 3), rng.integers(0, 6, 500)])
  p = ngram.Model(train, 6, 1).probs(np.zeros(0, np.int64))
  np.testing.assert_allclose(p, np.bincount(train) / len(train), rtol=1e-12)
  # A character never seen keeps a share of the discounted mass; the others lose it.
  p = ngram.Model(train, 7, 1).probs(np.zeros(0, np.int64))
  assert 0 < p[6] < 1 / len(train) * 1.5 and abs(p.sum() - 1) < 1e-12
  assert np.all(p[:6] < np.bincount(train) / len(train))


@pytest.mark.parametrize('high', [50, 2 ** 60])  # Packed into one sort; too large, an argsort.
def test_dense_is_np_unique(high):
  keys = np.random.default_rng(0).integers(0, high, 5000)
  got_keys, index, inverse, counts = ngram._dense(keys, np.int32)
  want_keys, want_inverse, want_counts = np.unique(keys, return_inverse=True, return_counts=True)
  np.testing.assert_array_equal(got_keys, want_keys)
  np.testing.assert_array_equal(keys[index], want_keys)
  np.testing.assert_array_equal(inverse, want_inverse)
  np.testing.assert_array_equal(counts, np.append(want_counts, 0))


def test_discounts_fall_back_without_singletons():
  assert ngram.discounts(np.array([5, 7, 9, 12])) == (ngram.DISCOUNT_FALLBACK, True)
  counts = np.array([1] * 40 + [2] * 15 + [3] * 8 + [4] * 5 + [9] * 3)
  d, fallback = ngram.discounts(counts)
  assert not fallback and d == pytest.approx(brute_discounts(counts.tolist()))


def markov_text(length, order=3, symbols=12, seed=0):
  """Token ids from a random sparse Markov chain of `order`: each context allows 3 symbols."""
  rng = np.random.default_rng(seed)
  contexts = symbols ** order
  choices = [rng.choice(symbols, 3, replace=False).tolist() for _ in range(contexts)]
  cumulative = np.cumsum(rng.dirichlet([1.0] * 3, contexts), axis=1).tolist()
  out, ctx = [], 0
  for u in rng.random(length).tolist():
    cum = cumulative[ctx]
    token = choices[ctx][(u > cum[0]) + (u > cum[1])]
    out.append(token)
    ctx = (ctx * symbols + token) % contexts
  return np.array(out, np.int64)


@pytest.fixture(scope='module')
def markov_rows():
  tokens = markov_text(300_000)
  return ngram.evaluate(tokens[:270_000], {'val': tokens[270_000:]}, 12, range(1, 13))


def test_loss_falls_to_the_best_order_then_turns(markov_rows):
  for method in ngram.METHODS:
    bpc = [r[f'{method}_val_bpc'] for r in markov_rows]
    best = int(np.argmin(bpc))
    assert best == 3  # Order 4: the chain's context of 3 and the character it picks.
    assert all(a > b for a, b in itertools.pairwise(bpc[:best + 1])), bpc
    assert bpc[-1] > bpc[best] + 0.01, bpc  # Higher orders only dilute the counts.


def test_levels_rejects_bad_orders():
  with pytest.raises(UserError, match='order is 0'):
    list(ngram.levels(ids(TRAIN), len(VOCAB), 0))
  with pytest.raises(UserError, match='too few'):
    list(ngram.levels(ids('abc'), len(VOCAB), 5))


def test_sample_has_the_length_and_vocabulary_and_follows_the_seed():
  model = ngram.Model(ids(TRAIN * 3), len(VOCAB), 4)
  a = model.sample(200, ids('ab'), temperature=1.0, seed=3)
  assert len(a) == 200 and 0 <= a.min() and a.max() < len(VOCAB)
  assert np.array_equal(a, model.sample(200, ids('ab'), temperature=1.0, seed=3))
  # Argmax of an order-4 model of a repeated text takes only steps the text took.
  greedy = 'abr' + ''.join(VOCAB[i] for i in model.sample(40, ids('abr'), temperature=0))
  assert all(greedy[i:i + 4] in TRAIN * 3 for i in range(len(greedy) - 3)), greedy


# ---------------------------------------------------------------------------------------------
# The command line.

@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('ngram')
  (tmp / 'text.txt').write_text((TRAIN + '\n') * 400)
  common = ['--config', 'configs/default.py', f'--config.data.path={tmp / "text.txt"}',
            f'--config.data.cache_dir={tmp / "cache"}']
  return tmp, common


def test_cli_prints_the_table_and_writes_json(cli_run):
  tmp, common = cli_run
  out = tmp / 'out.json'
  r = run_cli('charlm.ngram', *common, '--order', '2..5', f'--json={out}')
  assert r.returncode == 0, r.stderr
  result = json.loads(out.read_text())
  assert [row['order'] for row in result['rows']] == [2, 3, 4, 5]
  assert result['tokens'] == {'train': 18000, 'val': 1000, 'test': 1000}
  assert result['best']['kn'] in (2, 3, 4, 5) and result['peak_rss_mb'] > 0
  row = result['rows'][-1]
  assert f'{row["kn_val_nats"]:11.4f}' in r.stdout and 'best Kneser-Ney' in r.stdout
  assert row['kn_val_bpc'] == pytest.approx(row['kn_val_nats'] / math.log(2))


def test_cli_samples(cli_run):
  tmp, common = cli_run
  r = run_cli('charlm.ngram', *common, '--sample', '300', '--sample_order', '6', '--seed', '1',
              '--prime', 'abra')
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith('abra') and len(r.stdout) == 4 + 300 + 1
  assert set(r.stdout) <= set(TRAIN + '\n')
  assert not (tmp / 'runs').exists()


@pytest.mark.parametrize('args, message', [
    (['--order', '0'], '--order'), (['--order', '5..2'], '--order'),
    (['--order', 'x'], '--order'), (['--sample', '10', '--prime', 'Z'], "'Z'"),
    (['--sample_order', '0'], '--sample_order')])
def test_cli_bad_input_is_one_line(cli_run, args, message):
  _, common = cli_run
  r = run_cli('charlm.ngram', *common, *args, '--json=')
  assert r.returncode == 1 and r.stderr.count('\n') == 1 and message in r.stderr, r.stderr


def test_bench_ngram_runs_and_writes_json(cli_run):
  tmp, _ = cli_run
  out = tmp / 'bench.json'
  r = subprocess.run([sys.executable, 'experiments/bench_ngram.py', '--text',
                      str(tmp / 'text.txt'), '--sizes', '0.01', '--max_order', '3', '--tmp',
                      str(tmp), '--out', str(out)], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stdout + r.stderr
  (row,) = json.loads(out.read_text())['rows']
  assert row['orders'] == '1..3' and row['peak_rss_mb'] > 0 and row['kn_best_order'] <= 3
  # PPMd codes a val split that repeats the train split in next to nothing.
  assert all(abs(v['val_bpc']) < 0.5 for v in row.get('ppmd', {}).values())
