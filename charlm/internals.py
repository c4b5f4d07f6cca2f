"""Looking inside a CharRNN: every layer's states at every character of a text, and ablations.

`activations(model, params, ids, start_token=...)` reads a text as sampling reads a prime: first
`start_token` (sampling.Sampler.start_token, a newline), then ids[0], ids[1], ... Row n of each
array it returns is what the model computed on reading ids[n]:

  'layer{L}/{kind}'  float32 [N, hidden], kind in model.STATES[cell]: h; for an LSTM also the
                     cell state c and the gates i, f, g, o (after their sigmoid or tanh); for a
                     GRU the gates z and r;
  'logprobs'         float32 [N, vocab], the distribution of the character after ids[n].

It runs in eval mode (no dropout), `chunk` characters of each stream per compiled call
(default: about CALL_CHARS in all), carrying the state from call to call, so that memory holds
one chunk besides the arrays returned. Two loops run it:

  'layers'  the model's own forward, CharRNN.apply with its layers writing their states into
            the arrays returned ('into', donated to each call: no copy; the native CPU LSTM
            loops write them as they go): the loops training runs, one layer after the other
            over a chunk; the fast one. The arrays come back read-only.
  'steps'   one compiled step through all layers per character (sampling.step_states), the
            only one that can hold cells (charlm.clamp), so a clamp runs it; slower.

streams=S cuts the text into S contiguous parts (`stream_bounds`, in whole chunks) read side by
side as one batch, each from the start-token state: much faster, but the first characters of
each part lack the context before it. streams=1 is one exact pass.

`ablate` holds one cell at a time at its mean over the text and reports the loss it costs.
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from charlm import clamp as clamp_lib
from charlm import lstm_cpu, sampling
from charlm import model as model_lib
from charlm.errors import UserError

# Characters per compiled call (streams x chunk) when no chunk is given: fewer pay the call's
# overhead more often, more hold more memory (docs/speed.md).
CALL_CHARS = 8192
MIN_CHUNK = 16
SCORE_CHUNK = 128  # Ablation's held runs: each returns one number per character.
LOOPS = ('auto', 'layers', 'steps')
ABLATE_STREAMS = 16
ABLATE_ROWS = 512  # The most batch rows (ablated cells x streams) of one ablation pass.


def stream_bounds(length: int, streams: int, multiple: int = 1) -> list[tuple[int, int]]:
  """The (begin, end) of each part `streams` cuts a text of `length` characters into: ceil(length
  / streams) characters each, rounded up to a multiple of `multiple`, the last shorter (fewer
  parts where the text runs out)."""
  if int(streams) != streams or streams < 1:
    raise UserError(f'streams must be a whole number >= 1, got {streams}')
  per = max(1, -(-length // int(streams)))
  per = -(-per // multiple) * multiple
  return [(begin, min(begin + per, length)) for begin in range(0, length, per)]


def activations(model: model_lib.CharRNN, params, ids, *, start_token: int, streams: int = 1,
                chunk: int | None = None, clamp=(), kinds: Sequence[str] | None = None,
                loop: str = 'auto') -> dict[str, np.ndarray]:
  """What `model` computes on reading `ids`, per character and layer (see the module's doc).

  kinds: the states to return (default all of model.STATES[cell]). clamp: clamp.Clamp objects
  or 'LAYER:KIND:INDEX=VALUE' strings, held at every step (start token included); it runs the
  'steps' loop. loop: 'layers', 'steps' or 'auto' ('steps' with a clamp, else 'layers').
  """
  ids = _check_ids(ids, model)
  clamps = clamp_lib.check(clamp, model)
  loop = _choose_loop(loop, clamps)
  names = [f'layer{layer}/{kind}' for layer in range(model.num_layers)
           for kind in _check_kinds(kinds, model.cell)]
  grid = _Grid(ids, streams, chunk, start_token)
  if loop == 'layers':
    out = _read_layers(model, params, grid, names)
  else:
    out = _read_steps(model, params, grid, names, clamp_lib.holds(clamps, model.hidden))
  return {name: a.reshape(-1, a.shape[-1])[:len(ids)] for name, a in out.items()}


def ablate(model: model_lib.CharRNN, params, ids, cells, *, start_token: int, where=None,
           streams: int = ABLATE_STREAMS, chunk: int | None = None) -> list[dict]:
  """The loss of the text with each of `cells` held, one at a time, at its mean over the text.

  cells: (layer, kind, index) tuples or 'LAYER:KIND:INDEX' strings, kind 'h' or 'c' (LSTM).
  Each cell's mean is over the states after every character ('layers' loop); the held runs
  read the text with the 'steps' loop, up to ABLATE_ROWS batch rows (cells x streams) at a time,
  next to an unheld run, so that a cell the outputs ignore changes the loss by nothing. The
  loss is -log p(ids[n] | ids[:n]) in nats, averaged over all n (ids[0] after the start token)
  and, with `where` (a boolean [N]), over the n where it holds. Returns a dict per cell: layer,
  kind, index, mean, chars, loss, ablated_loss, change (ablated minus unheld), and where_chars,
  where_loss, where_ablated_loss, where_change (None without `where`).
  """
  ids = _check_ids(ids, model)
  if not len(ids):
    raise UserError('ablation needs a text of at least one character')
  cells = [_check_cell(cell, model) for cell in cells]
  if where is not None:
    where = np.asarray(where)
    if where.shape != ids.shape or where.dtype != bool:
      raise UserError(f'where must be a boolean array of one entry per character ({len(ids)}), '
                      f'got {where.dtype} {where.shape}')
  means = _means(model, params, ids, cells, start_token, streams, chunk)
  grid = _Grid(ids, streams, chunk, start_token, longest=SCORE_CHUNK * streams)
  names = sorted({f'layer{layer}/{kind}' for layer, kind, _ in cells})
  items = [None, *zip(cells, means, strict=True)]  # None: the unheld run.
  per_pass = min(len(items), max(1, ABLATE_ROWS // grid.streams))
  totals, where_totals = np.zeros(len(items)), np.zeros(len(items))
  reader = _Reader(model, params)
  for first in range(0, len(items), per_pass):
    group = items[first:first + per_pass]
    holds = _group_holds(group + [None] * (per_pass - len(group)), names, grid.streams,
                         model.hidden)  # The last pass padded: one shape, one compile.
    scores = reader.scores(grid, ids, holds, per_pass, where)
    totals[first:first + len(group)] = scores[0][:len(group)]
    where_totals[first:first + len(group)] = scores[1][:len(group)]
  n, m = len(ids), int(where.sum()) if where is not None else 0
  loss, where_loss = float(-totals[0] / n), float(-where_totals[0] / m) if m else None
  report = []
  for k, ((layer, kind, index), mean) in enumerate(zip(cells, means, strict=True), start=1):
    ablated = float(-totals[k] / n)
    where_ablated = float(-where_totals[k] / m) if m else None
    report.append({
        'layer': layer, 'kind': kind, 'index': index, 'mean': mean, 'chars': n, 'loss': loss,
        'ablated_loss': ablated, 'change': ablated - loss,
        'where_chars': m if where is not None else None, 'where_loss': where_loss,
        'where_ablated_loss': where_ablated,
        'where_change': where_ablated - where_loss if m else None})
  return report


# ---------------------------------------------------------------------------------------------
# Reading a text in streams, a chunk at a time.

class _Grid:
  """A text cut into `streams` rows of `per` characters each (`stream_bounds` in whole chunks),
  padded with the start token: inputs [streams, per]. Position (k, t) is character k * per + t,
  real where that is below the text's length. chunk None: CALL_CHARS / streams, at most the
  text's length per stream rounded up to a power of two (so that a short text compiles few
  shapes)."""

  def __init__(self, ids: np.ndarray, streams: int, chunk: int | None, start_token: int,
               longest: int = CALL_CHARS):
    per = (stream_bounds(len(ids), streams) or [(0, 1)])[0][1]  # An empty text: one row.
    if chunk is None:
      chunk = min(max(MIN_CHUNK, longest // int(streams)),
                  max(MIN_CHUNK, 1 << (per - 1).bit_length()))
    if int(chunk) != chunk or chunk < 1:
      raise UserError(f'chunk must be a whole number >= 1, got {chunk}')
    self.chunk = int(chunk)
    bounds = stream_bounds(len(ids), streams, self.chunk) or [(0, self.chunk)]
    self.streams, self.per = len(bounds), bounds[0][1]
    self.start_token, self.length = int(start_token), len(ids)
    flat = np.full(self.streams * self.per, start_token, np.int32)
    flat[:len(ids)] = ids
    self.inputs = flat.reshape(self.streams, self.per)

  def positions(self, begin: int) -> np.ndarray:
    """The character index of each position of the chunk at `begin`, [streams, chunk]; -1 where
    the position is padding."""
    t = begin + np.arange(self.chunk)
    n = np.arange(self.streams)[:, None] * self.per + t[None]
    return np.where(n < self.length, n, -1)


def _read_layers(model, params, grid: _Grid, names) -> dict[str, np.ndarray]:
  """The 'layers' loop: {name: [streams, per, width]}, read-only, written in place chunk by
  chunk (`_layers_into`)."""
  carry, _ = _layers_into(model, params, model.initial_carry(grid.streams), {},
                          np.full((grid.streams, 1), grid.start_token, np.int32), np.int32(0))
  # Every position is written below, so where the model runs the native loops (their library
  # is loaded) the arrays start unwritten: no pass of zeros over them first.
  empty = lambda width: (lstm_cpu.unwritten if model.loops.native else jnp.zeros)(
      (grid.streams, grid.per, width), jnp.float32)
  into = {'logprobs': empty(model.vocab_size)}
  for name in names:
    layer, kind = name.split('/')
    into.setdefault(layer, {})[kind] = empty(model.hidden)
  for begin in range(0, grid.per, grid.chunk):
    carry, into = _layers_into(model, params, carry, into,
                               grid.inputs[:, begin:begin + grid.chunk], np.int32(begin))
  out = {'logprobs': np.asarray(into['logprobs'])}
  for name in names:
    layer, kind = name.split('/')
    out[name] = np.asarray(into[layer][kind])
  return out


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _layers_into(model, params, carry, into, tokens, begin):
  """tokens [B, T] through CharRNN.apply, its layers writing their states into `into`
  ({'logprobs': [B, P, V], 'layer{L}': {kind: [B, P, H]}}, each optional) at steps begin ..
  begin + T - 1, and the log-probabilities too: (carry, into written)."""
  layers = {layer: {'begin': begin, **arrays} for layer, arrays in into.items()
            if layer != 'logprobs'}
  variables = {'params': params} | ({'into': layers} if layers else {})
  (logits, carry), written = model.apply(variables, tokens, carry, mutable=['into'])
  out = {layer: {kind: a for kind, a in arrays.items() if kind != 'begin'}
         for layer, arrays in written.get('into', {}).items()}
  if 'logprobs' in into:
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32))
    out['logprobs'] = jax.lax.dynamic_update_slice(into['logprobs'], logprobs, (0, begin, 0))
  return carry, out


def _read_steps(model, params, grid: _Grid, names, holds) -> dict[str, np.ndarray]:
  """The 'steps' loop: {name: [streams, per, width]}, copied out chunk by chunk; the next chunk
  is dispatched before this one is copied."""
  reader = _Reader(model, params)
  widths = {name: model.hidden for name in names} | {'logprobs': model.vocab_size}
  out = {name: np.empty((grid.streams, grid.per, w), np.float32) for name, w in widths.items()}
  carry, _ = reader.start(grid.streams, grid.start_token, holds)
  pending = None
  for begin in range(0, grid.per + grid.chunk, grid.chunk):
    if pending:  # Time-major: [T, S, width].
      for name, value in [('logprobs', pending[1]), *pending[2].items()]:
        out[name][:, pending[0]:pending[0] + grid.chunk] = np.asarray(value).swapaxes(0, 1)
      pending = None
    if begin < grid.per:
      carry, logprobs, states = reader.call(carry, grid.inputs[:, begin:begin + grid.chunk],
                                            names, holds)
      pending = begin, logprobs, states
  return out


class _Reader:
  """The 'steps' loop's compiled calls on a model's parameters. `holds` (clamp.holds: masks and
  values [H] or [rows, H]) hold cells."""

  def __init__(self, model, params):
    self.model, self.weights = model, sampling.step_weights(model, params)

  def call(self, carry, tokens, names, holds, targets=None):
    return _steps_chunk(self.model, self.weights, carry, tokens, holds, tuple(names), targets)

  def start(self, rows: int, start_token: int, holds, targets=None):
    """The carry after the start token, and its log-probabilities ([1, rows, V], or of
    `targets` [1, rows])."""
    carry, logprobs, _ = self.call(self.model.initial_carry(rows),
                                   np.full((rows, 1), start_token, np.int32), (), holds, targets)
    return carry, logprobs

  def scores(self, grid: _Grid, ids: np.ndarray, holds, copies: int, where) -> tuple:
    """Sums of log p(ids[n] | ids[:n]) over all n and over the n where `where` holds, for each
    of `copies` stacks of the grid's rows (one per ablated cell): two arrays [copies]."""
    rows = copies * grid.streams
    targets = np.full(grid.streams * grid.per, grid.start_token, np.int32)
    targets[:len(ids) - 1] = ids[1:]  # The character after each position.
    target_grid = targets.reshape(grid.streams, grid.per)
    inputs, target_grid = np.tile(grid.inputs, (copies, 1)), np.tile(target_grid, (copies, 1))
    carry, first = self.start(rows, grid.start_token, holds,
                              np.full((rows, 1), ids[0], np.int32))
    first = np.asarray(first)[0, ::grid.streams].astype(np.float64)  # Stream 0 reads ids[0].
    total, where_total = first.copy(), first * (where is not None and where[0])
    for begin in range(0, grid.per, grid.chunk):
      span = slice(begin, begin + grid.chunk)
      carry, logprobs, _ = self.call(carry, inputs[:, span], (), holds, target_grid[:, span])
      logprobs = np.asarray(logprobs, np.float64).T.reshape(copies, grid.streams, grid.chunk)
      scored = grid.positions(begin) + 1  # The character each position predicts.
      real = (scored > 0) & (scored < len(ids))
      total += np.where(real, logprobs, 0).sum(axis=(1, 2))
      if where is not None:
        chosen = real & where[np.clip(scored, 0, len(ids) - 1)]
        where_total += np.where(chosen, logprobs, 0).sum(axis=(1, 2))
    return total, where_total


