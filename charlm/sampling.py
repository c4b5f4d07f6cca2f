"""Compiled text generation: the recurrent step runs inside `lax.scan`, a chunk at a time.

A chunk of CHUNK characters is one compiled call, so a sample streams to the terminal chunk
by chunk while the per-character work never returns to Python. The random stream depends only
on the seed (chunk c uses fold_in(key, c)), so the same seed gives the same text.
"""
import codecs
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from charlm.data import Vocab
from charlm.model import CharRNN

CHUNK = 128


def filter_logits(logits, temperature, top_k: int, top_p):
  """Scaled logits with everything outside the top-k / nucleus (top-p) set to -inf."""
  logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # The smallest logit still inside the nucleus: the most likely token is always kept.
  cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def choose(key, logits, temperature, top_k: int, top_p):
  """Samples one token per row; temperature 0 means argmax."""
  sampled = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p))
  return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


class Sampler:
  """Generates text from a CharRNN's parameters."""

  def __init__(self, model: CharRNN, vocab: Vocab):
    self.model, self.vocab = model, vocab

  @functools.partial(jax.jit, static_argnums=(0,))
  def _prime(self, params, tokens):
    carry = self.model.initial_carry(tokens.shape[0])
    _, carry = self.model.apply({'params': params}, tokens, carry)
    return carry

  @functools.partial(jax.jit, static_argnums=(0, 7))
  def _chunk(self, params, carry, last, key, temperature, top_p, top_k):
    def step(state, key):
      carry, last = state
      logits, carry = self.model.apply({'params': params}, last[:, None], carry)
      token = choose(key, logits[:, 0], temperature, top_k, top_p)
      return (carry, token), token
    (carry, last), tokens = jax.lax.scan(step, (carry, last), jax.random.split(key, CHUNK))
    return carry, last, tokens.T

  def generate(self, params, prime_ids, length: int, temperature=1.0, top_k=0, top_p=1.0,
               seed=0, num_samples=1) -> Iterator[np.ndarray]:
    """Yields [num_samples, n] arrays of new token ids, chunk by chunk, `length` in total."""
    prime_ids = np.asarray(prime_ids, np.int32).reshape(-1)
    if len(prime_ids) == 0:
      prime_ids = np.zeros(1, np.int32)  # No prime: start from a zero state and token 0.
    batch = np.broadcast_to(prime_ids, (num_samples, len(prime_ids)))
    carry = self._prime(params, jnp.asarray(batch[:, :-1]))
    last = jnp.asarray(batch[:, -1])
    key = jax.random.PRNGKey(seed)
    done, index = 0, 0
    while done < length:
      carry, last, tokens = self._chunk(params, carry, last, jax.random.fold_in(key, index),
                                        jnp.float32(temperature), jnp.float32(top_p), int(top_k))
      tokens = np.asarray(tokens)[:, :length - done]
      done, index = done + tokens.shape[1], index + 1
      yield tokens

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
    pieces = list(self.stream_text(params, prime, length, **kwargs))
    num = kwargs.get('num_samples', 1)
    return [prime + ''.join(p[i] for p in pieces) for i in range(num)]
