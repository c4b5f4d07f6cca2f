"""The training loop's helpers: stop signals."""
import os
import signal

from charlm import loop


def test_one_process_stops_after_the_signalled_step_without_waiting_for_a_log_step():
  before = signal.getsignal(signal.SIGTERM)
  with loop.StopRequests() as stop:
    assert not stop.agreed(synced=False)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.agreed(synced=False)
  assert signal.getsignal(signal.SIGTERM) is before
