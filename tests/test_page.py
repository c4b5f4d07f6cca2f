"""The page (charlm.page): what render stores, and the page in headless Chromium via Playwright.

The browser tests skip, saying why, where Playwright or /usr/bin/chromium is missing, except
under CI (CI set), which installs both (.ci/run) and fails instead. CHARLM_SCREENSHOT=PATH
saves a screenshot of the page with a character hovered.
"""
import base64
import json
import math
import os
import re

import numpy as np
import pytest

from charlm import page

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
GLYPHS = {'\n': '\u21b5', '\t': '\u21e5'}

TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\n'
        'All:\n"Speak, speak." </script><b>& \'so\'</b>\n\n'
        'MENENIUS:\n\tWhy, masters, my good friends, mine honest neighbours,\n'
        'Will you undo yourselves? "Nay," quoth he, "we know\'t."\n\n'
        'SECOND CITIZEN:\nWe cannot, sir, we are undone already.\n')


def quotes(text):
  """1 inside double quotes (the quote marks included), else 0."""
  inside, out = False, []
  for ch in text:
    if ch == '"':
      inside = not inside
      out.append(1)
    else:
      out.append(int(inside))
  return np.array(out, float)


def make_data(text=TEXT, seed=0):
  """Synthetic page data: 4 cells, top-5 guesses, 2 found cells, saturation for 2 layers."""
  rng = np.random.default_rng(seed)
  n = len(text)
  line_pos = np.array([len(text[:t + 1].rsplit('\n', 1)[-1]) for t in range(n)], float)
  cells = [{'layer': 0, 'kind': 'h', 'index': 3, 'values': np.tanh(rng.normal(size=n))},
           {'layer': 0, 'kind': 'c', 'index': 7, 'values': line_pos / 10 - 2},
           {'layer': 1, 'kind': 'h', 'index': 1,
            'values': 0.9 * (2 * quotes(text) - 1) + 0.05 * rng.normal(size=n)},
           {'layer': 1, 'kind': 'f', 'index': 2, 'values': rng.uniform(size=n)}]
  vocab = sorted(set(text))
  chars, probs, true_prob = [], [], []
  for t in range(n):
    p = rng.dirichlet(np.full(len(vocab), 0.3))
    top = np.argsort(-p)[:5]
    chars.append([vocab[i] for i in top])
    probs.append(p[top].tolist())
    true_prob.append(float(p[vocab.index(text[t + 1])]) if t + 1 < n else None)
  at = text.index('"Speak')
  found = [{'label': 'inside quotes', 'layer': 1, 'kind': 'h', 'index': 1, 'score': 0.91,
            'control': 0.12, 'snippets': [{'text': text[at:at + 15], 'at': at}],
            'histogram': {'edges': np.linspace(-1, 1, 11), 'counts': rng.integers(0, 50, 10)}},
           {'label': 'position in line', 'layer': 0, 'kind': 'c', 'index': 7, 'score': 0.8,
            'control': 0.2, 'snippets': [{'text': 'MENENIUS:', 'at': text.index('MENENIUS')}],
            'histogram': {'edges': [-2, -1, 0, 1, 2], 'counts': [3, 9, 4, 1]}}]
  saturation = {f'layer{layer}': {g: {'left': rng.uniform(0, 0.5, 6).tolist(),
                                      'right': rng.uniform(0, 0.5, 6).tolist()}
                                  for g in 'ifo'}
                for layer in (0, 1)}
  return {'title': 'A "synthetic" <page>', 'text': text, 'cells': cells,
          'predictions': {'chars': chars, 'probs': probs, 'true_prob': true_prob},
          'found': found, 'headline': {'share': 0.3, 'control_share': 0.05, 'margin': 0.1,
                                       'cells': 512},
          'saturation': saturation}


def embedded(html):
  """The JSON render embedded in the page."""
  match = re.search(r'<script type="application/json" id="charlm-data">(.*?)</script>', html, re.S)
  return json.loads(match.group(1))


# --- render, without a browser ---

