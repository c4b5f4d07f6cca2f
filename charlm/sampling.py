"""Compiled text generation and scoring for a trained CharRNN.

Generation runs CHUNK characters per compiled call with the recurrent step inside `lax.scan`,
so the per-character work never returns to Python and a sample streams chunk by chunk. The
step is `CharRNN.apply` for one character with the parameters rearranged for speed (the same
function, equal up to float rounding): the first layer's input projection of every character
is looked up in a table computed once per call, instead of an embedding and a matmul per step.
It computes in float32 whatever `model.dtype`: for a bfloat16 model, equal up to bf16 rounding.
Tokens are drawn by inverse CDF from uniforms drawn a chunk at a time; they depend only on the
seed (chunk c uses fold_in(key, c)), so the same seed gives the same text. A clamp
(charlm.clamp) holds cells at chosen values at every step while a prime is read and text written.
"""
import codecs
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from charlm import clamp as clamp_lib
from charlm import lstm_cell
from charlm import model as model_lib
from charlm.data import Vocab, show_chars
from charlm.errors import UserError

CHUNK = 128
TABLE_LIMIT = 1 << 24  # The largest first-layer lookup table, in floats (64 MB).


def drop_unknown(vocab: Vocab, text: str, unknown: str = 'error', what: str = 'the prime',
                 skip_hint: str = '--unknown=skip') -> tuple[str, list[str], int]:
  """Checks `text` against the vocabulary: (usable text, unknown characters, number dropped).

  unknown='error' raises a UserError that names the characters; 'skip' drops them.
  """
  check_unknown_mode(unknown)
  missing = vocab.unknown(text)
  if not missing:
    return text, [], 0
  kept = text.translate({ord(c): None for c in missing})
  dropped = len(text) - len(kept)
  if unknown == 'error':
    raise unknown_error(what, missing, dropped, skip_hint)
  return kept, missing, dropped


def check_unknown_mode(unknown: str):
  if unknown not in ('error', 'skip'):
    raise UserError(f"unknown must be 'error' or 'skip', got {unknown!r}")


def unknown_error(what: str, missing: Sequence[str], dropped: int, skip_hint: str) -> UserError:
  """The one-line error for `dropped` characters of `what` outside the vocabulary."""
  return UserError(f'{what} has {dropped} character{"s" if dropped > 1 else ""} outside the '
                   f'model\'s vocabulary: {show_chars(missing)}; remove them, or pass '
                   f'{skip_hint} to drop them')


# ---------------------------------------------------------------------------------------------
# One character at a time.

def step_weights(model: model_lib.CharRNN, params, table_limit: int = TABLE_LIMIT) -> dict:
  """`params` rearranged for `step`.

  The first layer's input projection becomes a table of every token's, unless that table
  would hold more than `table_limit` floats.
  """
  vocab, gates = params['embed']['embedding'].shape[0], params['layer0']['recurrent'].shape[1]
  return _step_weights(model, params, vocab * gates <= table_limit)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _step_weights(model, params, table: bool) -> dict:
  layers = []
  for i in range(model.num_layers):
    p = params[f'layer{i}']
    layer = {'kernel': p['input']['kernel'], 'bias': p['input']['bias'],
             'recurrent': p['recurrent']}
    if 'recurrent_bias' in p:
      layer['recurrent_bias'] = p['recurrent_bias']
    layers.append(layer)
  first, embedding = layers[0], params['embed']['embedding']
  if table:
    first['table'] = embedding @ first.pop('kernel') + first.pop('bias')
  else:
    first['embedding'] = embedding
  return {'layers': layers, 'output': params['output']}


def _cell_step(cell: str, layer: dict, carry, gx, hold):
  if cell == 'lstm':
    return lstm_cell.step_states(layer['recurrent'], carry, gx, hold)
  if cell == 'gru':
    return model_lib.gru_step_states(layer['recurrent'], layer['recurrent_bias'], carry, gx, hold)
  return model_lib.rnn_step_states(layer['recurrent'], carry, gx, hold)


def step_states(model: model_lib.CharRNN, weights: dict, carry, tokens, holds=None):
  """`step` with what each layer computed and cells held: (logits, next carry, states), states
  a list of {kind: [B, H]} per layer (model.STATES); `holds` as clamp.holds makes them."""
  x, new_carry, states = None, [], []
  for i, layer in enumerate(weights['layers']):
    if 'table' in layer:
      gx = layer['table'][tokens]
    else:
      gx = (layer['embedding'][tokens] if i == 0 else x) @ layer['kernel'] + layer['bias']
    layer_carry, layer_states = _cell_step(model.cell, layer, carry[i], gx,
                                           clamp_lib.hold_fn(holds, i))
    x = layer_states['h']
    new_carry.append(layer_carry)
    states.append(layer_states)
  out = weights['output']
  return x @ out['kernel'] + out['bias'], tuple(new_carry), states


