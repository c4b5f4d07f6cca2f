#!/usr/bin/env bash
# One prepared GPU run (the device tool lends a GPU machine for minutes):
# experiments/bench_train.py against torch.nn.LSTM (cuDNN) for 3x512 at batch 512 and 64, in
# bfloat16 and float32, layer by layer (model.impl='fused') and as one wavefront loop
# ('wavefront'), bfloat16 as charlm runs it on a GPU (bfloat16 gate inputs, float16 saved gate
# activations) and without those two (model.gate_inputs=float32,model.saved_gates=float32; the
# wavefront with them is not yet timed on a GPU); the wavefront against fused at batch 128 and
# 256, where model.impl='auto' switches (experiments/bench_lstm_loops.py); charlm's fast-LSTM
# tests on the GPU; a profile of the batch-512 step; then, if time is left, three training runs
# on tiny-shakespeare ('auto' and fused in bfloat16, fused float32: loss curves compared),
# sampling speed and a sample. Results land in $OUT.
#
# The GPU image has jax (CUDA), flax, optax, orbax and torch but no network: carry the rest.
# From the repository root, once:
#   echo /.whl/ >> .git/info/exclude; echo /.carry/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     ml-collections==1.1.0 tensorboardX==2.6.5
#   mkdir -p .carry && cp ../shared/bench/torch_charrnn.py ../shared/data/tinyshakespeare.txt \
#     .carry/
# then run `DEADLINE=550 bash experiments/gpu_check.sh 2>&1 | tee $OUT/log.txt` there with
# `.whl` and `.carry` carried, under a command timeout half a minute above DEADLINE.
#
# Every stage gets at most what is left of DEADLINE seconds (default 520), in this order: the
# benchmark (220 s; its rounds stop at the budget), the wavefront against fused (120 s;
# experiments/bench_lstm_loops.py), the tests (90 s), a profile of the batch-512 step, the
# training runs, sampling speed, the sample: at DEADLINE=550 the last four run only in what the
# first three leave unused. On 2026-11-27 (an H200, DEADLINE=560) the then stages took 523 s.
# On an H200 (2026-11-26) a 3x512 step compiled in 4-13 s (the larger unrolls slower); the run
# of that day gave 240 s to the benchmark (2 sizes x 3 variants, 5 rounds), and 120 s to the
# loops, which compiled 8 steps and was stopped before its table: they now get one size and stop
# their rounds at a budget. The same machine found XLA's default flags fastest:
# --xla_gpu_autotune_level=0 compiled in 3 s but trained at 0.38x,
# --xla_gpu_enable_triton_gemm=false at 0.89x (3x512, 64 x 100, float32), and XLA's while loops
# as CUDA graphs lost (experiments/results/bench_lstm_loops_graphs_gpu.json).
# SIZES, VARIANTS, ROUNDS, STEPS, LOOP_SIZES, LOOPS, TESTS (pytest -k), PROFILE_SIZE,
# PROFILE_IMPL, SAMPLE_ARGS, TRAIN_VARIANTS, TRAIN_ARGS (extra flags) and PEER_PY change the run.
# VARIANTS (bench_train's --variant) and LOOPS (bench_lstm_loops' --candidate) are
# space-separated lists, each item a comma-separated list of config overrides, e.g.
# VARIANTS='model.impl=fused,model.dtype=bfloat16 model.impl=fused,model.saved_gates=float32'.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/charlm-gpu-check}
DEADLINE=${DEADLINE:-520}
STEPS=${STEPS:-300}
PEER_PY=${PEER_PY:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
RUNS=/tmp/charlm-gpu-runs
rm -rf "$RUNS"; mkdir -p "$RUNS"
export CHARLM_CACHE=$RUNS/cache PYTHONUNBUFFERED=1
# The peer runs beside this process: JAX takes GPU memory as it needs it, not 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
stage() { echo; echo "== $1 ($(date +%T), $(left) s left)"; }
left() { echo $((DEADLINE - SECONDS)); }
# budget N: N seconds or what is left, whichever is less (0 when under 15 s are left).
budget() { local l; l=$(left); l=$((l < $1 ? l : $1)); echo $((l < 15 ? 0 : l)); }
quiet() { grep -v -E '^(I|W)[0-9]{4}'; }

stage device
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import jax, flax, optax, orbax.checkpoint as o; import torch
print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__,
      "torch", torch.__version__, "cudnn", torch.backends.cudnn.version())'

