"""A trained model in Python, for notebooks and scripts.

    import charlm
    model = charlm.load('runs/shakespeare_small')
    print(model.sample(prime='ROMEO:', length=300, temperature=0.8, seed=0))
    model.logprobs('To be, or not to be')  # log-probability of each character, in nats
    model.evaluate(split='test')  # {'chars': ..., 'loss': ..., 'bpc': ..., 'perplexity': ...}
    model.activations('"Hello," she said.')  # {'layer0/c': [N, hidden], ..., 'logprobs', 'ids'}
    model.sample(prime='ROMEO:', clamp=['1:c:42=0.9'])  # cell 42 of layer 1's c held at 0.9
"""
import contextlib
import math
import os
import secrets
import tempfile

import jax
import numpy as np

from charlm import corpora, dynamic, evaluation, inference, internals
from charlm import data as data_lib
from charlm.errors import UserError
from charlm.sampling import Sampler, check_unknown_mode, drop_unknown, unknown_error

SKIP_HINT = "unknown='skip'"
FILE_CHUNK_BYTES = 1 << 20  # evaluate(file=...) encodes this much of the file at a time.
NOT_UTF8_FIX = 'convert it to UTF-8, or score it with a byte-level model'


class Model:
  """A run's checkpoint loaded for inference.

  Attributes: workdir, step (of the checkpoint), config, vocab, module (the flax CharRNN) and
  params. Characters outside the vocabulary raise a UserError that names them, or with
  unknown='skip' are dropped.
  """

  def __init__(self, workdir: str, step=None):
    self.workdir = workdir
    self.config, self.vocab, self.module, self.params, self.step = inference.load_checkpoint(
        workdir, step)
    self._sampler = Sampler(self.module, self.vocab)

  def __repr__(self):
    m = self.module
    return (f'<charlm model {self.workdir} at step {self.step}: {m.num_layers}x{m.hidden} '
            f'{m.cell}, {self.vocab.level} vocabulary of {self.vocab.size}>')

  def sample(self, prime: str = '', length: int = 500, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             unknown: str = 'error', clamp=()) -> str:
    """The prime followed by `length` generated characters (bytes for a byte-level model).

    temperature 0 always takes the most likely character; top_k keeps only the k most likely
    (0: all), top_p the fewest whose probability reaches it (1: all). The same seed gives the
    same text; seed None picks one at random. The prime is read as if it followed a newline.
    clamp: cells held at values while the prime is read and the text written, as
    'LAYER:KIND:INDEX=VALUE' strings or charlm.clamp.Clamp objects.
    """
    return self.samples(1, prime, length, temperature, top_k, top_p, seed, unknown, clamp)[0]

  def samples(self, num_samples: int, prime: str = '', length: int = 500,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              seed: int | None = None, unknown: str = 'error', clamp=()) -> list[str]:
    """`num_samples` samples generated in parallel as one batch; see `sample`."""
    prime = drop_unknown(self.vocab, prime, unknown, 'the prime', SKIP_HINT)[0]
    return self._sampler.sample(
        self.params, prime, length, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=secrets.randbelow(2 ** 31) if seed is None else seed, num_samples=num_samples,
        clamp=clamp)

  def logprobs(self, text: str, unknown: str = 'error', clamp=()) -> np.ndarray:
    """log p(character i | characters before it) for every character of `text`, in nats.

    The text is read as if it followed a newline, as a prime is. One value per byte of the
    UTF-8 text for a byte-level model. clamp holds cells, as in `sample`.
    """
    return self._sampler.logprobs(self.params, self._ids(text, unknown), clamp)

  def activations(self, text: str, streams: int = 1, clamp=(), unknown: str = 'error',
                  kinds=None) -> dict:
    """What the network computes on reading `text`, per character (charlm.internals).

    Returns numpy arrays by name: 'layer{L}/{kind}' float32 [N, hidden] for kind h (and for an
    LSTM c, i, f, g, o; for a GRU z, r), 'logprobs' float32 [N, vocab] and 'ids' [N], the
    text's token ids. Row n is the state after reading character n (the text read as if it
    followed a newline); logprobs[n] is the distribution of the character after it. streams > 1
    reads the text in that many parts side by side, faster, each part from the start; clamp
    holds cells ('LAYER:KIND:INDEX=VALUE'), in the slower step-by-step loop; kinds limits what
    is returned (default all). Without a clamp the arrays are read-only, as the network wrote
    them (copy one to change it).
    """
    ids = self._ids(text, unknown)
    out = internals.activations(self.module, self.params, ids, start_token=self.start_token,
                                streams=streams, clamp=clamp, kinds=kinds)
    out['ids'] = ids
    return out

  def ablate(self, text: str, cells, where=None, streams: int = internals.ABLATE_STREAMS,
             unknown: str = 'error') -> list[dict]:
    """The loss of `text` with each of `cells` ('LAYER:KIND:INDEX' or (layer, kind, index)),
    one at a time, replaced by its mean over the text at every step; `where`, a boolean per
    character, picks characters to report the loss of apart. One dict per cell: see
    charlm.internals.ablate."""
    return internals.ablate(self.module, self.params, self._ids(text, unknown), cells,
                            start_token=self.start_token, where=where, streams=streams)

  @property
  def start_token(self) -> int:
    """The token a text is read after: a newline (token 0 if the vocabulary has none)."""
    return self._sampler.start_token

  def _ids(self, text: str, unknown: str) -> np.ndarray:
    return self.vocab.encode(drop_unknown(self.vocab, text, unknown, 'the text', SKIP_HINT)[0])

  def evaluate(self, split: str | None = None, file: str | None = None, batch_size: int = 0,
               unknown: str = 'error', skip_hint: str = SKIP_HINT,
               chunk_bytes: int = FILE_CHUNK_BYTES, max_chars: int = 0) -> dict:
    """Scores a split of the run's corpus (default: test) or a UTF-8 text file.

    Reads the text as training reads its validation split: in `batch_size` contiguous streams
    (default: the run's), seq_len characters at a time, carrying the hidden state; so split
    'val' gives the number training logged (when it evaluated the whole split). Returns chars
    (scored), loss (nats/char), bpc, perplexity, and for a file how many characters it skipped.
    A file is encoded `chunk_bytes` at a time into a temporary token file (in the token cache)
    and read from there a window at a time, so memory does not grow with its size. max_chars
    > 0 scores only the text's first max_chars characters.
    """
    with contextlib.ExitStack() as stack:
      tokens, what, result = self._scored_tokens(split, file, unknown, skip_hint, chunk_bytes,
                                                 max_chars, stack)
      batch = batch_size or self.config.train.batch_size
      if file:  # A short file is read in fewer streams rather than refused.
        batch = min(batch, len(tokens) - 1)
      mesh = jax.tree.leaves(self.params)[0].sharding.mesh
      evaluator = evaluation.Evaluator(self.module, mesh, batch, self.config.train.seq_len)
      scores = evaluator(self.params, tokens, what=what)
    result.update(chars=scores['chars'], loss=scores['loss'], bpc=scores['bpc'],
                  perplexity=math.exp(scores['loss']), batch_size=batch)
    return result

  def evaluate_dynamic(self, split: str | None = None, file: str | None = None,
                       lr: float = dynamic.LR, decay: float = dynamic.DECAY,
                       seq_len: int = dynamic.SEQ_LEN, grad_batches: int = dynamic.GRAD_BATCHES,
                       batch_size: int = 1, unknown: str = 'error', skip_hint: str = SKIP_HINT,
                       chunk_bytes: int = FILE_CHUNK_BYTES, max_chars: int = 0,
                       per_char: bool = False) -> dict:
    """Scores a split or a file as `evaluate` does, with dynamic evaluation (charlm.dynamic):
    each segment of `seq_len` characters is scored, then the weights take a step on its
    gradient (learning rate `lr`, decay toward the trained weights `decay`), normalised by
    the gradients' RMS over `grad_batches` windows of the run's training split. batch_size
    streams are read side by side (1: the text in its own order). Returns what `evaluate`
    returns, the settings, and with per_char the loss of each scored character."""
    for name, value, least in (('seq_len', seq_len, 1), ('grad_batches', grad_batches, 1),
                               ('batch_size', batch_size, 1)):
      if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f'dynamic evaluation {name} is {value!r}; use a whole number >= {least}')
    dynamic.check_rates(lr, decay)
    with contextlib.ExitStack() as stack:
      tokens, what, result = self._scored_tokens(split, file, unknown, skip_hint, chunk_bytes,
                                                 max_chars, stack)
      batch = min(batch_size, len(tokens) - 1)
      ms = dynamic.gradient_rms(self.module, self.params, self.split_tokens('train'), batch,
                                seq_len, grad_batches)
      scores = dynamic.evaluate(self.module, self.params, tokens, ms, lr, decay, seq_len, batch,
                                per_char=per_char, what=what)
    result.update(scores, perplexity=math.exp(scores['loss']), batch_size=batch,
                  dynamic={'lr': lr, 'decay': decay, 'seq_len': seq_len,
                           'grad_batches': grad_batches})
    return result

  def _scored_tokens(self, split, file, unknown, skip_hint, chunk_bytes, max_chars, stack):
    """(tokens, what they are for messages, the result's fields naming them) of a split
    (default test) or a file, cut to max_chars (+1: the first character is only read)."""
    if split and file:
      raise UserError('give a split or a file, not both')
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0:
      raise UserError(f'max_chars is {max_chars!r}; use a whole number >= 0 (0: all)')
    result = {'workdir': self.workdir, 'step': self.step}
    if file:
      tokens, missing, skipped = self._file_tokens(file, unknown, skip_hint, chunk_bytes, stack)
      what = file
      result.update(file=file, skipped=skipped, skipped_chars=missing)
    else:
      split = split or 'test'
      if split not in ('train', 'val', 'test'):
        raise UserError(f'unknown split {split!r}; use train, val or test')
      tokens = self.split_tokens(split)
      what = f'the {split} split'
      result['split'] = split
    if max_chars and len(tokens) > max_chars + 1:
      if isinstance(tokens, _TokenFile):
        tokens.length = max_chars + 1
      else:
        tokens = tokens[:max_chars + 1]
      result['max_chars'] = max_chars
    if len(tokens) < 2:
      raise UserError(f'{what} has {len(tokens)} characters; scoring needs at least 2')
    return tokens, what, result

  def _file_tokens(self, path: str, unknown: str, skip_hint: str, chunk_bytes: int,
                   stack: contextlib.ExitStack):
    """(tokens of the file, unknown characters in order of appearance, how many were dropped).

    The tokens are a _TokenFile: the file itself for a byte-level model, else a temporary file
    written a chunk at a time. Unknown characters are all collected before any is scored.
    """
    try:
      source = stack.enter_context(open(path, 'rb'))
    except OSError as e:
      raise UserError(f'cannot read {path}: {e.strerror}') from None
    if self.vocab.level == 'byte':
      return _TokenFile(source, np.uint8), [], 0
    check_unknown_mode(unknown)
    out = stack.enter_context(self._temporary_file())
    missing, dropped = {}, []  # Unknown characters in order of appearance; counts per chunk.

    def drop(chars, count):
      missing.update(dict.fromkeys(chars))
      dropped.append(count)

    for ids in data_lib.encode_chunks(path, self.vocab, chunk_bytes, on_unknown=drop,
                                      not_utf8_fix=NOT_UTF8_FIX):
      if not (missing and unknown == 'error'):  # An error ahead: writing would be wasted.
        ids.tofile(out)
    missing, dropped = list(missing), sum(dropped)
    if missing and unknown == 'error':
      raise unknown_error(path, missing, dropped, skip_hint)
    out.flush()
    return _TokenFile(out, self.vocab.dtype), missing, dropped

  def _temporary_file(self):
    """An unnamed file in the token cache, which holds corpus-sized token files (the system's
    temporary directory may be in memory), or in the temporary directory if that fails."""
    root = data_lib.default_cache_dir(self.config.data.cache_dir)
    try:
      os.makedirs(root, exist_ok=True)
      return tempfile.TemporaryFile(prefix='.evaluate-', dir=root)
    except OSError:
      return tempfile.TemporaryFile(prefix='charlm-evaluate-')

  def split_tokens(self, split: str) -> np.ndarray:
    """The tokens of a split ('train', 'val', 'test') of the run's corpus, prepared again."""
    data = self.config.data
    if data.path and not os.path.isfile(os.path.expanduser(data.path)):
      raise UserError(f'the run was trained on {data.path}, which is not there from here; run '
                      'from the directory training ran in, or score a file instead')
    corpus = data_lib.prepare(corpora.text_path(data), data.level, data.cache_dir)
    if corpus.vocab != self.vocab:
      raise UserError(f'{corpus.source} no longer has the characters the model was trained on '
                      '(the text changed since training); score a file instead')
    return data_lib.split(corpus.tokens, data.split)[split]


