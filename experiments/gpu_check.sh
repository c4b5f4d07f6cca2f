#!/usr/bin/env bash
# One prepared GPU run (the device tool lends a GPU machine for minutes): charlm's tests on the
# GPU, experiments/bench_train.py against torch.nn.LSTM (cuDNN) for 3x512 at batch 64, 100
# and 512, a float32 and a bfloat16 training run on tiny-shakespeare (loss curves compared),
# and a sample from the trained model. Results land in $OUT (tee the output there too).
#
# The GPU image has jax (CUDA), flax, optax, orbax and torch but no network: carry the rest.
# From the repository root, once:
#   echo /.whl/ >> .git/info/exclude; echo /.carry/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     ml-collections==1.1.0 tensorboardX==2.6.5
#   mkdir -p .carry && cp ../shared/bench/torch_charrnn.py ../shared/data/tinyshakespeare.txt \
#     .carry/
# then run `bash experiments/gpu_check.sh 2>&1 | tee $OUT/log.txt` there with `.whl` and `.carry`
# carried. Plan about 9 minutes of device time: on an H200 (jax 0.11.2) XLA took 31-39 s to
# compile each 3x512 train step (2026-11-26), so the default bench (3 sizes x 3 variants) spends
# about 5 minutes compiling before it times anything; SIZES/VARIANTS/ROUNDS/STEPS/TEST_S/
# BENCH_S/TRAIN_S/SAMPLE shrink it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/charlm-gpu-check}
STEPS=${STEPS:-300}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
RUNS=/tmp/charlm-gpu-runs
export CHARLM_CACHE=$RUNS/cache PYTHONUNBUFFERED=1
# The peer runs beside this process: JAX takes GPU memory as it needs it, not 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
stage() { echo; echo "== $1 ($(date +%T))"; }

stage device
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import jax, flax, optax, orbax.checkpoint as o; import torch
print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__,
      "torch", torch.__version__, "cudnn", torch.backends.cudnn.version())'

if [ "${TEST_S:-90}" -gt 0 ]; then
  stage "tests on the GPU"
  timeout "${TEST_S:-90}" python3 -m pytest -q -p no:cacheprovider tests/test_model.py \
    2>&1 | tail -8
fi

stage "bench_train: charlm against torch.nn.LSTM (cuDNN)"
timeout "${BENCH_S:-420}" python3 experiments/bench_train.py --peer_python "${PEER_PY:-python3}" \
  --peer_dir .carry --sizes "${SIZES:-3x512:64x100,3x512:100x100,3x512:512x100}" \
  --variants "${VARIANTS:-fused:float32,fused:bfloat16,cudnn:float32}" \
  --rounds "${ROUNDS:-3}" --steps 10 --out "$OUT/bench_train_gpu.json" 2>&1 \
  | grep -v -E "^(I|W)[0-9]{4}" | tail -20

for dtype in float32 bfloat16; do
  stage "training: configs/tinyshakespeare.py (3x512, 100x100, dropout 0.5), $dtype, $STEPS steps"
  timeout "${TRAIN_S:-120}" python3 -m charlm.train --config configs/tinyshakespeare.py \
    --config.data.name= --config.data.path=.carry/tinyshakespeare.txt \
    --config.model.dtype=$dtype --config.train.steps="$STEPS" --config.train.log_every=50 \
    --config.train.eval_every=100 --config.train.eval_batches=0 --config.train.ckpt_every=100 \
    --config.train.sample_every=0 --workdir "$RUNS/ts_$dtype" 2>&1 | tail -4
done
python3 - "$RUNS" <<'PY'
import json, os, statistics, sys
for dtype in ('float32', 'bfloat16'):
  path = os.path.join(sys.argv[1], f'ts_{dtype}', 'metrics.jsonl')
  if not os.path.exists(path):
    print(dtype, 'no metrics'); continue
  rows = [json.loads(line) for line in open(path)]
  speed = [r['chars_per_sec'] for r in rows if 'chars_per_sec' in r][1:]
  val = [(r['step'], round(r['val/loss'], 4)) for r in rows if 'val/loss' in r]
  print(f'{dtype}: median chars/s {statistics.median(speed) if speed else 0:,.0f}; '
        f'val loss (step, nats) {val}')
PY

if [ "${SAMPLE:-1}" = 1 ]; then
  stage "sampling on the GPU from the float32 run"
  timeout 40 python3 -m charlm.sample --workdir "$RUNS/ts_float32" --prime "ROMEO:" \
    --length 300 --temperature 0.8 --seed 0 2>&1 | tail -12
fi
for dtype in float32 bfloat16; do cp "$RUNS/ts_$dtype/metrics.jsonl" "$OUT/ts_$dtype.jsonl"; done \
  2>/dev/null
stage done
