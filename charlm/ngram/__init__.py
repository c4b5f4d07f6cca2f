"""Character n-gram models: the baseline to read a recurrent model's loss against.

Two smoothings, both interpolating every order down to a uniform distribution over the
vocabulary, so that no character ever gets probability zero:
  kn  interpolated modified Kneser-Ney (Chen and Goodman 1998): discounts D1, D2, D3+ per order
      from the count-of-counts; raw counts at the highest order, continuation counts N1+(. g)
      below it. Characters often leave an order without singletons, where the estimate is
      undefined: that order takes DISCOUNT_FALLBACK, as KenLM's --discount_fallback does.
  wb  interpolated Witten-Bell, PPM's escape method C used as a blend (no exclusion):
      p(w|h) = (c(hw) + T(h) p(w|h')) / (c(h) + T(h)), T(h) the distinct characters after h.

Counting is numpy, one order at a time: the n-grams of order m are numbered densely by sorting
(id of their first m-1 tokens) * V + (last token) (`_dense`), so ids are exact at any order
(no hashing) and the keys of an order, sorted, look up any context by np.searchsorted. Memory
holds a few arrays of the training text's length, whatever the order. A position's context is
what precedes it within its own split: the first characters of a split use shorter contexts,
as an unseen context does.
"""
import dataclasses
import time
from collections.abc import Iterator

import numpy as np

from charlm.errors import UserError

DISCOUNT_FALLBACK = (0.5, 1.0, 1.5)  # KenLM's defaults for D1, D2, D3+.
METHODS = ('kn', 'wb')


@dataclasses.dataclass
class Blend:
  """One order of an interpolated model: p(w|h) = alpha(hw) + gamma[h] * p_lower(w|h'), where
  alpha(g) = (counts[g] - discount[min(counts[g], 3)]) / scale[h].

  `counts` has one entry per n-gram of the order and a last one, 0, for an n-gram never seen;
  `scale` and `gamma` one per context (the previous order's n-grams) and a last one, 1, for a
  context never seen, which hands its whole mass to the lower order. Index -1 is "unseen".
  """
  counts: np.ndarray
  discount: np.ndarray  # [0, D1, D2, D3+] for Kneser-Ney, zeros for Witten-Bell.
  scale: np.ndarray
  gamma: np.ndarray

  def alpha(self, grams: np.ndarray, contexts) -> np.ndarray:
    c = self.counts[grams]
    return (c - self.discount[np.minimum(c, 3)]) / self.scale[contexts]


@dataclasses.dataclass
class Level:
  """The statistics of the training text's n-grams of one order (n-gram length `order`)."""
  order: int
  keys: np.ndarray  # Sorted int64: context id * vocab size + last token; index = n-gram id.
  kn: Blend  # Kneser-Ney as the highest order (raw counts).
  kn_lower: Blend | None  # As a lower order (continuation counts); None for the last order built.
  wb: Blend
  info: dict  # Distinct n-grams and the discounts used, for the report.


def discounts(counts: np.ndarray) -> tuple[tuple[float, float, float], bool]:
  """Modified Kneser-Ney discounts (D1, D2, D3+) from the count-of-counts n1..n4 of `counts`,
  and whether they fell back to DISCOUNT_FALLBACK (a zero among n1..n4, or an estimate outside
  (0, k] for D_k)."""
  n1, n2, n3, n4 = (int(x) for x in np.bincount(np.minimum(counts, 5), minlength=6)[1:5])
  if min(n1, n2, n3, n4) == 0:
    return DISCOUNT_FALLBACK, True
  y = n1 / (n1 + 2 * n2)
  d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
  if not all(0 < dk <= k for k, dk in enumerate(d, 1)):
    return DISCOUNT_FALLBACK, True
  return d, False


def _blend(ctx: np.ndarray, counts: np.ndarray, num_contexts: int, d=None) -> Blend:
  """Kneser-Ney's absolute discounting of `counts` (of the n-grams whose contexts are `ctx`, and
  a last 0) by d = (D1, D2, D3+), or with d None Witten-Bell's blend, whose context h keeps
  T(h) / (c(h) + T(h)) for the lower order, T(h) the distinct characters seen after it."""
  c = counts[:-1]
  size = num_contexts + 1  # Bincounts end in a 0 for the unseen context.
  if d is None:
    discount = np.zeros(4)
    mass = np.bincount(ctx, minlength=size).astype(np.float64)
    scale = np.bincount(ctx, weights=c, minlength=size) + mass
  else:
    discount = np.array([0.0, *d])
    mass = np.bincount(ctx, weights=discount[np.minimum(c, 3)], minlength=size)
    scale = np.bincount(ctx, weights=c, minlength=size)
  seen = scale > 0
  scale = np.where(seen, scale, 1.0)
  return Blend(counts, discount, scale, np.where(seen, mass / scale, 1.0))