stage "bench_train: charlm against torch.nn.LSTM (cuDNN)"
t=$(budget 220)
# Compiling comes first (12 steps, 3-10 s each on an H200); the rounds get the rest less 145 s.
# $wide: without the bfloat16 gate inputs and float16 saved gates of GPUs.
wide=model.gate_inputs=float32,model.saved_gates=float32
fused16=model.impl=fused,model.dtype=bfloat16 wave16=model.impl=wavefront,model.dtype=bfloat16
variants="$fused16 $fused16,$wide $wave16 $wave16,$wide"
variants="$variants model.impl=fused,model.dtype=float32 model.impl=wavefront,model.dtype=float32"
variant_flags=()
for v in ${VARIANTS:-$variants}; do variant_flags+=(--variant "$v"); done
timeout "$t" python3 experiments/bench_train.py --peer_python "$PEER_PY" \
  --peer_dir .carry --sizes "${SIZES:-3x512:512x100,3x512:64x100}" "${variant_flags[@]}" \
  --rounds "${ROUNDS:-5}" --steps 10 \
  --max_seconds $((t > 175 ? t - 145 : 30)) --out "$OUT/bench_train_gpu.json" 2>&1 | quiet \
  | tee "$RUNS/bench.txt" | grep -v '^|'

# loops_stage SECONDS TITLE SIZES CANDIDATES JSON: bench_lstm_loops, fused bfloat16 unless a
# candidate says otherwise, against the peer; compiling stops a minute before the stage's end,
# so that rounds and the peer still fit.
loops_stage() {
  local t c candidates=(); t=$(budget "$1"); [ "$t" -gt 0 ] || return 0
  for c in $4; do candidates+=(--candidate "$c"); done
  stage "bench_lstm_loops: $2, 3x512 bfloat16 (${t} s at most)"
  timeout "$t" python3 experiments/bench_lstm_loops.py --sizes "$3" "${candidates[@]}" \
    --override model.impl=fused --override model.dtype=bfloat16 --rounds 5 --steps 10 \
    --max_seconds 20 --peer_python "$PEER_PY" --peer_dir .carry --deadline $((t - 60)) \
    --bench_out "$OUT/$5" 2>&1 | quiet \
    | grep -E '^(\||#[0-9]|compiled|deadline|failed|round|--max|error:|Traceback|[A-Za-z]*Error)'
}

# The wavefront against fused around model.impl='auto''s switch (batch x hidden 65,536).
bm8=model.loop_layout=batch_major,model.unroll=8,model.unroll_backward=8
loops_stage 120 "the wavefront against fused" "${LOOP_SIZES:-3x512:128x100,3x512:256x100}" \
  "${LOOPS:-$bm8 model.impl=wavefront,$bm8 model.impl=wavefront,$bm8,$wide}" \
  bench_lstm_loops_gpu.json

t=$(budget 90)
if [ "$t" -gt 0 ]; then
  tests=${TESTS:-narrowing or float16 or gate_inputs or remainder or fused_lstm}
  stage "tests on the GPU: -k '$tests' (${t} s at most)"
  # SIGINT: pytest stops and still prints its summary of the tests run so far.
  timeout -s INT -k 10 "$t" python3 -m pytest -q -p no:cacheprovider -rfE \
    tests/test_model.py -k "$tests" 2>&1 | tee "$OUT/tests.txt" \
    | tail -15
fi