def test_render_embeds_everything_in_one_ascii_file():
  html = page.render(make_data())
  assert html.isascii()
  assert not re.search(r'<(link|img|iframe)\b|\bsrc=|https?://(?!www\.w3\.org/2000/svg)', html)
  assert html.count('</script>') == 2  # the text's own '</script>' is escaped
  stored = embedded(html)
  assert stored['text'] == TEXT
  assert '<title>A &quot;synthetic&quot; &lt;page&gt;</title>' in html


def test_render_stores_series_as_shown_values():
  data = make_data()
  stored = {(c['layer'], c['kind']): np.frombuffer(base64.b64decode(c['q']), np.int8) / 127
            for c in embedded(page.render(data))['cells']}
  want = {(0, 'h'): data['cells'][0]['values'], (0, 'c'): np.tanh(data['cells'][1]['values']),
          (1, 'f'): 2 * data['cells'][3]['values'] - 1}
  for k, values in want.items():
    np.testing.assert_allclose(stored[k], values, atol=0.5 / 127 + 1e-9)


def test_render_bounds_the_page_size():
  rng = np.random.default_rng(1)
  n, vocab = 20_000, [chr(c) for c in range(32, 127)] + ['\n']
  text = ''.join(rng.choice(vocab, n))
  probs = np.sort(rng.dirichlet(np.ones(5), n), axis=1)[:, ::-1]
  data = {'text': text,
          'cells': [{'layer': j % 3, 'kind': 'hcf'[j % 3], 'index': j,
                     'values': rng.normal(size=n)} for j in range(60)],
          'predictions': {'chars': rng.choice(vocab, (n, 5)).tolist(), 'probs': probs,
                          'true_prob': rng.uniform(size=n).tolist()[:-1] + [None]}}
  size = len(page.render(data))
  assert size < 3_000_000, size


@pytest.mark.parametrize('change,message', [
    (lambda d: d['cells'][0].update(values=d['cells'][0]['values'][:-1]), 'values for'),
    (lambda d: d['cells'][0].update(kind='x'), 'kind must be'),
    (lambda d: d['cells'][0]['values'].__setitem__(0, np.nan), 'not finite'),
    (lambda d: d['predictions']['true_prob'].pop(), 'one row per character'),
    (lambda d: d['predictions']['chars'][3].pop(), 'guesses at every'),
    (lambda d: d['saturation']['layer0']['i']['left'].pop(), 'differ in length'),
    (lambda d: d.update(saturation={'zero': {}}), 'layerN'),
])
def test_render_refuses_malformed_data(change, message):
  data = make_data()
  change(data)
  with pytest.raises(ValueError, match=message):
    page.render(data)


# --- the page in a browser ---

@pytest.fixture(scope='module')
def browser():
  why = None
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    why = "Playwright for Python is not installed (pip install -e '.[dev]')"
  if why is None and not os.access(CHROMIUM, os.X_OK):
    why = f'no browser at {CHROMIUM} (apt-get install chromium)'
  if why:
    if os.environ.get('CI'):
      pytest.fail(f'{why}; .ci/run should have installed it')
    pytest.skip(why)
  with sync_playwright() as p:
    chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


class Opened:
  """A page open in a fresh context, with what it logged and requested."""

  def __init__(self, browser, path):
    self.context = browser.new_context(viewport={'width': 1280, 'height': 820})
    self.page = self.context.new_page()
    self.errors, self.requests = [], []
    self.page.on('console', lambda m: self.errors.append(m.text) if m.type == 'error' else None)
    self.page.on('pageerror', lambda e: self.errors.append(str(e)))
    self.context.on('request', lambda r: self.requests.append(r.url))
    self.url = path.as_uri()
    self.page.goto(self.url)
    self.page.wait_for_selector('body[data-ready]', timeout=5000)

  def colours(self):
    return self.page.eval_on_selector_all('#text .ch', 'es => es.map(e => e.style.backgroundColor)')

  def assert_clean(self):
    assert self.errors == []
    assert self.requests == [self.url]


@pytest.fixture(scope='module')
def page_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('page') / 'page.html'
  path.write_text(page.render(make_data()), encoding='ascii')
  return path


@pytest.fixture
def opened(browser, page_path):
  o = Opened(browser, page_path)
  yield o
  o.context.close()


