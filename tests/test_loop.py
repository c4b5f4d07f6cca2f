"""The training loop's helpers: stop signals, the steps a time budget holds."""
import os
import signal

import pytest

from charlm import loop


def test_one_process_stops_after_the_signalled_step_without_waiting_for_a_log_step():
  before = signal.getsignal(signal.SIGTERM)
  with loop.StopRequests() as stop:
    assert not stop.agreed(synced=False)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.agreed(synced=False)
  assert signal.getsignal(signal.SIGTERM) is before


def test_steps_within_a_budget_pay_for_their_periodic_work_and_the_last_one():
  periodic = {'eval': (2.0, 10), 'checkpoint': (1.0, 0), 'sample': (0.5, 5)}
  assert loop.seconds_per_step(0.5, periodic) == pytest.approx(0.5 + 2.0 / 10 + 0.5 / 5)
  assert loop.seconds_at_end(periodic) == 3.5
  steps = loop.steps_within(100.0, 0.5, periodic)
  assert steps * 0.8 + 3.5 <= 100.0 < (steps + 1) * 0.8 + 3.5
  assert loop.steps_within(3.0, 0.5, periodic) == 0  # The closing work alone is over.
  assert loop.steps_within(10.0, 1.0, {}) == 10
