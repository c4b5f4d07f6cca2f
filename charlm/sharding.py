"""The device mesh: data parallel over every device of every process.

The batch (and the carried hidden state) is split along the `data` axis; parameters and
optimizer state are replicated. A later FSDP-style `model` axis would shard parameters too.
"""
import contextlib
import os
import sys
import threading
import time
import traceback

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from charlm.errors import UserError

DATA_AXIS = 'data'
MODEL_AXIS = 'model'  # Size 1 today: the axis an FSDP-style parameter sharding would use.
_INIT_GRACE_S = 10  # JAX's join timeout is this much later than charlm's, which says why.


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """Over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: XLA propagates shardings through the model; only inputs and state are pinned.
  return jax.make_mesh((len(devices), 1), (DATA_AXIS, MODEL_AXIS),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def check_batch_size(batch_size: int, mesh) -> None:
  n = mesh.size
  if batch_size % n:
    ok = ', '.join(str(n * k) for k in range(1, 5))
    raise UserError(f'batch_size {batch_size} does not divide evenly over {n} devices; use a '
                    f'multiple of {n} (for example {ok}) with --config.train.batch_size')


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_rows(mesh, batch_size: int) -> np.ndarray:
  """The global batch rows (streams) whose data this process feeds."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  rows = sorted({i for idx in index_map.values() for i in range(*idx[0].indices(batch_size))})
  return np.asarray(rows)


def to_global(mesh, local: np.ndarray, batch_size: int) -> jax.Array:
  """Builds a global batch-sharded array from this process's rows."""
  return jax.make_array_from_process_local_data(
      batch_sharding(mesh), local, (batch_size,) + local.shape[1:])


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           auto: bool = False, init_timeout: int = 300,
                           heartbeat_timeout: int = 100) -> bool:
  """Joins a multi-process run through jax.distributed; must run before devices are touched.

  Explicit arguments (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID in the
  environment) join that run; `auto` lets JAX detect the cluster (SLURM, TPU pods, Kubernetes,
  Open MPI). Returns whether it joined. A process waits `init_timeout` seconds for all to join,
  then exits 1 with a one-line error; one that sends no heartbeat for `heartbeat_timeout` seconds
  (killed, or its host lost) counts as dead, and JAX then aborts the others with its own
  message (from its runtime, where Python cannot catch it).
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if not (coordinator_address or auto):
    return False
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  # CPU devices need a collectives library to talk across processes; GPUs and TPUs bring theirs.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  late = (f'not every process of the distributed run joined within --init_timeout='
          f'{init_timeout} s ({num_processes or "all"} expected at {coordinator_address}); start '
          'them all, check that none failed before joining, or raise --init_timeout')
  joined = threading.Event()

  def give_up():  # Before JAX's own timeout, which aborts the process with a stack trace.
    if not joined.wait(init_timeout):
      print(f'error: {late}', file=sys.stderr, flush=True)
      os._exit(1)
  threading.Thread(target=give_up, daemon=True).start()
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=init_timeout + _INIT_GRACE_S,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except (RuntimeError, ValueError) as e:
    detail = ' '.join(str(e).split())[:300]
    raise UserError(f'could not join the distributed run ({detail}); check --coordinator_address'
                    ', --num_processes and --process_id, or run inside SLURM/TPU with '
                    '--distributed') from None
  finally:
    joined.set()
  return True


def local_copy(tree):
  """The first local replica of replicated arrays: usable by this process alone (sampling)."""
  return jax.tree.map(lambda x: x.addressable_data(0), tree)


def barrier(name: str):
  """Waits until every process of a multi-process run reaches it; a no-op in one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def broadcast_from_first(value: int) -> int:
  """Process 0's `value` in every process (a number each process computed, say from timings,
  which must agree)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


_FAILED = 'charlm/failed'  # The coordination service's key: "<process>\t<message>".


@contextlib.contextmanager
def stop_together():
  """An exception in one process of a multi-process run ends every process with its message.

  Otherwise the others wait in their next collective until JAX's heartbeat or shutdown timeout
  (minutes). The failing process posts its message to the coordination service; a thread in
  each process watches for it, prints it and exits 1 (130 for a second Ctrl-C)."""
  from jax._src import distributed  # jax.distributed does not expose its client.
  client = distributed.global_state.client if jax.process_count() > 1 else None
  if client is None:
    yield
    return
  done = threading.Event()
  watcher = threading.Thread(target=_watch, args=(client, done), daemon=True)
  watcher.start()
  try:
    yield
  except BaseException as e:
    if isinstance(e, SystemExit) and e.code in (0, None):
      raise
    code = 130 if isinstance(e, KeyboardInterrupt) else 1
    if isinstance(e, (UserError, KeyboardInterrupt)):
      message = str(e) if isinstance(e, UserError) else 'interrupted by a second signal'
      print(f'error: {message}', file=sys.stderr, flush=True)
    else:
      message = traceback.format_exception_only(e)[-1].strip() or type(e).__name__
      traceback.print_exc()
    _post_and_exit(client, message, code)
  finally:  # Not left in a call into JAX at exit, which aborts the process.
    done.set()
    watcher.join(timeout=5)


def _watch(client, done):
  me = jax.process_index()
  while not done.is_set():
    try:
      value = client.blocking_key_value_get(_FAILED, 500)
    except Exception:  # A timeout; or the service is gone, which JAX reports itself.
      continue
    sender, message = value.split('\t', 1)
    if done.is_set() or int(sender) == me:
      return
    print(f'error: process {sender} failed: {message}', file=sys.stderr, flush=True)
    _leave(client, 1)


def _post_and_exit(client, message, code):
  with contextlib.suppress(Exception):  # Another process failed first: its message stands.
    client.key_value_set(_FAILED, f'{jax.process_index()}\t{message}')
  _leave(client, code)


def _leave(client, code):
  """Exits at once (a normal exit would wait for the others in jax.distributed's shutdown
  barrier); process 0 last, as the others abort when its coordination service goes away."""
  sys.stdout.flush()
  sys.stderr.flush()
  me = jax.process_index()
  if me:
    with contextlib.suppress(Exception):
      client.key_value_set(f'{_FAILED}/exit/{me}', '1')
  else:
    deadline = time.monotonic() + 10
    for other in range(1, jax.process_count()):
      with contextlib.suppress(Exception):  # Stuck or gone already: exit anyway.
        timeout = max(1, int(1000 * (deadline - time.monotonic())))
        client.blocking_key_value_get(f'{_FAILED}/exit/{other}', timeout)
    time.sleep(0.2)  # Until they are gone.
  os._exit(code)