def rgb(css):
  return tuple(int(v) for v in re.findall(r'\d+', css))


def test_page_shows_one_cell_per_character(opened):
  shown = opened.page.eval_on_selector_all('#text .ch', 'es => es.map(e => e.textContent)')
  assert shown == [GLYPHS.get(ch, ch) for ch in TEXT]
  assert opened.page.locator('#text .line').count() == TEXT.count('\n') + 1
  assert opened.page.title() == 'A "synthetic" <page>'
  assert '30.0%' in opened.page.inner_text('#headline')
  opened.assert_clean()


def test_page_colours_by_the_chosen_cell(opened):
  p = opened.page
  first = opened.colours()
  assert len(set(first)) > 20 and 'layer 0' in p.inner_text('#shown')
  p.keyboard.press('n')  # layer 0 has one h cell: n wraps to it; q changes the quantity
  assert opened.colours() == first
  p.keyboard.press('q')
  second = opened.colours()
  assert second != first and 'tanh(c)' in p.inner_text('#shown')
  p.locator('.found-item', has_text='inside quotes').click()
  third = opened.colours()
  assert 'inside quotes' in p.inner_text('#shown') and 'layer 1' in p.inner_text('#shown')
  quoted = quotes(TEXT)
  inside = rgb(third[int(np.argmax(quoted))])
  outside = rgb(third[int(np.argmin(quoted))])
  assert inside[1] > inside[2] and outside[2] > outside[1]  # +1 green, -1 blue
  assert p.locator('#found-detail .snippet').count() == 1
  assert p.locator('#found-detail svg.histogram rect').count() == 10
  p.keyboard.press('L')
  assert opened.colours() != third and 'layer 0' in p.inner_text('#shown')
  opened.assert_clean()


def test_hover_shows_guesses_and_surprisal(opened):
  data, p, t = make_data(), opened.page, TEXT.index('"Speak') + 2
  p.keyboard.press('f')  # the first discovered cell
  assert 'inside quotes' in p.inner_text('#shown')
  p.locator('#text .ch').nth(t).hover()
  assert p.inner_text('#guesses .g-head >> nth=1').startswith('h = +0.')
  rows = p.locator('#guesses .guess')
  assert p.locator('#guesses').is_visible() and rows.count() == 5
  got = [float(v) for v in rows.evaluate_all('rs => rs.map(r => r.dataset.p)')]
  assert got == sorted(got, reverse=True)
  np.testing.assert_allclose(got, data['predictions']['probs'][t], atol=1e-4)
  assert rows.evaluate_all('rs => rs.map(r => r.dataset.ch)') == data['predictions']['chars'][t]
  bits = -math.log2(data['predictions']['true_prob'][t])
  assert p.inner_text('#guess-true .bits') == f'{bits:.2f}'
  if os.environ.get('CHARLM_SCREENSHOT'):
    p.screenshot(path=os.environ['CHARLM_SCREENSHOT'])
  p.focus('#text')
  p.keyboard.press('End')
  assert p.get_attribute('#guesses', 'data-i') == str(len(TEXT) - 1)
  assert 'nothing follows' in p.inner_text('#guess-true')
  opened.assert_clean()


def test_saturation_has_one_point_per_gate_unit(opened):
  plots = opened.page.locator('svg.saturation')
  assert plots.count() == 2
  for layer in range(2):
    points = opened.page.locator(f'svg.saturation[data-layer="{layer}"] circle.sat-point')
    assert points.count() == 3 * 6
  opened.assert_clean()


def test_page_without_optional_data(browser, tmp_path):
  path = tmp_path / 'bare.html'
  path.write_text(page.render({'text': 'ab\n\u00e9\U0001f600 c'}), encoding='ascii')
  o = Opened(browser, path)
  try:
    assert o.page.locator('#text .ch').count() == 7
    o.page.locator('#text .ch').nth(0).hover()
    assert 'no predictions' in o.page.inner_text('#guesses')
    o.page.keyboard.press('n')
    assert 'No gate statistics' in o.page.inner_text('#saturation')
    o.assert_clean()
  finally:
    o.context.close()
