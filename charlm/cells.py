"""Interpretable cells: which units of a trained network track a property of the text.

The cell hunt of Karpathy's "The Unreasonable Effectiveness of Recurrent Neural Networks" and
of Karpathy, Johnson and Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks",
made quantitative: labels computed from the text (inside quotes, nesting depth, the column,
...), every cell scored out of sample against every label, two controls that say what chance
looks like, a sparse probe that says how few cells carry a label, and the max-activating
contexts, histograms and gate saturation of what it reports.

Activations are {'layer{L}/{kind}': float32 [N, hidden]} over a text of N characters, row n the
state after reading character n (kinds h, c, i, f, g, o for an LSTM; h, z, r for a GRU; h for
an RNN). A cell is one (layer, kind, index): every kind counts, gates included, so a 2x256 LSTM
has 3,072 cells; the headline is also given per kind. Values must be finite.

Out of sample means: the first half of the text (characters [0, N // 2)) fits, the second
scores. A binary label scores by AUROC, with the direction (does the cell rise or fall with
the label?) chosen on the first half: max(auc, 1 - auc) as the first half decides, scored on
the second, so it can fall below 0.5. A scalar label scores by Pearson's r with the sign
fitted on the first half, times the second half's r: |r| when the sign holds, negative when
it flips. A label constant on either half is skipped, and listed as such.

Chance is measured twice: the best score any cell of a randomly initialised model of the same
shape reaches, and the best score any cell of this one reaches against the labels shuffled in
blocks (which keeps their runs). A cell is interpretable when its score on some label beats
the higher of the two by a margin (0.05 unless told, for AUROC and r alike); the headline is
the share of cells that are, over all cells and per kind.

find_cells bundles it all into plain dicts, lists and numbers, ready for json.dump.
"""
import concurrent.futures
import dataclasses
import functools
import re
import types
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

BINARY, SCALAR = 'binary', 'scalar'
GATE_KINDS = ('i', 'f', 'o', 'z', 'r')  # Sigmoid outputs, in [0, 1].
TANH_KINDS = ('h', 'g')  # tanh outputs (h of an LSTM is o * tanh(c)), in [-1, 1].
PROBE_CELLS_LISTED = 64  # find_cells names at most this many of the cells a probe needs.
_KEY = re.compile(r'layer(\d+)/(\w+)')


# Labels: one value per character, the state after reading it.

@dataclasses.dataclass(frozen=True, eq=False)
class Label:
  """A property of every character of a text: bool values (binary) or numbers (scalar)."""
  name: str
  kind: str
  values: np.ndarray


def _codes(text: str) -> np.ndarray:
  """The text's code points, one per character."""
  return np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), dtype='<u4')


def _span_mask(length: int, starts, stops) -> np.ndarray:
  """True inside the half-open spans [start, stop), which may touch but not overlap."""
  starts, stops = np.asarray(starts, np.int64), np.asarray(stops, np.int64)
  keep = stops > starts
  edges = (np.bincount(starts[keep], minlength=length + 1)
           - np.bincount(stops[keep], minlength=length + 1))
  return np.cumsum(edges[:length]) > 0


def in_quotes(text: str) -> np.ndarray:
  """Inside double quotes: the opening quote is in, the closing one out.

  A quote after an odd number of backslashes (\\") is escaped and toggles nothing.
  """
  codes = _codes(text)
  position = np.arange(len(codes))
  backslash = codes == ord('\\')
  last_other = np.maximum.accumulate(np.where(backslash, -1, position))
  backslash_run = position - last_other  # Backslashes ending at each position.
  escaped = np.zeros(len(codes), bool)
  escaped[1:] = backslash_run[:-1] % 2 == 1
  toggles = (codes == ord('"')) & ~escaped
  return np.cumsum(toggles) % 2 == 1


def nesting_depth(text: str, opener: str, closer: str) -> np.ndarray:
  """How many `opener`s are open; a `closer` with none open is ignored, so never negative.
  Brackets count wherever they are, in strings and comments too."""
  codes = _codes(text)
  steps = (codes == ord(opener)).astype(np.int64) - (codes == ord(closer))
  total = np.cumsum(steps)
  # The walk clamped at zero is the free walk minus its running minimum (when negative).
  return total - np.minimum(np.minimum.accumulate(total), 0)


def paren_depth(text: str) -> np.ndarray:
  return nesting_depth(text, '(', ')')


def bracket_depth(text: str) -> np.ndarray:
  return nesting_depth(text, '[', ']')


def brace_depth(text: str) -> np.ndarray:
  return nesting_depth(text, '{', '}')


def in_parens(text: str) -> np.ndarray:
  return paren_depth(text) > 0


def in_brackets(text: str) -> np.ndarray:
  return bracket_depth(text) > 0


def in_braces(text: str) -> np.ndarray:
  return brace_depth(text) > 0


