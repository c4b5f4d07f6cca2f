"""What the benchmarks share: the PyTorch peer's python, and this machine's matmul rate."""
import os
import subprocess
import time

PEER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..',
                        'shared', 'bench')


def peer_python(given: str = '', peer_dir: str = PEER_DIR) -> str:
  """`given`, or the python that `peer_dir`/setup.sh makes (or finds) for torch_charrnn.py."""
  if given:
    return given
  out = subprocess.run(['bash', os.path.join(peer_dir, 'setup.sh')], check=True,
                       capture_output=True, text=True)
  return out.stdout.strip().splitlines()[-1]


def matmul_rate(n: int = 2048, dtype: str = 'float32') -> float:
  """GFLOP/s of an n^3 jnp.dot in `dtype` (default precision), the best of three."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  times = []
  for _ in range(3):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / min(times) / 1e9
