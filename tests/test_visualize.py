"""charlm.visualize: the cell finder on a network wired by hand, and the command end to end,
its page opened in headless Chromium."""
import json
import re

import numpy as np
import pytest
from conftest import run_cli, smoke_config, write_text
from test_internals import QUOTES, quote_counter
from test_page import Opened, browser  # noqa: F401 (a fixture)

from charlm import cells, inspection, internals, trainer


def balanced_quotes(lines=300, seed=0):
  """Words of a and b inside and outside double quotes alike, so that only the quotes' state,
  not the letters, says where a character is."""
  rng = np.random.default_rng(seed)
  word = lambda: ''.join(rng.choice(list('ab'), rng.integers(1, 6)))
  words = lambda: ' '.join(word() for _ in range(rng.integers(1, 5)))
  return ''.join(f'{words()} "{words()}" {words()}\n' for _ in range(lines))


def test_the_finder_ranks_a_hand_wired_quote_cell_first():
  """Cell 0 of the hand-wired LSTM holds c = +1 inside quotes: the finder ranks it first for
  in_quotes with AUROC near 1; a randomly initialised model of the same shape scores near
  chance, and so do the shuffled labels."""
  model, params = quote_counter()
  text = balanced_quotes()
  ids = QUOTES.encode(text)
  start = QUOTES.encode('\n')[0]
  states = lambda p: {k: v for k, v in internals.activations(
      model, p, ids, start_token=start).items() if k != 'logprobs'}
  found = cells.find_cells(text, states(params), states(inspection.random_params(model, 1)),
                           block=50)
  quotes = found['labels']['in_quotes']
  assert quotes['top'][0]['index'] == 0 and quotes['top'][0]['kind'] in ('c', 'h')
  assert quotes['top'][0]['score'] > 0.99
  assert quotes['control']['random_model'] < 0.65 and quotes['control']['shuffled'] < 0.55
  assert any(c['cell'] in ('layer0/c/0', 'layer0/h/0') for c in found['interpretable'])


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('visualize')
  text = tmp / 'text.txt'
  with open(text, 'w') as f:  # Quotes and brackets, so that those labels are not constant.
    f.write(open(write_text(tmp / 'words.txt', lines=600)).read().replace(' the ', ' "the" ')
            .replace(' of ', ' (of) '))
  workdir = tmp / 'run'
  trainer.train_and_evaluate(smoke_config(tmp, str(text), data__split=(0.5, 0.5, 0.0)),
                             str(workdir))
  return workdir


@pytest.mark.parametrize('cell', ['gru', 'rnn'])
def test_visualize_runs_gru_and_rnn_models(cell, tmp_path):
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(smoke_config(tmp_path, model__cell=cell, train__steps=4,
                                          data__split=(0.5, 0.5, 0.0)), str(workdir))
  report = tmp_path / 'report.json'
  result = run_cli('charlm.visualize', f'--workdir={workdir}', '--chars=1000',
                   f'--out={tmp_path}/page.html', f'--json={report}')
  assert result.returncode == 0, result.stderr[-2000:]
  page = json.load(open(report))['page']
  gates = {'gru': {'z', 'r'}, 'rnn': set()}[cell]
  assert {kind for layer in page['saturation'].values() for kind in layer} == gates
  assert {c['kind'] for c in page['cells']} <= {'h'} | gates


def test_visualize_writes_the_page_and_the_json(smoke_run, tmp_path):
  out, report = tmp_path / 'page.html', tmp_path / 'report.json'
  result = run_cli('charlm.visualize', f'--workdir={smoke_run}', '--chars=3000',
                   f'--out={out}', f'--json={report}', '--probe=love=love|sweet')
  assert result.returncode == 0, result.stderr[-2000:]
  assert re.search(r'3,000 characters, 384 cells: [\d.]+% interpretable', result.stdout)
  data = json.load(open(report))
  assert data['chars'] == 3000 and len(data['page']['text']) == 3000
  assert {'in_quotes', 'in_parens', 'word_end', 'column', 'love'} <= set(data['cells']['labels'])
  assert len(data['page']['predictions']['chars']) == 3000
  assert all(len(row) == 5 for row in data['page']['predictions']['chars'])
  assert {a['label'] for a in data['ablation']} <= set(data['cells']['labels'])
  html = out.read_text(encoding='ascii')
  assert html.startswith('<!DOCTYPE html>') and 'http' not in html.split('<script')[0]


@pytest.mark.parametrize('args,expect', [
    (['--probe=nothing'], "error: --probe 'nothing': use NAME=REGEX"),
    (['--probe=x=('], "error: --probe x: '(' is not a regular expression"),
    (['--chars=10'], 'error: --chars is 10; read at least 100 characters'),
    (['--split=val', '--file=x.txt'], 'error: give --split or --file, not both')])
def test_visualize_bad_input_is_one_line(smoke_run, tmp_path, args, expect):
  result = run_cli('charlm.visualize', f'--workdir={smoke_run}', f'--out={tmp_path}/p.html',
                   *args)
  assert result.returncode == 1 and result.stderr.startswith(expect), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'p.html').exists()


def test_a_smoke_runs_page_in_chromium(smoke_run, tmp_path, browser):  # noqa: F811
  """The page of a real (tiny) run: no errors, no requests, one element per character, a
  found cell recolours the text, hovering shows five guesses."""
  out = tmp_path / 'page.html'
  result = run_cli('charlm.visualize', f'--workdir={smoke_run}', '--chars=2000', f'--out={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  opened = Opened(browser, out)
  try:
    p = opened.page
    assert p.locator('#text .ch').count() == 2000
    before = opened.colours()
    p.locator('.found-item').first.click()
    assert opened.colours() != before
    p.locator('#text .ch').nth(500).hover()
    probs = [float(v) for v in p.locator('#guesses .guess').evaluate_all(
        'rs => rs.map(r => r.dataset.p)')]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    opened.assert_clean()
  finally:
    opened.context.close()
