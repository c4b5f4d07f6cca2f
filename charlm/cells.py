"""Interpretable cells: which units of a trained network track a property of the text.

The cell hunt of Karpathy's "The Unreasonable Effectiveness of Recurrent Neural Networks" and
of Karpathy, Johnson and Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks",
made quantitative: labels computed from the text (inside quotes, nesting depth, the column,
...), every cell scored out of sample against every label, two controls that say what chance
looks like, a sparse probe that says how few cells carry a label, and the max-activating
contexts, histograms and gate saturation of what it reports.
"""
import dataclasses
import functools
import re
import types
from collections.abc import Mapping, Sequence

import numpy as np

BINARY, SCALAR = 'binary', 'scalar'


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