def step(model: model_lib.CharRNN, weights: dict, carry, tokens, clamp=()):
  """tokens [B] -> logits [B, V] and the next carry: `model.apply` on tokens[:, None].

  `clamp`, a tuple of clamp.Clamp (static under jit), holds those cells at every step.
  """
  logits, carry, _ = step_states(model, weights, carry, tokens,
                                 clamp_lib.holds(clamp, model.hidden))
  return logits, carry


def choose(u, logits, temperature, top_k: int = 0, top_p=None):
  """Draws a token per row by inverse CDF from uniforms `u` in (0, 1]; temperature 0 is argmax.

  logits [B, V]; u and temperature [B]. `top_k` (0: off) keeps the k most likely tokens, `top_p`
  (None: off) the fewest whose probability reaches it, as in nucleus sampling.
  """
  t = temperature[:, None]
  z = logits.astype(jnp.float32) / jnp.maximum(t, 1e-6)
  if top_k:
    kth = jax.lax.top_k(z, top_k)[0][:, -1:]
    z = jnp.where(z < kth, -jnp.inf, z)
  if top_p is not None:
    ranked = jnp.sort(z, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest logit still inside the nucleus; the most likely token is always kept.
    cutoff = jnp.min(jnp.where(mass_before < top_p, ranked, jnp.inf), axis=-1, keepdims=True)
    z = jnp.where(z < cutoff, -jnp.inf, z)
  cdf = jnp.cumsum(jnp.exp(z - z.max(axis=-1, keepdims=True)), axis=-1)
  # Token k is drawn when cdf[k-1] < u * total <= cdf[k], so a token of probability 0 never is.
  drawn = jnp.sum(cdf < u[:, None] * cdf[:, -1:], axis=-1)
  return jnp.where(t[:, 0] > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9))
def _generate_chunk(model, weights, carry, last, key, temperature, top_p, top_k, nucleus, clamp):
  us = 1.0 - jax.random.uniform(key, (CHUNK, last.shape[0]))

  def body(state, u):
    carry, last = state
    logits, carry = step(model, weights, carry, last, clamp)
    token = choose(u, logits, temperature, top_k, top_p if nucleus else None)
    return (carry, token), token

  (carry, last), tokens = jax.lax.scan(body, (carry, last), us)
  return carry, last, tokens.T


@functools.partial(jax.jit, static_argnums=(0, 5))
def _feed_chunk(model, weights, carry, tokens, valid, clamp):
  """Reads tokens [B, CHUNK] (steps where `valid` is False leave the carry as it was).

  Returns the carry and the log-probabilities [B, CHUNK, V] of the token after each.
  """
  def body(carry, inputs):
    token, ok = inputs
    logits, new_carry = step(model, weights, carry, token, clamp)
    carry = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_carry, carry)
    return carry, jax.nn.log_softmax(logits.astype(jnp.float32))

  carry, log_probs = jax.lax.scan(body, carry, (tokens.T, valid))
  return carry, jnp.swapaxes(log_probs, 0, 1)


# ---------------------------------------------------------------------------------------------
# Text.