def _dense(keys: np.ndarray, rank_dtype) -> tuple:
  """np.unique(keys, return_index, return_inverse, return_counts), faster: one np.sort of the
  keys with each position packed into their low bits where both fit in 63 bits (numpy sorts
  plain integers with SIMD, many times faster than argsort), else one argsort. The index is of
  some occurrence of each key, not necessarily the first; the inverse is `rank_dtype`; the
  counts end in an extra 0, the count of an n-gram never seen."""
  n = len(keys)
  shift = max(1, int(n - 1).bit_length())
  if int(keys.max(initial=0)) < 1 << (63 - shift):
    packed = np.sort((keys << shift) | np.arange(n, dtype=np.int64))
    perm = packed & ((1 << shift) - 1)
    ordered = packed >> shift
    del packed
  else:
    perm = np.argsort(keys)
    ordered = keys[perm]
  new = np.empty(n, bool)
  new[:1] = True
  np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
  starts = np.flatnonzero(new)
  inverse = np.empty(n, rank_dtype)
  inverse[perm] = np.cumsum(new, dtype=rank_dtype) - 1
  counts = np.zeros(len(starts) + 1, np.int64)  # A last 0: the unseen n-gram's.
  counts[:-1] = np.diff(starts, append=n)
  return ordered[starts], perm[starts], inverse, counts


def levels(train: np.ndarray, vocab_size: int, max_order: int) -> Iterator[Level]:
  """Yields the Level of each order 1..max_order of the token ids `train`, one at a time: a
  caller that drops each before the next holds one order's tables at a time."""
  if max_order < 1:
    raise UserError(f'the n-gram order is {max_order}; use an order >= 1')
  tokens = np.asarray(train)
  n = len(tokens)
  if n < max_order + 1:
    raise UserError(f'the training split has {n:,} tokens, too few for n-grams of order '
                    f'{max_order}; use a lower order or a larger text')
  # ranks[j]: the id of the m-gram ending at token j + m - 1; all contexts of order 1 are id 0.
  rank_dtype = np.int32 if n < 2 ** 31 else np.int64
  keys, _, ranks, counts = _dense(tokens.astype(np.int64), rank_dtype)
  num_contexts = 1
  for m in range(1, max_order + 1):
    info = {'order': m, 'ngrams': len(keys)}
    cont, next_keys = None, None
    if m < max_order:
      # The (m+1)-grams; the suffix of the one ending at token j + m is the m-gram ranks[j + 1].
      next_keys, first, next_ranks, next_counts = _dense(
          ranks[:-1].astype(np.int64) * vocab_size + tokens[m:], rank_dtype)
      # Continuation counts: distinct left extensions, the text's start counting as one.
      cont = np.bincount(ranks[1:][first], minlength=len(keys) + 1)
      cont[ranks[0]] += 1
      ranks = next_ranks
      del first, next_ranks
    ctx = keys // vocab_size
    d, fallback = discounts(counts)
    info['kn_discounts'], info['kn_fallback'] = [float(x) for x in d], fallback
    kn = _blend(ctx, counts, num_contexts, d)
    wb = _blend(ctx, counts, num_contexts)
    kn_lower = None
    if cont is not None:
      d, fallback = discounts(cont)
      info['kn_lower_discounts'], info['kn_lower_fallback'] = [float(x) for x in d], fallback
      kn_lower = _blend(ctx, cont, num_contexts, d)
    del ctx, cont
    level = Level(m, keys, kn, kn_lower, wb, info)
    del kn, kn_lower, wb
    yield level
    del level  # The caller's reference is then the only one.
    if next_keys is not None:
      num_contexts = len(keys)
      keys, counts = next_keys, next_counts
      del next_keys, next_counts


def corpus_splits(config):
  """The corpus of `config` as charlm.train reads it (its data section: text, level, split,
  cache): (vocabulary, {'train', 'val', 'test': token ids}), memory-mapped."""
  from charlm import corpora, validate
  from charlm import data as data_lib
  text = corpora.text_path(config.data)
  validate.check_text_file(text, config.data.level)
  corpus = data_lib.prepare(text, config.data.level, config.data.cache_dir)
  return corpus.vocab, data_lib.split(corpus.tokens, config.data.split)


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
  """The ids of `query` keys in sorted `keys`, -1 where absent (and where the query is < 0)."""
  at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
  return np.where((keys[at] == query) & (query >= 0), at, -1)