@functools.partial(jax.jit, static_argnums=(0, 5))
def _steps_chunk(model, weights, carry, tokens, holds, names, targets=None):
  """tokens [B, T] a step at a time (sampling.step_states, holding `holds`): (carry,
  log-probabilities [T, B, V], or of `targets` [T, B], states [T, B, H]), time-major."""
  def body(carry, inputs):
    token, target = inputs
    logits, carry, layers = sampling.step_states(model, weights, carry, token, holds)
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32))
    if target is not None:
      logprobs = jnp.take_along_axis(logprobs, target[:, None], axis=1)[:, 0]
    states = {}
    for name in names:
      layer, kind = name.split('/')
      states[name] = layers[int(layer.removeprefix('layer'))][kind]
    return carry, (logprobs, states)

  carry, (logprobs, states) = jax.lax.scan(
      body, carry, (tokens.T, None if targets is None else targets.T))
  return carry, logprobs, states


# ---------------------------------------------------------------------------------------------
# Ablation's pieces and argument checks.

def _means(model, params, ids, cells, start_token, streams, chunk) -> list[float]:
  """Each cell's mean over the states after every character, read in `streams`."""
  kinds = sorted({kind for _, kind, _ in cells})
  acts = activations(model, params, ids, start_token=start_token, streams=streams, chunk=chunk,
                     kinds=kinds, loop='layers')
  return [float(acts[f'layer{layer}/{kind}'][:, index].mean(dtype=np.float64))
          for layer, kind, index in cells]