class _TokenFile:
  """Tokens in a file, read where they are asked for: data.Streams indexes them with arrays of
  positions (runs of consecutive ones, one a stream), so memory holds one batch, not the file."""

  def __init__(self, file, dtype):
    self.fd, self.dtype = file.fileno(), np.dtype(dtype)
    self.length = os.fstat(self.fd).st_size // self.dtype.itemsize

  def __len__(self):
    return self.length

  def __getitem__(self, positions) -> np.ndarray:
    positions = np.asarray(positions, np.int64).reshape(-1)
    if not len(positions):
      return np.empty(0, self.dtype)
    step = np.diff(positions)
    starts = np.flatnonzero((step < 0) | (step > 1)) + 1  # Runs that go up by 0 or 1.
    out = np.empty(len(positions), self.dtype)
    size = self.dtype.itemsize
    for a, b in zip(np.r_[0, starts], np.r_[starts, len(positions)], strict=True):
      lo, hi = int(positions[a]), int(positions[b - 1])
      if not 0 <= lo <= hi < self.length:
        raise IndexError(f'token positions {lo}..{hi} outside 0..{self.length - 1}')
      run = np.frombuffer(os.pread(self.fd, (hi - lo + 1) * size, lo * size), self.dtype)
      out[a:b] = run[positions[a:b] - lo]
    return out


def load(workdir: str, step=None) -> Model:
  """Loads a run's checkpoint for sampling and scoring; on a CPU too, whatever trained it.

  `step` is 'latest', 'best', a step number, or None: the best if there is one, else the latest.
  """
  return Model(workdir, step)
