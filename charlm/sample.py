"""Generates text with a trained model.

    python -m charlm.sample --workdir runs/shakespeare_small [--prime "ROMEO:"] [--length 1000]
        [--temperature 0.8] [--top_k K] [--top_p P] [--num_samples N] [--seed S] [--output FILE]
        [--clamp LAYER:KIND:INDEX=VALUE ...]

The config and vocabulary come from the checkpoint: --step latest, best or a step number
(default: the best if there is one, else the latest). One sample streams to the terminal as it
is generated; several are generated in parallel as one batch and printed one after another.
Each --clamp holds one cell of the network at a value at every step (charlm.clamp), e.g.
--clamp 1:c:42=0.9 holds cell 42 of layer 1's cell state.
"""
import secrets
import sys

from absl import flags

from charlm import cli
from charlm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to sample from.')
_STEP = flags.DEFINE_string('step', None, 'latest, best or a step number (default: the best '
                            'checkpoint if there is one, else the latest).')
_LENGTH = flags.DEFINE_integer('length', 1000, 'Characters to generate, not counting the prime '
                               '(bytes for a byte-level model).')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Lower is more conservative, higher more '
                                  'surprising; 0 always takes the most likely character.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample only from the k most likely characters '
                              '(0: all).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Sample only from the fewest most likely characters '
                            'whose probability reaches p (1: all).')
_PRIME = flags.DEFINE_string('prime', '', 'Text the sample continues, read as if it followed a '
                             'newline (default: none, the start of a line).')
_PRIME_FILE = flags.DEFINE_string('prime_file', None, 'A UTF-8 file with the prime text.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Samples, generated in parallel.')
_SEED = flags.DEFINE_integer('seed', None, 'The same seed gives the same text (default: a '
                             'random seed, printed on stderr).')
_OUTPUT = flags.DEFINE_string('output', None, 'Write to this file instead of stdout.')
_UNKNOWN = flags.DEFINE_enum('unknown', 'error', ['error', 'skip'], 'Prime characters outside '
                             "the model's vocabulary: an error, or skip them with a warning.")
_CLAMP = flags.DEFINE_multi_string('clamp', [], 'LAYER:KIND:INDEX=VALUE: hold that cell (kind h, '
                                   'or c for an LSTM) at VALUE while generating; repeatable.')
flags.mark_flags_as_required(['workdir'])


def read_prime() -> str:
  if _PRIME_FILE.value is None:
    return _PRIME.value
  if _PRIME.value:
    raise UserError('give --prime or --prime_file, not both')
  try:
    with open(_PRIME_FILE.value, encoding='utf-8') as f:
      return f.read()
  except FileNotFoundError:
    raise UserError(f'prime file not found: {_PRIME_FILE.value}') from None
  except IsADirectoryError:
    raise UserError(f'--prime_file {_PRIME_FILE.value} is a directory; give a UTF-8 text '
                    'file') from None
  except OSError as e:
    raise UserError(f'cannot read --prime_file {_PRIME_FILE.value}: {e.strerror}') from None
  except UnicodeDecodeError:
    raise UserError(f'prime file {_PRIME_FILE.value} is not UTF-8 text') from None


def main(argv):
  del argv
  from charlm import clamp, data, inference, sampling  # Imports JAX; keep flag errors fast.
  prime = read_prime()
  sampling.check_options(_LENGTH.value, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value,
                         _NUM_SAMPLES.value)
  _, vocab, model, params, _ = inference.load_checkpoint(_WORKDIR.value, _STEP.value)
  clamps = clamp.check(_CLAMP.value, model)
  prime, missing, dropped = sampling.drop_unknown(vocab, prime, _UNKNOWN.value)
  if dropped:
    print(f'warning: dropped {dropped} characters outside the vocabulary from the prime: '
          f'{data.show_chars(missing)}', file=sys.stderr, flush=True)
  seed = _SEED.value
  if seed is None:
    seed = secrets.randbelow(2 ** 31)
    print(f'seed {seed} (--seed {seed} gives this text again)', file=sys.stderr, flush=True)
  sampler = sampling.Sampler(model, vocab)
  options = dict(temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
                 seed=seed, num_samples=_NUM_SAMPLES.value, clamp=clamps)
  out = sys.stdout
  if _OUTPUT.value:
    try:
      out = open(_OUTPUT.value, 'w', encoding='utf-8')
    except OSError as e:
      raise UserError(f'cannot write --output {_OUTPUT.value}: {e.strerror}') from None
  try:
    if _NUM_SAMPLES.value == 1:
      out.write(prime)
      for pieces in sampler.stream_text(params, prime, _LENGTH.value, **options):
        out.write(pieces[0])
        out.flush()
      out.write('\n')
    else:
      texts = sampler.sample(params, prime, _LENGTH.value, **options)
      for i, text in enumerate(texts):
        out.write(f'--- sample {i + 1} of {len(texts)} ---\n{text}\n')
  finally:
    if out is not sys.stdout:
      out.close()
  if _OUTPUT.value:
    print(f'wrote {_NUM_SAMPLES.value} sample(s) to {_OUTPUT.value}', file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
