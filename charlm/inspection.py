"""What a trained network does on a text, gathered for one page: states, guesses, found cells.

`inspect(model, text)` runs the text through the model (charlm.internals), and through a
randomly initialised model of the same shape as the control, hunts for interpretable cells
(charlm.cells), ablates the best cell of each binary label (does the network use it?) and
returns {'page': what charlm.page.render draws, 'report': everything, for --json}.
"""
import jax
import jax.numpy as jnp
import numpy as np

from charlm import cells as cells_lib
from charlm import internals

ABLATED_KINDS = ('h', 'c')  # The states ablation can hold (charlm.clamp).


def text_of(vocab, ids) -> str:
  """One character per token: the characters, or for a byte-level model each byte as the code
  point of the same number (ASCII stays itself), so that labels line up with the tokens."""
  ids = np.asarray(ids).reshape(-1)
  if vocab.level == 'byte':
    return ''.join(map(chr, ids.tolist()))
  return vocab.decode(ids)


def random_params(module, seed: int):
  """A randomly initialised model's parameters, of `module`'s shape: the control."""
  return jax.jit(module.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32),
                              module.initial_carry(1))['params']


def _states(acts: dict) -> dict:
  return {k: v for k, v in acts.items() if k.startswith('layer')}


def predictions(vocab, ids, logprobs, guesses: int = 5) -> dict:
  """Top guesses for the character after each one, and the probability of the true one."""
  top = np.argsort(-logprobs, axis=1)[:, :guesses]
  probs = np.exp(np.take_along_axis(logprobs, top, axis=1))
  names = [text_of(vocab, [i]) for i in range(logprobs.shape[1])]
  true = np.exp(logprobs[np.arange(len(ids) - 1), ids[1:]])
  return {'chars': [[names[i] for i in row] for row in top.tolist()],
          'probs': np.round(probs, 4).tolist(),
          'true_prob': [round(float(p), 5) for p in true] + [None]}


def _ablations(model, ids, text, found, labels, streams) -> list[dict]:
  """The best h or c cell of each binary label held at its mean: the loss change over the text
  and where the label holds."""
  out = []
  for name, entry in found['labels'].items():
    if entry['type'] != cells_lib.BINARY:
      continue
    best = next((c for c in entry['top'] if c['kind'] in ABLATED_KINDS), None)
    if best is None:
      continue
    where = np.asarray(labels[name].values, bool)
    result = model.ablate(text, [(best['layer'], best['kind'], best['index'])], where=where,
                          streams=streams)[0]
    out.append({'label': name, 'cell': best['cell'], 'score': best['score'], **result})
  return out


def _control_share(module, ids, start_token, text, control_states, probes, seed,
                   streams) -> float:
  """The headline's rule applied to the randomly initialised model itself, against a second
  random model and shuffled labels: the share of cells it calls interpretable in a network
  that learned nothing, i.e. the rule's false-positive rate."""
  second = _states(internals.activations(module, random_params(module, seed + 2), ids,
                                         start_token=start_token, streams=streams))
  return cells_lib.find_cells(text, control_states, second, probes=probes, top=1,
                              seed=seed)['headline']['share']


def _series(states: dict, found: dict, limit: int) -> list[dict]:
  """The per-character values of the reported cells first, then of each layer's c (or h), unit
  by unit, up to `limit` series: what the page can colour the text by."""
  chosen = []
  for entry in found['labels'].values():
    for c in entry['top']:
      key = (c['layer'], c['kind'], c['index'])
      if key not in chosen:
        chosen.append(key)
  layers = sorted({int(k.split('/')[0][5:]) for k in states})
  fill_kind = 'c' if any(k.endswith('/c') for k in states) else 'h'
  hidden = next(iter(states.values())).shape[1]
  for index in range(hidden):
    for layer in layers:
      if len(chosen) >= limit:
        break
      if (layer, fill_kind, index) not in chosen:
        chosen.append((layer, fill_kind, index))
  return [{'layer': layer, 'kind': kind, 'index': index,
           'values': np.round(states[f'layer{layer}/{kind}'][:, index], 3).tolist()}
          for layer, kind, index in chosen[:limit]]


def _page_found(found: dict, ablation: list[dict]) -> list[dict]:
  by_cell = {(a['label'], a['cell']): a for a in ablation}
  out = []
  for name, entry in found['labels'].items():
    best = entry['top'][0]
    reported = found['reported'][best['cell']]
    snippets = [s for side in ('high', 'low') for s in reported['snippets'].get(side, [])][:10]
    ablated = by_cell.get((name, best['cell']))
    out.append({'label': name, 'layer': best['layer'], 'kind': best['kind'],
                'index': best['index'], 'score': best['score'],
                'control': entry['control']['threshold'] - found['margin'],
                'ablation': None if ablated is None else round(ablated['where_change'], 4),
                'snippets': [{'text': s['text'], 'at': s['position'] - s['offset']}
                             for s in snippets],
                'histogram': reported['histogram']})
  return out


def _page_saturation(saturation: list[dict]) -> dict:
  out = {}
  for entry in saturation:
    out.setdefault(f'layer{entry["layer"]}', {})[entry['kind']] = {
        'left': entry['below'], 'right': entry['above']}
  return out


def inspect(model, text: str, *, probes=(), top: int = 5, series: int = 60, seed: int = 0,
            streams: int = 1, title: str = '') -> dict:
  """The page and report of `model` (a charlm.api.Model) on `text`; see the module docstring.

  probes: {name: regex} or regexes, extra binary labels (inside a match). streams: how many
  parts the text is read in side by side (1: one exact pass). seed: the control's parameters
  and the label shuffles.
  """
  acts = model.activations(text, streams=streams)
  ids = acts['ids']
  text = text_of(model.vocab, ids)  # What the model read, one character per token.
  states = _states(acts)
  control = _states(internals.activations(
      model.module, random_params(model.module, seed + 1), ids, start_token=model.start_token,
      streams=streams))
  found = cells_lib.find_cells(text, states, control, probes=probes, top=top, seed=seed)
  labels = cells_lib.text_labels(text, probes)
  ablation = _ablations(model, ids, text, found, labels, max(streams, internals.ABLATE_STREAMS))
  headline = found['headline']
  page = {
      'title': title or f'{model.workdir} at step {model.step}',
      'text': text,
      'cells': _series(states, found, series),
      'predictions': predictions(model.vocab, ids, acts['logprobs']),
      'found': _page_found(found, ablation),
      'headline': {'share': headline['share'],
                   'control_share': _control_share(model.module, ids, model.start_token, text,
                                                   control, probes, seed, streams),
                   'margin': found['margin'], 'cells': headline['cells']},
      'saturation': _page_saturation(found['saturation']),
  }
  report = {'workdir': model.workdir, 'step': model.step, 'chars': len(text),
            'cells': found, 'ablation': ablation, 'page': page}
  return report
