"""The interpretable-cell finder: labels on hand-made strings, scores against brute force and
planted cells, the controls, the sparse probe, snippets, histograms, saturation, find_cells."""
import random

import pytest

from charlm import cells

WORDS = 'the of and to a in that is was he for it with as his on be at by thou art love'.split()


def bits(mask) -> str:
  return ''.join('1' if v else '0' for v in mask)


def prose(chars: int, seed: int = 0) -> str:
  """Words with quoted and parenthesised stretches and line breaks."""
  rng = random.Random(seed)
  parts = []
  while sum(map(len, parts)) < chars:
    phrase = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    parts.append(rng.choice([f'"{phrase}" ', f'({phrase}) ', phrase + ' ', phrase + '.\n']))
  return ''.join(parts)[:chars]


# Labels.

def test_nesting_depth_is_never_negative_on_unbalanced_text():
  assert cells.paren_depth('))(a(b)))(').tolist() == [0, 0, 1, 1, 2, 2, 1, 0, 0, 1]
  assert bits(cells.in_parens('))(a(b)))(')) == '0011111001'
  assert cells.bracket_depth('][[]x]]').tolist() == [0, 1, 2, 1, 1, 0, 0]
  assert cells.brace_depth('}{ {}').tolist() == [0, 1, 1, 2, 1]
  assert bits(cells.in_braces('a{b}c')) == '01100'
  assert bits(cells.in_brackets('[(])')) == '1100'  # Each kind counts on its own.


def test_column_counts_the_characters_of_the_line_so_far():
  assert cells.column('ab\ncde\n\nf').tolist() == [1, 2, 0, 1, 2, 3, 0, 0, 1]
  assert cells.column('').tolist() == []


def test_quotes_toggle_unless_escaped():
  # a " b \" c " d \\ " e " f: the escaped quote toggles nothing; the quote after \\ (an
  # escaped backslash) does.
  assert bits(cells.in_quotes('a"b\\"c"d\\\\"e"f')) == '01111100001100'
  assert bits(cells.in_quotes('"\\\\\\""x')) == '1111100'  # \\\" is \\ then \", still inside.


def test_comments_block_and_line_outside_strings():
  text = 'a/*b*/c//d\ne"/*"f/**/g'
  assert bits(cells.in_comment(text)) == '0011100011' '0' '00000' '0' '0110' '0'
  assert not cells.in_comment('x = "/* no */"; y').any()
  assert bits(cells.in_comment('c = \'"\'; /*k*/')) == '000000000' '01110'  # '"' opens no string.
  assert bits(cells.in_comment('/*/ still */x')) == '0111111111100'  # /*/ does not close.
  assert bits(cells.in_comment('a /* open')) == '000111111'  # Unclosed: to the end.
  assert bits(cells.in_comment('"/* ab\nx/*y*/')) == '0000000' '001110'  # A string ends at \n.


def test_wiki_links_need_double_brackets():
  assert bits(cells.in_link('a[x]b[[cd]]e')) == '0000' '0' '011110' '0'
  assert bits(cells.in_link('[[f\ng')) == '01100'  # Unclosed: to the end of the line.
  assert not cells.in_link('[x] [y]').any()


def test_indent_of_the_current_line():
  text = 'a\n  b c\n\t x\n \tyy\n'
  assert cells.indent(text).tolist() == [0, 0, 1, 2, 2, 2, 2, 0, 4, 5, 5, 0, 1, 4, 4, 4, 0]
  assert cells.indent('\tx\n', tab_width=8).tolist() == [8, 8, 0]
  assert cells.indent('x  y').tolist() == [0, 0, 0, 0]  # Only leading whitespace counts.


def test_word_end_marks_the_last_letter():
  assert bits(cells.word_end("don't x2 ab_c é")) == '001010100010101'


def test_probe_marks_characters_inside_matches():
  assert bits(cells.probe('foo bar foobar', 'foo|bar')) == '11101110111111'
  assert not cells.probe('abc', 'x*').any()  # Empty matches cover nothing.


def test_text_labels_kinds_and_probes():
  labels = cells.text_labels('"a" (b)\n', probes={'bees': 'b+'})
  assert set(cells.LABELS) < set(labels)
  assert labels['in_quotes'].kind == cells.BINARY and labels['column'].kind == cells.SCALAR
  assert labels['bees'].kind == cells.BINARY and bits(labels['bees'].values) == '00000100'
  assert bits(cells.text_labels('ab', probes=['b'])['b'].values) == '01'
  with pytest.raises(ValueError, match='exists'):
    cells.text_labels('x', probes={'column': 'x'})
