"""One self-contained HTML page of what a model does on a text: the char-rnn post's figures.

`render(data)` returns the page: one ASCII string, inline CSS and JS (template: charlm/page.html),
the data embedded as JSON in a `<script type="application/json">` tag. It fetches nothing and
opens from file:// in any browser. The page colours the text by one cell at a time (buttons and
keys step through cells), shows the model's top guesses under a hovered or focused character,
lists the discovered cells with their snippets and histograms, plots gate saturation per layer
and heads it all with the share of interpretable cells against the control.

The data, a JSON-serialisable dict (lists may be NumPy arrays); every key but 'text' may be
missing, and the page leaves out what is missing:

  title: str.
  text: str of N characters (Python's len: code points).
  cells: [{'layer': int, 'kind': str, 'index': int, 'values': N floats}], one activation series
    per cell: values[t] is the cell's value after reading text[t]. kind is one of
    'h': hidden state, shown as is (in [-1, 1]);
    'c': LSTM cell state, unbounded, shown as tanh(c) or as c clipped to [-1, 1];
    'g': LSTM candidate, 'n': GRU candidate (tanh, in [-1, 1]), shown as is;
    'i', 'f', 'o': LSTM gates, 'z', 'r': GRU gates (sigmoid, in [0, 1]), shown as 2v - 1, so
    that 0 is the scale's -1 end, 0.5 its middle and 1 its +1 end.
  predictions: {'chars': N lists of K str, 'probs': N lists of K floats, 'true_prob': N floats}:
    at t, the model's K most probable guesses for text[t + 1], most probable first (K = 5 by
    convention, the same K at every t), and the probability it gave the real text[t + 1];
    true_prob[N - 1] is None (nothing follows), and None elsewhere means unknown.
  found: [{'label': str, 'layer': int, 'kind': str, 'index': int, 'score': float,
           'control': float, 'snippets': [{'text': str, 'at': int}],
           'histogram': {'edges': B + 1 floats, 'counts': B ints}}], the discovered cells, in
    the order to list them: score and control are the finder's score of the cell and of its
    control; each snippet is a max-activating stretch of the text starting at text[at] (it is
    coloured by the cell when its series is in cells and the text there matches); the
    histogram is of the cell's values.
  headline: {'share': float, 'control_share': float, 'margin': float, 'cells': int}: the
    fraction of the `cells` cells examined that the finder judged interpretable, the same
    fraction for the control, and the margin it required over the control (shown as given).
  saturation: {'layer0': {'i': {'left': U floats, 'right': U floats}, 'f': ..., 'o': ...},
    'layer1': ...}: per layer and gate kind, per gate unit, the fraction of characters at
    which the gate is below 0.1 (left-saturated) and above 0.9 (right-saturated).

Stored compactly: each series as int8 of its shown value in [-1, 1] (times 127; a cell state
as tanh(c)), the guesses as uint16 indices into a table of the distinct guesses, their
probabilities as uint16 (times 65535), true_prob as float32 (NaN for None), each base64; the
rest as JSON with floats to 4 significant digits. 20,000 characters with 60 series and top-5
guesses make a page of about 2.4 MB.
"""
import base64
import html
import importlib.resources
import json
import math

import numpy as np

KINDS = ('h', 'c', 'g', 'n', 'i', 'f', 'o', 'z', 'r')
SIGMOID_KINDS = ('i', 'f', 'o', 'z', 'r')


def render(data: dict) -> str:
  """The page for `data` (the contract above), as one ASCII string; ValueError if malformed."""
  text = data.get('text')
  if not isinstance(text, str):
    raise ValueError("page data: 'text' must be a str")
  payload = {'title': str(data.get('title') or 'charlm'), 'text': text,
             'cells': [_cell(cell, len(text)) for cell in data.get('cells') or []],
             'predictions': _predictions(data.get('predictions'), len(text)),
             'found': _plain(data.get('found') or []),
             'headline': _plain(data.get('headline')),
             'saturation': _saturation(data.get('saturation'))}
  template = importlib.resources.files('charlm').joinpath('page.html').read_text('utf-8')
  title = html.escape(payload['title']).encode('ascii', 'xmlcharrefreplace').decode('ascii')
  return template.replace('__CHARLM_TITLE__', title).replace('__CHARLM_DATA__', _embed(payload))


def _embed(payload) -> str:
  """JSON that a <script> element cannot end early: no '<', '>' or '&' (all as \\u escapes)."""
  text = json.dumps(payload, ensure_ascii=True, separators=(',', ':'), allow_nan=False)
  return text.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')


def _b64(array: np.ndarray) -> str:
  return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode('ascii')


def _cell(cell: dict, n: int) -> dict:
  layer, kind, index = int(cell['layer']), cell['kind'], int(cell['index'])
  name = f'cell (layer {layer}, {kind!r}, {index})'
  if kind not in KINDS:
    raise ValueError(f'page data: {name}: kind must be one of {", ".join(KINDS)}')
  values = np.asarray(cell['values'], np.float64)
  if values.shape != (n,):
    raise ValueError(f'page data: {name} has {values.size} values for {n} characters')
  if not np.isfinite(values).all():
    raise ValueError(f'page data: {name} has values that are not finite')
  if kind == 'c':
    values = np.tanh(values)
  elif kind in SIGMOID_KINDS:
    values = 2 * values - 1
  q = np.round(np.clip(values, -1, 1) * 127).astype(np.int8)
  return {'layer': layer, 'kind': kind, 'index': index, 'q': _b64(q)}


def _predictions(predictions, n: int):
  if not predictions:
    return None
  chars, probs = predictions['chars'], np.asarray(predictions['probs'], np.float64)
  true_prob = [math.nan if p is None else float(p) for p in predictions['true_prob']]
  if len(chars) != n or probs.ndim != 2 or probs.shape[0] != n or len(true_prob) != n:
    raise ValueError(f'page data: predictions must have one row per character ({n})')
  k = probs.shape[1]
  if any(len(row) != k for row in chars):
    raise ValueError(f'page data: predictions need {k} guesses at every character')
  table = sorted({c for row in chars for c in row})
  if len(table) > 65536:
    raise ValueError('page data: more than 65,536 distinct guesses')
  where = {c: i for i, c in enumerate(table)}
  idx = np.array([[where[c] for c in row] for row in chars], '<u2').reshape(n, k)
  p16 = np.round(np.clip(probs, 0, 1) * 65535).astype('<u2')
  return {'k': k, 'table': table, 'idx': _b64(idx), 'p': _b64(p16),
          'true': _b64(np.array(true_prob, '<f4'))}


def _saturation(saturation):
  """{'layerN': {gate: {'left', 'right'}}} as [{'layer': N, 'gates': ...}], by layer."""
  if not saturation:
    return None
  layers = []
  for key, gates in saturation.items():
    number = str(key).removeprefix('layer')
    if not number.isdigit():
      raise ValueError(f"page data: saturation key {key!r} is not 'layerN'")
    for gate, points in gates.items():
      if len(points['left']) != len(points['right']):
        raise ValueError(f'page data: saturation {key} {gate}: left and right differ in length')
    layers.append({'layer': int(number), 'gates': _plain(gates)})
  return sorted(layers, key=lambda layer: layer['layer'])


def _plain(x):
  """x as plain JSON values: NumPy arrays and scalars too, floats to 4 significant digits."""
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, np.ndarray)):
    return [_plain(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float):
    return float(f'{x:.4g}') if math.isfinite(x) else None
  return x
