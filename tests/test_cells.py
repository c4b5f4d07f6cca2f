"""The interpretable-cell finder: labels on hand-made strings, scores against brute force and
planted cells, the controls, the sparse probe, snippets, histograms, saturation, find_cells."""
import json
import random

import numpy as np
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


# Scores.

def brute_force_auroc(values, positive):
  pos, neg = values[positive], values[~positive]
  greater = (pos[:, None] > neg[None, :]).sum(axis=(0, 1))
  equal = (pos[:, None] == neg[None, :]).sum(axis=(0, 1))
  return (greater + 0.5 * equal) / (len(pos) * len(neg))


@pytest.mark.parametrize('n', [2, 7, 60, 301])
def test_auroc_matches_the_pairwise_count_with_ties(n):
  rng = np.random.default_rng(n)
  values = rng.standard_normal((n, 6)).astype(np.float32)
  values[:, 1] = np.round(values[:, 1])  # Many ties.
  values[:, 2] = 1.0  # All tied.
  values[: n // 2, 3] = -0.0  # -0.0 and 0.0 are equal.
  values[n // 2:, 3] = 0.0
  positive = rng.random(n) < 0.4
  positive[:2] = True, False
  np.testing.assert_allclose(cells.auroc(values, positive), brute_force_auroc(values, positive),
                             atol=1e-12)
  assert cells.auroc(values[:, 2], positive) == 0.5


@pytest.mark.parametrize('decimals', [None, 0, 1])
def test_average_ranks_match_brute_force(decimals):
  rng = np.random.default_rng(0)
  values = rng.standard_normal((5, 200)).astype(np.float32)
  if decimals is not None:
    values = np.round(values, decimals)
  less = (values[:, None, :] < values[:, :, None]).sum(axis=2)
  equal = (values[:, None, :] == values[:, :, None]).sum(axis=2)
  np.testing.assert_array_equal(cells.average_ranks(values), less + (equal + 1) / 2)


def quote_text_and_cells(chars=6000, seed=0):
  """A text, its in_quotes label, and activations where layer0/h unit 5 is the label plus
  noise, unit 6 minus the label plus noise, and everything else noise."""
  text = prose(chars, seed)
  label = cells.in_quotes(text)
  rng = np.random.default_rng(seed)
  h = rng.standard_normal((chars, 12)).astype(np.float32)
  h[:, 5] = label + 0.3 * h[:, 5]
  h[:, 6] = 0.3 * h[:, 6] - label
  activations = {'layer0/h': h, 'layer1/c': rng.standard_normal((chars, 12)).astype(np.float32)}
  return text, cells.Label('in_quotes', cells.BINARY, label), activations


def test_a_cell_that_is_the_label_plus_noise_ranks_first():
  text, label, activations = quote_text_and_cells()
  scores = cells.score_cells(activations, [label], len(text) // 2, chunk=5, threads=2)
  assert cells.cell_table(activations)[5] == (0, 'h', 5)
  held_out = scores.held_out[:, 0]
  assert held_out[5] > 0.97 and held_out[6] > 0.97
  assert (scores.sign[5, 0], scores.sign[6, 0]) == (1, -1)
  noise = np.delete(held_out, [5, 6])
  assert np.all(np.abs(noise - 0.5) < 0.06)
  one_thread = cells.score_cells(activations, [label], len(text) // 2, threads=1)
  np.testing.assert_allclose(one_thread.held_out, scores.held_out, atol=1e-6)


def test_shuffled_labels_score_near_chance():
  text, label, activations = quote_text_and_cells()
  split, rng = len(text) // 2, np.random.default_rng(0)
  shuffled = [cells.Label('in_quotes', cells.BINARY, np.concatenate([
      cells.block_shuffle(label.values[:split], 100, rng),
      cells.block_shuffle(label.values[split:], 100, rng)])) for _ in range(3)]
  scores = cells.score_cells(activations, shuffled, split)
  assert scores.held_out.max() < 0.6


def test_direction_is_fitted_on_the_first_half():
  n = 4000
  label = cells.Label('flag', cells.BINARY, np.arange(n) % 50 < 10)
  flips = np.where(np.arange(n) < n // 2, 1.0, -1.0)  # Rises with the label, then falls.
  values = (label.values * flips + 0.1 * np.random.default_rng(0).standard_normal(n))
  scores = cells.score_cells({'layer0/h': values[:, None].astype(np.float32)}, [label], n // 2)
  assert scores.fitted[0, 0] > 0.95 and scores.held_out[0, 0] < 0.05


def test_correlation_scores_a_cell_tracking_the_column():
  text = prose(5000, seed=1)
  column = cells.Label('column', cells.SCALAR, cells.column(text))
  rng = np.random.default_rng(1)
  h = rng.standard_normal((len(text), 3)).astype(np.float32)
  h[:, 0] = column.values / 20 + 0.2 * h[:, 0]
  h[:, 1] = -column.values / 20 + 0.2 * h[:, 1]
  h[:, 2] = 0.5  # Constant: r is 0, not an error.
  scores = cells.score_cells({'layer0/h': h}, [column], len(text) // 2)
  assert scores.held_out[0, 0] > 0.9 and scores.held_out[1, 0] > 0.9
  assert scores.sign[:2, 0].tolist() == [1, -1]
  assert scores.held_out[2, 0] == 0


def test_block_shuffle_moves_whole_blocks():
  values = np.arange(1050)
  shuffled = cells.block_shuffle(values, 100, np.random.default_rng(0))
  assert sorted(shuffled) == values.tolist() and not np.array_equal(shuffled, values)
  where = np.argsort(shuffled)  # The position each value went to.
  for block in np.split(where, range(100, 1050, 100)):
    assert np.all(np.diff(block) == 1)


def test_constant_halves_are_reported():
  label = cells.Label('x', cells.BINARY, np.array([0, 0, 1, 0, 1], bool))
  assert cells.constant_half(label, 2) == 'constant on the first half'
  assert cells.constant_half(label, 3) is None
  assert cells.constant_half(label, 4) == 'constant on the second half'


# The sparse probe.

def test_sparse_probe_finds_the_two_cells_that_carry_a_label():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8000, 40)).astype(np.float32)
  x[:, 5] = x[:, 3] + 0.05 * x[:, 5]  # A near copy of cell 3: it adds nothing to it.
  y = (x[:, 3] + x[:, 17] > 0)[:, None]
  constant = np.zeros_like(y)
  result, nothing = cells.sparse_probe(x[:4000], np.hstack([y[:4000], constant[:4000]]),
                                       x[4000:], np.hstack([y[4000:], constant[4000:]]))
  assert nothing is None
  assert result['sizes'] == [1, 2, 4, 8, 16, 32, 40]
  first_two = set(result['order'][:2])  # 17 and one of 3 and its copy, not both copies.
  assert 17 in first_two and len(first_two & {3, 5}) == 1
  accuracy = dict(zip(result['sizes'], result['accuracy'], strict=True))
  assert accuracy[1] < 0.85 and accuracy[2] > 0.97 and accuracy[40] > 0.95
  assert result['cells_needed'] == 2 and result['majority'] == pytest.approx(0.5, abs=0.05)


def test_gradient_fits_of_large_sets_agree_with_newton():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((6000, 24)).astype(np.float32)
  x[:, 10:] += x[:, :14]  # Correlated cells, as in a network.
  y = np.stack([x[:, 0] - x[:, 12] + 0.5 * rng.standard_normal(6000) > 0,
                x[:, 4] > 1], axis=1)
  newton = cells.sparse_probe(x[:3000], y[:3000], x[3000:], y[3000:], newton_max=24)
  gradient = cells.sparse_probe(x[:3000], y[:3000], x[3000:], y[3000:], newton_max=2)
  for by_newton, by_gradient in zip(newton, gradient, strict=True):
    assert by_gradient['order'] == by_newton['order']  # Same fits, so the same cells join.
    np.testing.assert_allclose(by_gradient['accuracy'], by_newton['accuracy'], atol=0.01)


def test_probe_sizes():
  assert cells.probe_sizes(1) == [1]
  assert cells.probe_sizes(4) == [1, 2, 4]
  assert cells.probe_sizes(3072)[-3:] == [1024, 2048, 3072]


# Snippets, histograms, saturation.

def test_snippets_are_the_peaks_in_windows():
  text = ''.join(chr(ord('a') + i % 26) for i in range(500))
  values = np.zeros(500, np.float32)
  values[[2, 100, 101, 300, 498]] = [5, 4, 3.5, 2, 1]
  found = cells.snippets(text, values, count=4, width=40)
  assert [s['position'] for s in found] == [2, 100, 300, 498]  # 101 is too near 100.
  for snippet in found:
    assert len(snippet['text']) == 40 == len(snippet['activations'])
    assert snippet['text'][snippet['offset']] == text[snippet['position']]
    assert snippet['activations'][snippet['offset']] == snippet['activation']
  assert found[0]['offset'] == 2 and found[1]['offset'] == 30 and found[3]['offset'] == 38
  assert cells.snippets(text, -values, count=1, sign=-1)[0]['position'] == 2


def test_histograms_cover_the_range_of_each_kind():
  values = np.linspace(0, 1, 101, dtype=np.float32)
  gate = cells.histogram(values, 'f', bins=30)
  assert len(gate['counts']) == 30 and len(gate['edges']) == 31
  assert (gate['edges'][0], gate['edges'][-1]) == (0, 1) and sum(gate['counts']) == 101
  assert cells.histogram(values, 'h')['edges'][0] == -1
  cell = cells.histogram(values * 7 - 2, 'c', bins=10)
  assert (cell['edges'][0], cell['edges'][-1]) == (-2, 5) and sum(cell['counts']) == 101
  assert sum(cells.histogram(np.ones(3), 'c')['counts']) == 3


def test_gate_saturation_fractions():
  gates = np.array([[0.05, 0.95, 0.5], [0.05, 0.5, 0.0], [0.05, 0.95, 1.0], [0.05, 0.5, 0.5]])
  found = cells.saturation({'layer1/f': gates, 'layer1/c': gates, 'layer0/z': gates[:, :1]})
  assert [(s['layer'], s['kind']) for s in found] == [(1, 'f'), (0, 'z')]
  assert found[0]['below'] == [1, 0, 0.25] and found[0]['above'] == [0, 0.5, 0.25]


# Everything together.

def lstm_like(text, seed, planted=None):
  rng = np.random.default_rng(seed)
  activations = {}
  for kind in 'hcifgo':
    values = rng.standard_normal((len(text), 8)).astype(np.float32)
    if kind in 'ifo':
      values = 1 / (1 + np.exp(-values))
    activations[f'layer0/{kind}'] = values
  if planted is not None:
    activations['layer0/c'][:, 2] = planted + 0.3 * activations['layer0/c'][:, 2]
  return activations


def test_find_cells_reports_the_planted_cell():
  text = prose(4000, seed=2)
  activations = lstm_like(text, 0, planted=cells.in_quotes(text))
  result = cells.find_cells(text, activations, lstm_like(text, 1), probes={'love': 'love'},
                            top=3, shuffles=2, block=50, snippet_count=4)
  json.dumps(result, allow_nan=False)
  assert result['cells'] == 48 and result['split'] == 2000
  assert {'in_comment', 'in_link', 'in_braces', 'brace_depth'} <= set(result['skipped'])
  quotes = result['labels']['in_quotes']
  best = quotes['top'][0]
  assert (best['cell'], best['sign'], best['beats_control']) == ('layer0/c/2', 1, True)
  assert best['score'] > 0.95 and quotes['control']['threshold'] < 0.65
  assert quotes['probe']['cells'][0] == 'layer0/c/2' and quotes['probe']['best'] > 0.95
  assert result['interpretable'][0] == {'cell': 'layer0/c/2', 'label': 'in_quotes',
                                        'score': best['score'],
                                        'threshold': quotes['control']['threshold']}
  headline = result['headline']
  assert headline['interpretable'] == len(result['interpretable']) >= 1
  assert headline['share'] == round(headline['interpretable'] / 48, 4)
  assert headline['by_kind']['c']['interpretable'] >= 1 and headline['by_kind']['c']['cells'] == 8
  assert result['labels']['love']['type'] == 'binary'
  assert result['labels']['column']['score'] == 'pearson'
  reported = result['reported']['layer0/c/2']
  assert len(reported['histogram']['counts']) == 30
  in_quotes = cells.in_quotes(text)
  assert all(in_quotes[s['position']] for s in reported['snippets']['high'])
  assert [s['kind'] for s in result['saturation']] == ['i', 'f', 'o']


def test_a_control_that_does_as_well_leaves_nothing_interpretable():
  text = prose(3000, seed=3)
  activations = lstm_like(text, 0, planted=cells.in_quotes(text))
  result = cells.find_cells(text, activations, activations, shuffles=1, block=50)
  assert result['headline']['interpretable'] == 0 and result['interpretable'] == []
  quotes = result['labels']['in_quotes']
  assert quotes['control']['random_model'] == quotes['top'][0]['score']


def test_a_text_too_short_to_score_skips_every_label():
  result = cells.find_cells('ab', lstm_like('ab', 0), None)
  assert set(result['skipped']) == set(cells.LABELS) and result['labels'] == {}
  assert result['headline']['interpretable'] == 0 and result['headline']['cells'] == 48


def test_find_cells_checks_its_arguments():
  with pytest.raises(ValueError, match='expected'):
    cells.find_cells('abc', {'layer0/h': np.zeros((2, 4))}, None)
  with pytest.raises(ValueError, match='layer'):
    cells.find_cells('abc', {'h': np.zeros((3, 4))}, None)
  with pytest.raises(ValueError, match='control'):
    cells.find_cells('abc', {'layer0/h': np.zeros((3, 4))}, None, shuffles=0)
