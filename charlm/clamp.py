"""Interventions: hold chosen cells of a CharRNN's state at chosen values while it reads or writes.

A `Clamp(layer, kind, index, value)` holds cell `index` of layer `layer`'s carried state `kind`
('h' or 'c' for an LSTM, 'h' for a GRU or RNN) at `value` at every step, right after the step
updates it: the next step and the layer above read the held value. An LSTM's c is held before
the step computes h = o * tanh(c) from it, so a held c reaches the output in the same step.
On the command line a clamp is `LAYER:KIND:INDEX=VALUE` (`parse`), e.g. 1:c:42=0.5.

Clamps reach the cell steps (`lstm_cell.step_states`, `model.gru_step_states`) as holds: per
'layer{L}/{kind}' a mask and values broadcastable to [B, H] (`holds`), which `hold_fn` applies
with one select, so that each batch row may hold other cells (charlm.internals.ablate does).
"""
import dataclasses
import math
from collections.abc import Callable, Iterable

import jax.numpy as jnp
import numpy as np

from charlm.errors import UserError

# The carried state a clamp can hold, per cell.
KINDS = {'lstm': ('h', 'c'), 'gru': ('h',), 'rnn': ('h',)}
FORMAT = 'LAYER:KIND:INDEX=VALUE, e.g. 1:c:42=0.5'


@dataclasses.dataclass(frozen=True)
class Clamp:
  """Holds cell `index` of layer `layer`'s state `kind` at `value`; hashable, so jit can take
  a tuple of clamps as a static argument."""
  layer: int
  kind: str
  index: int
  value: float

  def __str__(self):
    return f'{self.layer}:{self.kind}:{self.index}={self.value:g}'


def parse_cell(text: str, model, what: str = 'cell') -> tuple[int, str, int]:
  """'LAYER:KIND:INDEX' -> (layer, kind, index), checked against `model` (a CharRNN)."""
  return _parse_cell(text, model, f'{what} {text!r}', 'LAYER:KIND:INDEX, e.g. 1:c:42')


def parse(text: str, model) -> Clamp:
  """'LAYER:KIND:INDEX=VALUE' -> a Clamp, checked against `model`; a mistake is a one-line
  UserError that names it."""
  label = f'clamp {text!r}'
  cell, eq, value = text.partition('=')
  if not eq:
    raise UserError(f'{label}: use {FORMAT}')
  layer, kind, index = _parse_cell(cell, model, label, FORMAT)
  try:
    number = float(value)
  except ValueError:
    number = math.nan
  if not math.isfinite(number):
    raise UserError(f'{label}: VALUE {value.strip()!r} is not a finite number')
  return Clamp(layer, kind, index, number)


def _parse_cell(text: str, model, label: str, form: str) -> tuple[int, str, int]:
  parts = [p.strip() for p in text.strip().split(':')]
  if len(parts) != 3:
    raise UserError(f'{label}: use {form}')
  layer, kind, index = parts
  return check_cell(_whole(layer, 'LAYER', label), kind, _whole(index, 'INDEX', label), model,
                    label)


def _whole(part: str, name: str, label: str) -> int:
  try:
    return int(part)
  except ValueError:
    raise UserError(f'{label}: {name} {part!r} is not a whole number') from None


def check_cell(layer: int, kind: str, index: int, model, what: str) -> tuple[int, str, int]:
  """(layer, kind, index) if `model` has that cell, else a UserError that starts with `what`."""
  kinds = KINDS[model.cell]
  if not 0 <= layer < model.num_layers:
    raise UserError(f'{what}: layer {layer} out of range; the model has layers '
                    f'0..{model.num_layers - 1}')
  if kind not in kinds:
    raise UserError(f'{what}: {model.cell} layers hold {" and ".join(kinds)}, not {kind!r}')
  if not 0 <= index < model.hidden:
    raise UserError(f'{what}: index {index} out of range; each layer has {model.hidden} cells, '
                    f'0..{model.hidden - 1}')
  return int(layer), kind, int(index)


def check(clamps: Iterable, model) -> tuple[Clamp, ...]:
  """`clamps` (Clamp objects or 'LAYER:KIND:INDEX=VALUE' strings) as a tuple of Clamps checked
  against `model`, with plain int and float fields (so that equal clamps hash alike)."""
  checked = []
  for c in clamps or ():
    if isinstance(c, str):
      checked.append(parse(c, model))
      continue
    if not isinstance(c, Clamp):
      raise UserError(f'clamp {c!r}: give a charlm.clamp.Clamp or a string {FORMAT}')
    layer, kind, index = check_cell(c.layer, c.kind, c.index, model, f'clamp {c}')
    if not math.isfinite(c.value):
      raise UserError(f'clamp {c}: the value is not a finite number')
    checked.append(Clamp(layer, kind, index, float(c.value)))
  return tuple(checked)


def holds(clamps: Iterable[Clamp], hidden: int) -> dict:
  """The holds of `clamps`: 'layer{L}/{kind}' -> (mask [H] bool, values [H] float32), numpy.
  A cell clamped twice takes the last value."""
  out = {}
  for c in clamps:
    name = f'layer{c.layer}/{c.kind}'
    if name not in out:
      out[name] = (np.zeros(hidden, bool), np.zeros(hidden, np.float32))
    out[name][0][c.index] = True
    out[name][1][c.index] = c.value
  return out


def hold_fn(holds: dict | None, layer: int) -> Callable | None:
  """hold(kind, x) for a cell step of layer `layer`: x with the held cells set (None: no holds
  in this layer, so that the step runs exactly as without)."""
  mine = {name.split('/')[1]: held for name, held in (holds or {}).items()
          if name.split('/')[0] == f'layer{layer}'}
  if not mine:
    return None

  def hold(kind, x):
    if kind not in mine:
      return x
    mask, values = mine[kind]
    return jnp.where(mask, jnp.asarray(values, x.dtype), x)
  return hold