def column(text: str) -> np.ndarray:
  """Characters of the current line read so far: 0 after a newline, 1 after a line's first."""
  position = np.arange(len(text))
  newline = _codes(text) == ord('\n')
  return position - np.maximum.accumulate(np.where(newline, position, -1))


# String and character literals come first where they start first, so a "/*" inside a string
# opens no comment and a quote inside a comment opens no string. A literal that is not closed
# ends at the end of its line, as C allows no newline inside one.
_C_TOKENS = re.compile(r'"(?:\\[\s\S]|[^"\\\n])*"?'
                       r"|'(?:\\[\s\S]|[^'\\\n])*'?"
                       r'|/\*[\s\S]*?(?:\*/|\Z)'
                       r'|//[^\n]*')


def in_comment(text: str) -> np.ndarray:
  """Inside a C comment, /* ... */ or // to the end of the line, outside string literals.

  On from the second character of the opener; the last character of */ and the newline that
  ends a // comment are out (the state after reading them).
  """
  starts, stops = [], []
  for match in _C_TOKENS.finditer(text):
    token, (start, stop) = match.group(), match.span()
    if token.startswith('/*'):
      closed = len(token) >= 4 and token.endswith('*/')
      starts.append(start + 1)
      stops.append(stop - 1 if closed else stop)
    elif token.startswith('//'):
      starts.append(start + 1)
      stops.append(stop)
  return _span_mask(len(text), starts, stops)


# A wiki link runs from [[ to the next ]]; one not closed on its line ends with the line.
_WIKI_LINK = re.compile(r'\[\[[^\n]*?(?:\]\]|(?=\n)|\Z)')


def in_link(text: str) -> np.ndarray:
  """Inside a [[wiki link]]: on from the second [ to the first ] of the closing ]].

  A single [x] is no link.
  """
  starts, stops = [], []
  for match in _WIKI_LINK.finditer(text):
    start, stop = match.span()
    closed = stop - start >= 4 and match.group().endswith(']]')
    starts.append(start + 1)
    stops.append(stop - 1 if closed else stop)
  return _span_mask(len(text), starts, stops)