t=$(budget 45)
if [ "$t" -gt 0 ]; then
  stage "profile: 3x512 at 512 x 100, bfloat16 (${t} s at most)"
  timeout "$t" python3 experiments/profile_step.py --size "${PROFILE_SIZE:-3x512:512x100}" \
    --override model.impl="${PROFILE_IMPL:-fused}" --override model.dtype=bfloat16 --top 25 \
    --trace_dir "$RUNS/trace" \
    2>&1 | quiet | grep -v '^trace:'
  cp "$(find "$RUNS/trace" -name '*.trace.json.gz' | head -1)" "$OUT/trace_3x512_512x100.json.gz" \
    2>/dev/null
fi

# auto:bfloat16 is what a user gets: at batch 100 x 512 hidden, the wavefront.
# Each run takes 25-30 s on an H200, compiling included.
TRAIN_VARIANTS=${TRAIN_VARIANTS:-auto:bfloat16 fused:bfloat16 fused:float32}
for variant in $TRAIN_VARIANTS; do
  t=$(budget 80); [ "$t" = 0 ] && break
  impl=${variant%:*}; dtype=${variant#*:}
  stage "training: configs/tinyshakespeare.py, $impl $dtype, $STEPS steps (${t} s at most)"
  timeout "$t" python3 -m charlm.train --config configs/tinyshakespeare.py \
    --config.data.name= --config.data.path=.carry/tinyshakespeare.txt \
    --config.model.impl=$impl --config.model.dtype=$dtype --config.train.steps="$STEPS" \
    --config.train.log_every=50 --config.train.eval_every=100 --config.train.eval_batches=0 \
    --config.train.ckpt_every=100 --config.train.sample_every=0 ${TRAIN_ARGS:-} \
    --workdir "$RUNS/ts_${impl}_$dtype" 2>&1 | quiet | grep -E "^training on|^step $STEPS/"
  cp "$RUNS/ts_${impl}_$dtype/metrics.jsonl" "$OUT/ts_${impl}_$dtype.jsonl" 2>/dev/null
done
python3 - "$RUNS" $TRAIN_VARIANTS <<'PY' | tee "$RUNS/training.txt"
import json, os, statistics, sys
for variant in sys.argv[2:]:
  path = os.path.join(sys.argv[1], 'ts_' + variant.replace(':', '_'), 'metrics.jsonl')
  if not os.path.exists(path):
    print(variant, 'no metrics'); continue
  rows = [json.loads(line) for line in open(path)]
  speed = [r['chars_per_sec'] for r in rows if 'chars_per_sec' in r][1:]
  train = [(r['step'], round(r['train/loss'], 3)) for r in rows if 'train/loss' in r]
  val = [(r['step'], round(r['val/loss'], 4)) for r in rows if 'val/loss' in r]
  print(f'{variant}: median chars/s {statistics.median(speed) if speed else 0:,.0f}; '
        f'val loss (step, nats) {val}; train loss {train}')
PY

t=$(budget 60)
if [ "$t" -gt 0 ]; then
  stage "bench_sample: 3x512, 1 and 64 streams, against the peer on the GPU (${t} s at most)"
  timeout "$t" python3 experiments/bench_sample.py --layers 3 --hidden 512 --reps 2 \
    ${SAMPLE_ARGS:-} --peer_python "$PEER_PY" --peer_dir .carry \
    --out "$OUT/bench_sample_gpu.json" 2>&1 | quiet | tail -8
fi

t=$(budget 40)
first=$(echo "$TRAIN_VARIANTS" | awk '{print $1}' | tr : _)
if [ "$t" -gt 0 ] && [ -d "$RUNS/ts_$first" ]; then
  stage "sampling on the GPU from the $first run"
  timeout "$t" python3 -m charlm.sample --workdir "$RUNS/ts_$first" --prime "ROMEO:" \
    --length 300 --temperature 0.8 --seed 0 2>&1 | quiet | tail -12
fi

stage summary
grep -E '^(\||matmul)' "$RUNS/bench.txt"
cat "$RUNS/training.txt"