class Sampler:
  """Generates and scores text with a CharRNN's parameters.

  Text is read as if it followed a newline (token 0 if the vocabulary has none), so that a
  prime such as 'ROMEO:' starts a line, as it would in the training text, and an empty prime
  starts at the beginning of a line.
  """

  def __init__(self, model: model_lib.CharRNN, vocab: Vocab):
    self.model, self.vocab = model, vocab
    newline = vocab.encode('\n') if not vocab.unknown('\n') else [0]
    self.start_token = int(newline[0])

  def _feed(self, weights, carry, ids: np.ndarray, clamp=()):
    """Reads token ids [B, n] from `carry`: the new carry and log-probabilities per chunk."""
    log_probs = []
    for begin in range(0, ids.shape[1], CHUNK):
      piece = ids[:, begin:begin + CHUNK]
      n = piece.shape[1]
      padded = np.pad(piece, ((0, 0), (0, CHUNK - n)))
      carry, lp = _feed_chunk(self.model, weights, carry, padded, np.arange(CHUNK) < n, clamp)
      log_probs.append(lp[:, :n])
    return carry, log_probs

  def generate(self, params, prime_ids, length: int, temperature=1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0, num_samples: int = 1,
               clamp=()) -> Iterator[np.ndarray]:
    """Yields [num_samples, n] arrays of new token ids, chunk by chunk, `length` in total.

    `temperature` is one number or one per sample. `clamp` (clamp.Clamp objects or
    'LAYER:KIND:INDEX=VALUE' strings) holds those cells while the prime is read and the text
    generated.
    """
    temps = np.broadcast_to(np.asarray(temperature, np.float32), (num_samples,))
    check_options(length, temps, top_k, top_p, num_samples)
    clamp = clamp_lib.check(clamp, self.model)
    top_k = 0 if top_k >= self.vocab.size else int(top_k)
    weights = step_weights(self.model, params)
    ids = np.concatenate([[self.start_token], np.asarray(prime_ids).reshape(-1)]).astype(np.int32)
    carry, _ = self._feed(weights, self.model.initial_carry(1), ids[None, :-1], clamp)
    carry = jax.tree.map(lambda c: jnp.repeat(c, num_samples, axis=0), carry)
    last = jnp.full((num_samples,), ids[-1], jnp.int32)
    key = jax.random.PRNGKey(seed)
    pending, index, done = None, 0, 0
    while done < length:
      carry, last, tokens = _generate_chunk(
          self.model, weights, carry, last, jax.random.fold_in(key, index), temps,
          jnp.float32(top_p), top_k, top_p < 1, clamp)
      if pending is not None:  # The next chunk is already dispatched while this one is read.
        yield np.asarray(pending[0])[:, :pending[1]]
      n = min(CHUNK, length - done)
      pending, index, done = (tokens, n), index + 1, done + n
    if pending is not None:
      yield np.asarray(pending[0])[:, :pending[1]]

  def stream_text(self, params, prime: str, length: int, **kwargs) -> Iterator[list[str]]:
    """Like `generate`, but yields decoded text per sample (bytes split across chunks held)."""
    decoders = None
    for tokens in self.generate(params, self.vocab.encode(prime), length, **kwargs):
      if self.vocab.level == 'char':
        yield [self.vocab.decode(row) for row in tokens]
        continue
      decoders = decoders or [codecs.getincrementaldecoder('utf-8')('replace') for _ in tokens]
      rows = (bytes(row.astype(np.uint8).tolist()) for row in tokens)
      yield [d.decode(r) for d, r in zip(decoders, rows, strict=True)]
    if decoders:
      yield [d.decode(b'', final=True) for d in decoders]

  def sample(self, params, prime: str, length: int, **kwargs) -> list[str]:
    """Whole samples (prime included), one string per sample."""
    num = kwargs.get('num_samples', 1)
    pieces = list(self.stream_text(params, prime, length, **kwargs))
    return [prime + ''.join(p[i] for p in pieces) for i in range(num)]

  def logprobs(self, params, ids, clamp=()) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for every i, in nats; ids[0] is read after the start token.
    `clamp` holds cells, as in `generate`."""
    clamp = clamp_lib.check(clamp, self.model)
    ids = np.asarray(ids, np.int32).reshape(-1)
    if len(ids) == 0:
      return np.zeros(0, np.float32)
    inputs = np.concatenate([[self.start_token], ids[:-1]]).astype(np.int32)
    _, chunks = self._feed(step_weights(self.model, params), self.model.initial_carry(1),
                           inputs[None], clamp)
    log_probs = np.concatenate([np.asarray(c[0]) for c in chunks])
    return np.take_along_axis(log_probs, ids[:, None], axis=1)[:, 0]


def check_options(length, temperature, top_k, top_p, num_samples):
  """Raises a UserError for a sampling option out of range."""
  temperatures = np.asarray(temperature, np.float32)
  if int(length) != length or length < 0:
    raise UserError(f'length must be a whole number of characters >= 0, got {length}')
  if not np.all(np.isfinite(temperatures)) or np.any(temperatures < 0):
    raise UserError(f'temperature must be >= 0 (0: always the most likely character), got '
                    f'{temperature}')
  if int(top_k) != top_k or top_k < 0:
    raise UserError(f'top_k must be a whole number >= 0 (0: off), got {top_k}')
  if not 0 < top_p <= 1:
    raise UserError(f'top_p must be in (0, 1] (1: off), got {top_p}')
  if int(num_samples) != num_samples or num_samples < 1:
    raise UserError(f'num_samples must be a whole number >= 1, got {num_samples}')