@functools.lru_cache(maxsize=4096)
def _indent_widths(run: str, tab_width: int) -> tuple[int, ...]:
  """The width after each character of a run of leading spaces and tabs."""
  widths, width = [], 0
  for char in run:
    width = width + 1 if char == ' ' else (width // tab_width + 1) * tab_width
    widths.append(width)
  return tuple(widths)


def indent(text: str, tab_width: int = 4) -> np.ndarray:
  """The indentation of the current line in columns: its leading spaces count one, a tab
  moves to the next multiple of `tab_width`. It grows while the leading run is read, holds for
  the rest of the line and is 0 after a newline."""
  known = np.zeros(len(text), bool)
  widths = np.zeros(len(text), np.int64)
  newline = _codes(text) == ord('\n')
  known[newline] = True
  for match in re.finditer(r'^[ \t]+', text, re.MULTILINE):
    start, stop = match.span()
    known[start:stop] = True
    widths[start:stop] = _indent_widths(match.group(), tab_width)
  last_known = np.maximum.accumulate(np.where(known, np.arange(len(text)), -1))
  return np.where(last_known >= 0, widths[np.maximum(last_known, 0)], 0)


def word_end(text: str) -> np.ndarray:
  """The last letter of a word, a word being a run of letters (digits and _ are not), so
  "don't" has two words and "x2" one."""
  ends = np.fromiter((match.end() - 1 for match in re.finditer(r'[^\W\d_]+', text)), np.int64)
  mask = np.zeros(len(text), bool)
  mask[ends] = True
  return mask


def probe(text: str, regex: str | re.Pattern) -> np.ndarray:
  """The characters inside a match of `regex` (non-overlapping matches, as re.finditer)."""
  spans = [match.span() for match in re.finditer(regex, text)]
  return _span_mask(len(text), [s for s, _ in spans], [e for _, e in spans])


LABELS = types.MappingProxyType({
    'in_quotes': (BINARY, in_quotes),
    'in_parens': (BINARY, in_parens),
    'in_brackets': (BINARY, in_brackets),
    'in_braces': (BINARY, in_braces),
    'in_comment': (BINARY, in_comment),
    'in_link': (BINARY, in_link),
    'word_end': (BINARY, word_end),
    'paren_depth': (SCALAR, paren_depth),
    'bracket_depth': (SCALAR, bracket_depth),
    'brace_depth': (SCALAR, brace_depth),
    'column': (SCALAR, column),
    'indent': (SCALAR, indent),
})


def text_labels(text: str, probes: Mapping[str, str] | Sequence[str] = ()) -> dict[str, Label]:
  """The built-in LABELS of `text` and the binary user probes: {name: regex} or regexes, each
  then named by itself."""
  labels = {name: Label(name, kind, function(text)) for name, (kind, function) in LABELS.items()}
  if isinstance(probes, str):
    probes = (probes,)
  named = probes.items() if isinstance(probes, Mapping) else ((p, p) for p in probes)
  for name, regex in named:
    if name in labels:
      raise ValueError(f'probe {name!r}: a label of that name exists')
    labels[name] = Label(name, BINARY, probe(text, regex))
  return labels


def block_shuffle(values: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
  """`values` with its contiguous blocks of `block` in random order: what is true of a label
  locally (its runs, its autocorrelation) stays, its alignment with the text goes."""
  starts = np.arange(0, len(values), block)
  order = np.concatenate([np.arange(s, min(s + block, len(values))) for s in rng.permutation(
      starts)]) if len(values) else np.arange(0)
  return values[order]


def constant_half(label: Label, split: int) -> str | None:
  """Why `label` cannot be scored (it is constant on a half), or None."""
  for half, values in (('first', label.values[:split]), ('second', label.values[split:])):
    if len(values) == 0 or values.min() == values.max():
      return f'constant on the {half} half'
  return None


# Scores: every cell against every label, fitted on the first half, scored on the second.

def cell_table(activations: Mapping[str, np.ndarray]) -> list[tuple[int, str, int]]:
  """(layer, kind, index) of every cell, in the order of the rows of Scores."""
  cells = []
  for key, values in activations.items():
    layer, kind = _parse_key(key)
    cells.extend((layer, kind, index) for index in range(np.shape(values)[1]))
  return cells


def _parse_key(key: str) -> tuple[int, str]:
  match = _KEY.fullmatch(key)
  if not match:
    raise ValueError(f'activation {key!r}: expected layer{{L}}/{{kind}}')
  return int(match.group(1)), match.group(2)


def _transposed(values: np.ndarray, start: int, stop: int, rows: int = 1024) -> np.ndarray:
  """values[:, start:stop].T as a C-contiguous float32 array, copied in blocks of rows small
  enough to stay in cache (a plain strided copy is several times slower)."""
  out = np.empty((stop - start, len(values)), np.float32)
  for lo in range(0, len(values), rows):
    out[:, lo:lo + rows] = values[lo:lo + rows, start:stop].T
  return out


def _sorted_keys(values: np.ndarray) -> np.ndarray:
  """Each row of float32 `values` [m, n] sorted, as uint64 keys: an order-preserving image of
  the value in the high 32 bits, its column in the low 32 (sorting integers once is cheaper
  than an argsort and a gather)."""
  # Adding 0 turns -0.0 into +0.0; the result is C-ordered whatever the layout of values.
  bits = np.add(values, np.float32(0), dtype=np.float32, order='C').view(np.uint32)
  flip = (bits.view(np.int32) >> 31).view(np.uint32) | np.uint32(1 << 31)
  keys = (bits ^ flip).astype(np.uint64)
  keys <<= np.uint64(32)
  keys |= np.arange(values.shape[1], dtype=np.uint64)
  keys.sort(axis=1)
  return keys


def _tied_ranks(tied: np.ndarray) -> np.ndarray:
  """Ranks 1..n in sorted order [m, n] where tied [m, n - 1] says which neighbours are equal:
  each run of equal values gets the mean of its first and last rank. Dense: for many ties."""
  rows, n = tied.shape[0], tied.shape[1] + 1
  position = np.arange(n, dtype=np.int32)
  first = np.ones((rows, n), bool)
  first[:, 1:] = ~tied
  last = np.ones((rows, n), bool)
  last[:, :-1] = ~tied
  run_start = np.maximum.accumulate(np.where(first, position, 0), axis=1)
  run_end = np.minimum.accumulate(np.where(last, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
  return (run_start + run_end + 2) * np.float32(0.5)


def _few_tied_ranks(tied: np.ndarray) -> np.ndarray:
  """_tied_ranks in time proportional to the tied pairs: for few ties."""
  m, n = tied.shape[0], tied.shape[1] + 1
  ranks = np.tile(np.arange(1, n + 1, dtype=np.float32), (m, 1))
  row, left = np.nonzero(tied)
  if len(row):
    pair = row * n + left  # The flat index of each tied pair's left element.
    starts = np.flatnonzero(np.diff(pair, prepend=-2) != 1)  # Runs of consecutive pairs.
    first = pair[starts]
    last = np.append(pair[starts[1:] - 1], pair[-1]) + 1
    mean = (first % n + last % n + 2) * np.float32(0.5)
    flat = ranks.reshape(-1)
    flat[pair] = np.repeat(mean, np.diff(np.append(starts, len(pair))))
    flat[last] = mean
  return ranks


def _centered_ranks(values: np.ndarray) -> np.ndarray:
  """average_ranks minus their mean (n + 1) / 2: float32 half-integers, exact, and small, so
  that sums of them lose little in float32 matmuls."""
  values = np.asarray(values, np.float32)
  m, n = values.shape
  halves = _sorted_keys(values).view(np.uint32).reshape(m, n, 2)
  low = 0 if np.little_endian else 1
  order, ordered = halves[..., low].astype(np.intp), halves[..., 1 - low]
  tied = ordered[:, 1:] == ordered[:, :-1]
  sorted_ranks = _tied_ranks(tied) if 8 * np.count_nonzero(tied) > tied.size else \
      _few_tied_ranks(tied)
  sorted_ranks -= np.float32((n + 1) / 2)
  ranks = np.empty((m, n), np.float32)
  for i in range(m):
    ranks[i, order[i]] = sorted_ranks[i]
  return ranks


def average_ranks(values: np.ndarray) -> np.ndarray:
  """Ranks 1..n of each row of `values` [m, n] compared as float32, ties given the mean of
  their ranks."""
  values = np.asarray(values, np.float32)
  return _centered_ranks(values) + np.float32((values.shape[1] + 1) / 2)


def _auroc_from_ranks(centered_ranks: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """AUROC - 0.5 [m, labels] of rows of centered ranks [m, n] against 0/1 labels [n, labels]:
  Mann-Whitney, the chance a positive outranks a negative with ties counting a half, which is
  0.5 plus the positives' centered rank sum over (positives x negatives)."""
  positive = np.asarray(positive, np.float32)
  count = positive.sum(axis=0, dtype=np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return (centered_ranks @ positive) / (count * (len(positive) - count))


def auroc(values: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """AUROC of each column of `values` [n] or [n, cells] (compared as float32) against the bool
  `positive` [n]: the chance that a positive has the higher value, ties counting a half."""
  values = np.asarray(values, np.float32)
  columns = values.reshape(len(values), -1).T
  centered = _auroc_from_ranks(_centered_ranks(columns), np.asarray(positive, bool)[:, None])
  result = centered[:, 0] + 0.5
  return result if values.ndim > 1 else result[0]


def _correlations(values: np.ndarray, standardized: np.ndarray) -> np.ndarray:
  """Pearson's r [m, labels] of rows of float32 `values` [m, n] with z-scored float32 labels
  [n, labels]; 0 for a constant row."""
  x = values - values.mean(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)
  spread = np.sqrt(np.einsum('ij,ij->i', x, x) / values.shape[1])
  constant = spread == 0  # The mean of equal float32 values is exact, so x is 0 there.
  spread[constant] = 1
  r = (x @ standardized) / (values.shape[1] * spread[:, None])
  r[constant] = 0
  return r


class Scores(NamedTuple):
  """Per cell (rows, in cell_table's order) and label (columns, in the order given)."""
  held_out: np.ndarray  # The second half's score, in the direction fitted on the first.
  fitted: np.ndarray  # The first half's score in its own direction: max(auc, 1 - auc) or |r|.
  sign: np.ndarray  # +1 where the cell rises with the label (on the first half), else -1.


def score_cells(activations: Mapping[str, np.ndarray], labels: Sequence[Label], split: int,
                chunk: int = 128, threads: int = 2) -> Scores:
  """Every cell against every label: binary labels by AUROC, scalar ones by Pearson's r,
  rows [0, split) fitting the direction and rows [split, N) scoring. The labels must not be
  constant on either half. Ranks are computed once per cell and half, for all labels; chunks
  of `chunk` cells go to `threads` threads (numpy's sorts and loops run outside the GIL)."""
  binary = [j for j, label in enumerate(labels) if label.kind == BINARY]
  scalar = [j for j, label in enumerate(labels) if label.kind == SCALAR]
  halves = []
  for lo, hi in ((0, split), (split, None)):
    positive = None
    if binary:
      positive = np.stack([labels[j].values[lo:hi] for j in binary], axis=1).astype(np.float32)
    standardized = None
    if scalar:
      raw = np.stack([labels[j].values[lo:hi] for j in scalar], axis=1).astype(np.float64)
      standardized = ((raw - raw.mean(axis=0)) / raw.std(axis=0)).astype(np.float32)
    halves.append((slice(lo, hi), positive, standardized))
  cells = len(cell_table(activations))
  centered = np.zeros((2, cells, len(labels)))  # AUROC - 0.5 or r, per half.
  if not labels:
    return Scores(centered[1], centered[0], np.ones((cells, 0), np.int8))

  tasks, row = [], 0
  for values in activations.values():
    values = np.asarray(values)
    for start in range(0, values.shape[1], chunk):
      stop = min(start + chunk, values.shape[1])
      tasks.append((values, start, stop, row))
      row += stop - start

  def score_chunk(task):
    values, start, stop, row = task
    block = _transposed(values, start, stop)  # [cells, N]
    for h, (rows_of_half, positive, standardized) in enumerate(halves):
      part, into = block[:, rows_of_half], centered[h, row:row + stop - start]
      if binary:
        into[:, binary] = _auroc_from_ranks(_centered_ranks(part), positive)
      if scalar:
        into[:, scalar] = _correlations(part, standardized)

  if threads > 1:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(score_chunk, tasks))
  else:
    for task in tasks:
      score_chunk(task)
  sign = np.where(centered[0] >= 0, 1, -1).astype(np.int8)
  held_out, fitted = sign * centered[1], np.abs(centered[0])
  held_out[:, binary] += 0.5
  fitted[:, binary] += 0.5
  return Scores(held_out, fitted, sign)


# The sparse probe: how few cells carry a binary label.

def _sigmoid(z):
  return 0.5 * (1 + np.tanh(0.5 * z))


def _logistic_loss(z, y):
  return np.mean(np.logaddexp(0, z) - y * z)


def _newton_logistic(x, y, w, b, l2, steps=30):
  """L2-regularised logistic regression (the intercept unpenalised) by damped Newton steps,
  from (w, b); for few features."""
  features = np.hstack([x, np.ones((len(x), 1))])
  theta = np.append(w, b).astype(np.float64)
  penalty = np.append(np.full(len(w), l2), 0.0)
  objective = lambda t: _logistic_loss(features @ t, y) + 0.5 * np.sum(penalty * t * t)
  current = objective(theta)
  for _ in range(steps):
    p = _sigmoid(features @ theta)
    gradient = features.T @ (p - y) / len(y) + penalty * theta
    if np.max(np.abs(gradient)) < 1e-7:
      break
    hessian = (features.T * (p * (1 - p))) @ features / len(y) + np.diag(penalty + 1e-9)
    step = np.linalg.solve(hessian, gradient)
    size = 1.0
    while True:  # Backtracking: Newton's full step can overshoot far from the optimum.
      trial = objective(theta - size * step)
      if trial <= current - 1e-4 * size * gradient @ step or size < 1e-6:
        break
      size /= 2
    if trial > current:
      break
    theta, current = theta - size * step, trial
  return theta[:-1], theta[-1]


def _fista_logistic(x, y, mask, w, b, l2, iterations, lipschitz):
  """L2-regularised logistic regressions, one per column of y [n, labels], each on the
  features its column of `mask` [features, labels] allows: accelerated gradient descent with
  adaptive restarts, from (w, b); all labels share each matmul."""
  n, step = len(x), 1 / lipschitz
  w_last, b_last, w_ahead, b_ahead = w, b, w, b
  t = np.ones(y.shape[1])
  for _ in range(iterations):
    residual = (_sigmoid(x @ w_ahead + b_ahead) - y) / n
    w_next = np.where(mask, w_ahead - step * (x.T @ residual + l2 * w_ahead), 0)
    b_next = b_ahead - step * residual.sum(axis=0)
    uphill = (np.sum((w_ahead - w_next) * (w_next - w_last), axis=0)
              + (b_ahead - b_next) * (b_next - b_last)) > 0
    t = np.where(uphill, 1, t)
    t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
    momentum = ((t - 1) / t_next).astype(x.dtype)
    w_ahead = w_next + momentum * (w_next - w_last)
    b_ahead = b_next + momentum * (b_next - b_last)
    w_last, b_last, t = w_next, b_next, t_next
  return w_last, b_last


def _logistic_lipschitz(x, l2, iterations=30):
  """An upper bound on the curvature of the mean logistic loss on standardized x (with an
  intercept): a quarter of the largest eigenvalue of x'x/n (by power iteration, with a margin
  for its underestimate) plus l2."""
  v = np.random.default_rng(0).standard_normal(x.shape[1]).astype(x.dtype)
  eigenvalue = 1.0
  for _ in range(iterations):
    u = x.T @ (x @ v) / len(x)
    eigenvalue = float(np.linalg.norm(u) / np.linalg.norm(v))
    v = u / np.linalg.norm(u)
  return 1.1 * max(eigenvalue, 1.0) / 4 + l2


def probe_sizes(cells: int) -> list[int]:
  """1, 2, 4, ... below `cells`, then `cells`."""
  return [2**k for k in range(max(cells - 1, 0).bit_length()) if 2**k < cells] + [cells]


def sparse_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, l2: float = 1e-3, iterations: int = 60,
                 newton_max: int = 256) -> list[dict | None]:
  """Held-out accuracy of logistic probes on 1, 2, 4, ... all cells, per binary label.

  train_x [n, cells] and test_x [m, cells] are activations (standardized here with the
  training rows' statistics), train_y [n, labels] and test_y [m, labels] bool. The cells enter
  in the order an L1 path would admit them (grafting, Perkins et al. 2003): to grow the set
  to k, the cells with the largest gradient of the training log-loss at the current fit join
  (that gradient reaching the penalty is what lets a cell in on an L1 path); then the probe on
  the set is refitted with an L2 penalty, so its weights are not shrunk as the L1 path's are.
  Small sets are fitted by Newton's method, large ones by accelerated gradient descent warm
  started from the smaller fit. Returns per label (None where it is constant on the training
  rows) {'sizes', 'accuracy', 'majority' (the accuracy of always guessing the training rows'
  majority class), 'best', 'cells_needed' (the smallest size within 0.01 of the best), 'order'
  (cell indices in the order they entered)}.
  """
  train_y, test_y = np.asarray(train_y, bool), np.asarray(test_y, bool)
  mean, spread = train_x.mean(axis=0), train_x.std(axis=0)
  spread[spread == 0] = 1
  x = ((train_x - mean) / spread).astype(np.float32)
  x_test = ((test_x - mean) / spread).astype(np.float32)
  y = train_y.astype(np.float32)
  cells, labels = x.shape[1], y.shape[1]
  live = [j for j in range(labels) if 0 < y[:, j].sum() < len(y)]
  rate = np.clip(y.mean(axis=0), 1e-6, 1 - 1e-6)
  w = np.zeros((cells, labels), np.float32)
  b = np.log(rate / (1 - rate)).astype(np.float32)
  chosen = np.zeros((cells, labels), bool)
  order = [[] for _ in range(labels)]
  sizes, accuracy, lipschitz = probe_sizes(cells), [], None
  for size in sizes:
    gradient = np.abs(x.T @ (_sigmoid(x @ w + b) - y))
    for j in live:
      candidates = np.where(chosen[:, j], -1, gradient[:, j])
      joining = np.argsort(-candidates, kind='stable')[:size - len(order[j])]
      order[j].extend(int(c) for c in joining)
      chosen[joining, j] = True
    if size <= newton_max:
      for j in live:
        cols = np.array(order[j])
        fit_w, fit_b = _newton_logistic(x[:, cols].astype(np.float64), y[:, j], w[cols, j],
                                        b[j], l2)
        w[cols, j], b[j] = fit_w, fit_b
    else:
      lipschitz = lipschitz or _logistic_lipschitz(x, l2)
      w[:, live], b[live] = _fista_logistic(x, y[:, live], chosen[:, live], w[:, live],
                                            b[live], l2, iterations, lipschitz)
    accuracy.append(np.mean((x_test @ w + b > 0) == test_y, axis=0))
  accuracy = np.array(accuracy)  # [sizes, labels]
  results = []
  for j in range(labels):
    if j not in live:
      results.append(None)
      continue
    best = float(accuracy[:, j].max())
    needed = next(s for s, a in zip(sizes, accuracy[:, j], strict=True) if a >= best - 0.01)
    majority = float(np.mean(test_y[:, j] == (rate[j] >= 0.5)))
    results.append({'sizes': list(sizes), 'accuracy': [float(a) for a in accuracy[:, j]],
                    'majority': majority, 'best': best, 'cells_needed': int(needed),
                    'order': order[j]})
  return results


# What the reported cells do: contexts, histograms; and how saturated the gates are.

def snippets(text: str, values: np.ndarray, count: int = 10, width: int = 40,
             sign: int = 1) -> list[dict]:
  """The `count` characters where sign * values peaks, at least `width` apart, each in a
  window of `width` characters (three quarters of it before the character, as the state
  depends on what came before): {'position' in the text, 'offset' of the character in the
  window, 'text', 'activations' of the window, 'activation' at the character}."""
  values = np.asarray(values, np.float32)
  n = len(values)
  chosen = []
  for pool in (min(n, 4 * count * width), n):
    candidates = np.argpartition(-sign * values, pool - 1)[:pool] if pool < n else np.arange(n)
    candidates = candidates[np.lexsort((candidates, -sign * values[candidates]))]
    chosen = []
    for position in candidates:
      if all(abs(position - other) >= width for other in chosen):
        chosen.append(int(position))
        if len(chosen) == count:
          break
    if len(chosen) == count or pool == n:
      break
  windows = []
  for position in chosen:
    start = min(max(position - width * 3 // 4, 0), max(n - width, 0))
    stop = min(start + width, n)
    windows.append({'position': position, 'offset': position - start,
                    'text': text[start:stop], 'activation': _round(values[position]),
                    'activations': [_round(v) for v in values[start:stop]]})
  return windows


def histogram(values: np.ndarray, kind: str, bins: int = 30) -> dict:
  """{'edges', 'counts'} of `values` over [0, 1] for a gate, [-1, 1] for h and g, and the
  values' own range otherwise (c)."""
  values = np.asarray(values, np.float32)
  if kind in GATE_KINDS:
    lo, hi = 0.0, 1.0
  elif kind in TANH_KINDS:
    lo, hi = -1.0, 1.0
  else:
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
      lo, hi = lo - 0.5, hi + 0.5
  counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
  return {'edges': [_round(e) for e in edges], 'counts': [int(c) for c in counts]}


def saturation(activations: Mapping[str, np.ndarray], low: float = 0.1,
               high: float = 0.9) -> list[dict]:
  """For every gate kind of every layer, per unit the share of characters it spends below
  `low` ('below', left-saturated) and above `high` ('above', right-saturated)."""
  result = []
  for key, values in activations.items():
    layer, kind = _parse_key(key)
    if kind in GATE_KINDS:
      values = np.asarray(values)
      result.append({'layer': layer, 'kind': kind,
                     'below': [_round(v) for v in np.mean(values < low, axis=0)],
                     'above': [_round(v) for v in np.mean(values > high, axis=0)]})
  return result


def _round(value, digits=4):
  return round(float(value), digits)


# Everything together.

def find_cells(text: str, activations: Mapping[str, np.ndarray],
               control_activations: Mapping[str, np.ndarray] | None,
               probes: Mapping[str, str] | Sequence[str] = (), top: int = 5,
               margin: float = 0.05, shuffles: int = 4, block: int = 250, seed: int = 0,
               probe_rows: tuple[int, int] = (3000, 20000), snippet_count: int = 10,
               snippet_width: int = 40, bins: int = 30, threads: int = 2) -> dict:
  """The interpretable cells of a network over `text`: see the module docstring.

  control_activations: the same text through a randomly initialised model of the same shape
  (None: no random-model control). Chance is the best score any cell reaches (a) in the
  random model and (b) in this model against the labels shuffled in blocks of `block`
  characters within each half (`shuffles` shuffles; a half of few blocks leaves some in
  place, so `block` should be small against N / 2); at least one is needed. A cell is
  interpretable when its held-out score on some label beats that label's best control
  score, the higher of (a) and (b), by more than `margin` (AUROC or r alike). probe_rows: the
  training rows (from the first half) and test rows (from the second) of the sparse probe,
  drawn at random. threads: for score_cells.

  Returns {'chars', 'split', 'cells' (how many), 'margin',
  'labels': {name: {'type': 'binary' | 'scalar', 'score': 'auroc' | 'pearson', 'stats',
    'top': [{'cell': 'layer{L}/{kind}/{index}', 'layer', 'kind', 'index', 'score',
             'fitted' (first-half score), 'sign', 'beats_control'}],
    'control': {'random_model', 'shuffled', 'threshold'}, 'interpretable' (cells beating it),
    'probe' (binary labels: sparse_probe's dict, but for 'order' 'cells': the names of the
             first cells_needed (at most PROBE_CELLS_LISTED) to enter; None if the label is
             constant on the probe's training rows)}},
  'skipped': {name: why}, 'headline': {'cells', 'interpretable', 'share',
    'by_kind': {kind: {'cells', 'interpretable', 'share'}}},
  'interpretable': [{'cell', 'label', 'score', 'threshold'}, best excess first],
  'reported': {cell: {'layer', 'kind', 'index', 'histogram', 'snippets': {'high' and/or 'low':
    snippets()}}} for the cells in the labels' top lists, 'saturation': saturation()}.
  """
  n = len(text)
  if not control_activations and not shuffles:
    raise ValueError('find_cells needs a control: control_activations, shuffles or both')
  for what, acts in (('activations', activations), ('control_activations', control_activations)):
    for key, values in (acts or {}).items():
      _parse_key(key)
      if np.ndim(values) != 2 or len(values) != n:
        raise ValueError(f'{what}[{key!r}]: expected [{n}, hidden], got {np.shape(values)}')
  split = n // 2
  labels, skipped = [], {}
  for label in text_labels(text, probes).values():
    why = constant_half(label, split)
    if why:
      skipped[label.name] = why
    else:
      labels.append(label)
  rng = np.random.default_rng(seed)
  shuffled = [Label(label.name, label.kind,
                     np.concatenate([block_shuffle(label.values[:split], block, rng),
                                     block_shuffle(label.values[split:], block, rng)]))
              for _ in range(shuffles) for label in labels]
  table = cell_table(activations)
  names = [f'layer{layer}/{kind}/{index}' for layer, kind, index in table]
  count = len(labels)
  scores = score_cells(activations, labels + shuffled, split, threads=threads)
  held_out = scores.held_out[:, :count]
  shuffled_best = np.full(count, -np.inf)
  if shuffles:
    shuffled_best = scores.held_out[:, count:].reshape(len(table), shuffles, count).max(axis=(0, 1))
  random_best = np.full(count, -np.inf)
  if control_activations:
    random_best = score_cells(control_activations, labels, split,
                              threads=threads).held_out.max(axis=0)
  threshold = np.maximum(shuffled_best, random_best) + margin
  beats = held_out > threshold

  binary = [j for j, label in enumerate(labels) if label.kind == BINARY]
  probe_results = _probe_labels(activations, [labels[j] for j in binary], split, probe_rows,
                                rng)
  result_labels, reported = {}, {}
  for j, label in enumerate(labels):
    ranking = np.argsort(-held_out[:, j], kind='stable')[:top]
    top_cells = []
    for c in ranking:
      layer, kind, index = table[c]
      sign = int(scores.sign[c, j])
      top_cells.append({'cell': names[c], 'layer': layer, 'kind': kind, 'index': index,
                        'score': _round(held_out[c, j]), 'fitted': _round(scores.fitted[c, j]),
                        'sign': sign, 'beats_control': bool(beats[c, j])})
      reported.setdefault(c, set()).add(sign)
    entry = {'type': label.kind, 'score': 'auroc' if label.kind == BINARY else 'pearson',
             'stats': _label_stats(label), 'top': top_cells,
             'control': {'random_model': _finite(random_best[j]),
                         'shuffled': _finite(shuffled_best[j]),
                         'threshold': _finite(threshold[j])},
             'interpretable': int(beats[:, j].sum())}
    if label.kind == BINARY:
      found = probe_results[binary.index(j)]
      if found is not None:
        carriers = found.pop('order')[:min(found['cells_needed'], PROBE_CELLS_LISTED)]
        found = dict(found, cells=[names[c] for c in carriers],
                     accuracy=[_round(a) for a in found['accuracy']])
      entry['probe'] = found
    result_labels[label.name] = entry
  return {'chars': n, 'split': split, 'cells': len(table), 'margin': margin,
          'labels': result_labels, 'skipped': skipped,
          'headline': _headline(table, beats),
          'interpretable': _interpretable(names, labels, held_out, threshold, beats),
          'reported': _reported(text, activations, table, names, reported, snippet_count,
                                snippet_width, bins),
          'saturation': saturation(activations)}


def _finite(value):
  return _round(value) if np.isfinite(value) else None


def _label_stats(label: Label) -> dict:
  values = label.values
  if label.kind == BINARY:
    return {'share': _round(values.mean())}
  return {'mean': _round(values.mean()), 'std': _round(values.std()), 'max': _round(values.max())}


def _probe_labels(activations, labels, split, probe_rows, rng):
  """sparse_probe on random rows: training rows from the first half, test rows the second."""
  if not labels:
    return []
  n = len(labels[0].values)
  train_rows = np.sort(rng.choice(split, min(split, probe_rows[0]), replace=False))
  test_rows = split + np.sort(rng.choice(n - split, min(n - split, probe_rows[1]), replace=False))
  gather = lambda rows: np.concatenate(
      [np.asarray(values, np.float32)[rows] for values in activations.values()], axis=1)
  truth = np.stack([label.values for label in labels], axis=1)
  return sparse_probe(gather(train_rows), truth[train_rows], gather(test_rows), truth[test_rows])


def _headline(table, beats) -> dict:
  interpretable = beats.any(axis=1)
  kinds = np.array([kind for _, kind, _ in table])
  share = lambda mask: {'cells': int(mask.sum()), 'interpretable': int(interpretable[mask].sum()),
                        'share': _round(interpretable[mask].mean()) if mask.any() else 0.0}
  by_kind = {kind: share(kinds == kind) for kind in dict.fromkeys(kinds)}
  return dict(share(np.ones(len(table), bool)), by_kind=by_kind)


def _interpretable(names, labels, held_out, threshold, beats) -> list[dict]:
  """Each cell that beats a control, with the label it beats it by most on."""
  if not labels:
    return []
  excess = np.where(beats, held_out - threshold, -np.inf)
  best = excess.argmax(axis=1)
  cells = np.flatnonzero(beats.any(axis=1))
  cells = cells[np.argsort(-excess[cells, best[cells]], kind='stable')]
  return [{'cell': names[c], 'label': labels[best[c]].name, 'score': _round(held_out[c, best[c]]),
           'threshold': _round(threshold[best[c]])} for c in cells]


def _reported(text, activations, table, names, signs, count, width, bins) -> dict:
  keys = {_parse_key(key): key for key in activations}
  reported = {}
  for c in sorted(signs):
    layer, kind, index = table[c]
    values = np.asarray(activations[keys[layer, kind]][:, index], np.float32)
    reported[names[c]] = {
        'layer': layer, 'kind': kind, 'index': index, 'histogram': histogram(values, kind, bins),
        'snippets': {('high' if sign > 0 else 'low'): snippets(text, values, count, width, sign)
                     for sign in sorted(signs[c], reverse=True)}}
  return reported