def _group_holds(group, names, streams: int, hidden: int) -> dict:
  """Holds for a pass of len(group) stacks of `streams` rows: stack g holds group[g]'s cell at
  its mean (None: nothing); every name in `names` is present, so that passes compile once."""
  rows = len(group) * streams
  holds = {name: (np.zeros((rows, hidden), bool), np.zeros((rows, hidden), np.float32))
           for name in names}
  for g, item in enumerate(group):
    if item is not None:
      (layer, kind, index), mean = item
      mask, values = holds[f'layer{layer}/{kind}']
      mask[g * streams:(g + 1) * streams, index] = True
      values[g * streams:(g + 1) * streams, index] = mean
  return holds


def _check_ids(ids, model) -> np.ndarray:
  ids = np.asarray(ids).reshape(-1)
  if ids.size and (ids.min() < 0 or ids.max() >= model.vocab_size):
    raise UserError(f'token ids must be in 0..{model.vocab_size - 1}, got {ids.min()}..'
                    f'{ids.max()}')
  return ids.astype(np.int32)


def _check_kinds(kinds, cell: str) -> tuple[str, ...]:
  known = model_lib.STATES[cell]
  if kinds is None:
    return known
  kinds = tuple(dict.fromkeys(kinds))
  unknown = [k for k in kinds if k not in known]
  if unknown:
    raise UserError(f'kinds {", ".join(map(repr, unknown))}: {cell} layers compute '
                    f'{", ".join(known)}')
  return kinds


def _check_cell(cell, model) -> tuple[int, str, int]:
  if isinstance(cell, str):
    return clamp_lib.parse_cell(cell, model)
  try:
    layer, kind, index = cell
  except (TypeError, ValueError):
    raise UserError(f'cell {cell!r}: give (layer, kind, index) or "LAYER:KIND:INDEX"') from None
  return clamp_lib.check_cell(int(layer), kind, int(index), model, f'cell {cell!r}')


def _choose_loop(loop: str, clamps) -> str:
  if loop not in LOOPS:
    raise UserError(f'unknown loop {loop!r}; use one of {", ".join(LOOPS)}')
  if loop == 'auto':
    return 'steps' if clamps else 'layers'
  if loop == 'layers' and clamps:
    raise UserError("a clamp holds cells in the 'steps' loop only; use loop='steps' or 'auto'")
  return loop