def evaluate(train: np.ndarray, splits: dict, vocab_size: int, orders: range,
             progress=None) -> list[dict]:
  """Nats and bits per character of every split of `splits` (name -> token ids) under the
  models of each order in `orders` fit on `train`, both methods; one dict per order.

  Every token of a split is scored, with as much of its context as lies inside the split.
  Memory: one order's tables and a few arrays of the splits' length. `progress(row)` is called
  as each order's row is ready.
  """
  names = list(splits)
  tokens = np.concatenate([np.asarray(splits[k], np.int64) for k in names])
  sizes = [len(splits[k]) for k in names]
  starts = np.cumsum([0] + sizes[:-1])
  at_start = np.zeros(len(tokens), bool)
  at_start[starts[np.array(sizes) > 0]] = True
  uniform = np.full(len(tokens), 1.0 / vocab_size)
  kn_lower, wb = uniform, uniform
  ids = None  # The id of the (m-1)-gram ending at each position, -1 if unseen or cut.
  rows = []
  clock = time.perf_counter()
  for level in levels(train, vocab_size, orders.stop - 1):
    if ids is None:
      ctx = np.zeros(len(tokens), np.int64)
    else:
      ctx = np.concatenate([[-1], ids[:-1]])
      ctx[at_start] = -1
    ids = _lookup(level.keys, np.where(ctx >= 0, ctx * vocab_size + tokens, -1))
    kn = level.kn.alpha(ids, ctx) + level.kn.gamma[ctx] * kn_lower
    wb = level.wb.alpha(ids, ctx) + level.wb.gamma[ctx] * wb
    if level.kn_lower is not None:
      kn_lower = level.kn_lower.alpha(ids, ctx) + level.kn_lower.gamma[ctx] * kn_lower
    if level.order in orders:
      row = dict(level.info)
      for method, p in (('kn', kn), ('wb', wb)):
        nats = -np.log(p)
        for name, start, size in zip(names, starts, sizes, strict=True):
          loss = float(nats[start:start + size].mean()) if size else float('nan')
          row[f'{method}_{name}_nats'] = loss
          row[f'{method}_{name}_bpc'] = loss / np.log(2)
      row['seconds'] = time.perf_counter() - clock
      rows.append(row)
      if progress:
        progress(row)
    del level
  return rows


class Model:
  """An n-gram model of one order with every lower order's tables, for sampling and queries."""

  def __init__(self, train: np.ndarray, vocab_size: int, order: int, method: str = 'kn'):
    if method not in METHODS:
      raise UserError(f'unknown n-gram method {method!r}; use one of {", ".join(METHODS)}')
    self.vocab_size, self.order, self.method = vocab_size, order, method
    self.levels = list(levels(train, vocab_size, order))

  def _blend(self, level: Level) -> Blend:
    if self.method == 'wb':
      return level.wb
    return level.kn if level.order == self.order else level.kn_lower

  def state(self, context) -> np.ndarray:
    """The ids (at orders 1..order-1) of the n-grams ending at the end of `context`, -1 where
    unseen or longer than the context: what `probs` and `advance` take."""
    state = np.full(self.order - 1, -1, np.int64)
    for token in list(context)[-(self.order - 1):] if self.order > 1 else []:
      state = self.advance(state, token)
    return state

  def advance(self, state: np.ndarray, token: int) -> np.ndarray:
    """The state after one more token."""
    new = np.full_like(state, -1)
    for m in range(1, self.order):  # The m-gram ending here extends the (m-1)-gram before.
      ctx = 0 if m == 1 else state[m - 2]
      found = -1 if ctx < 0 else _lookup(self.levels[m - 1].keys,
                                         np.array([ctx * self.vocab_size + token]))[0]
      if found < 0:
        break
      new[m - 1] = found
    return new

  def probs(self, state: np.ndarray) -> np.ndarray:
    """p(. | context) over the vocabulary, the context given by its `state`."""
    v = self.vocab_size
    p = np.full(v, 1.0 / v)
    for level in self.levels:
      ctx = 0 if level.order == 1 else int(state[level.order - 2])
      blend = self._blend(level)
      new = blend.gamma[ctx] * p
      if ctx >= 0:
        lo, hi = np.searchsorted(level.keys, [ctx * v, (ctx + 1) * v])
        new[level.keys[lo:hi] - ctx * v] += blend.alpha(np.arange(lo, hi), ctx)
      p = new
    return p

  def sample(self, length: int, prime=(), temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """`length` token ids continuing `prime`: p^(1/temperature), renormalised; 0 is argmax."""
    rng = np.random.default_rng(seed)
    state = self.state(prime)
    out = np.empty(length, np.int64)
    for i in range(length):
      p = self.probs(state)
      if temperature == 0:
        token = int(np.argmax(p))
      else:
        logits = np.log(p) / temperature
        q = np.exp(logits - logits.max())
        token = int(rng.choice(self.vocab_size, p=q / q.sum()))
      out[i] = token
      state = self.advance(state, token)
    return out
