#!/usr/bin/env bash
# The GPU plan as one bounded script (issue 17, item 4): every step has its own time limit and
# writes into one results folder, so a step that runs over still leaves the others' results.
#   bash tools/gpu_plan.sh RESULTS_DIR        (or JAXSOFTMAX_RESULTS=DIR bash tools/gpu_plan.sh)
# Runs from a copy of the tree (PYTHONPATH=.) with CUDA JAX, torch and pytest preinstalled.
set -u
OUT_DIR=${1:-${JAXSOFTMAX_RESULTS:?give the results folder as the argument or JAXSOFTMAX_RESULTS}}
PY=${PYTHON:-python}
SCALE=${GPU_PLAN_SCALE:-1}          # multiplies every step's time limit
mkdir -p "$OUT_DIR"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
# A step that runs over its limit gets SIGABRT first, and faulthandler prints where it was.
export PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...: run one step under a limit, log it, record its status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit $((limit * SCALE)) s)"
  timeout --signal=ABRT --kill-after=10 $((limit * SCALE)) "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT_DIR/steps.txt"
  tail -n 15 "$OUT_DIR/$name.log"
}
step info 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PY -c 'import jax, jaxlib, torch; print(jax.__version__, jaxlib.__version__, jax.devices(), \
  jax.devices()[0].device_kind, torch.__version__, torch.cuda.is_available())'"
step kernels 120 $PY -m pytest -q -p no:cacheprovider -p no:randomly parity_tests/test_pallas.py \
  -k "compiled or lowers or dispatch or default or torch" --junitxml="$OUT_DIR/kernels.xml"
step bench-family 120 $PY -m jaxsoftmax.cli bench --ops softmax log_softmax \
  --shapes 4096x1024 4096x4096 4096x12672 4096x32768 16384x131072 --dtypes float32 bfloat16 \
  --modes fwd fwd+bwd --impls 'jaxsoftmax[xla]' jax.nn torch --rss none --budget 0.5 --out "$OUT_DIR" --append
step bench-ce 70 $PY -m jaxsoftmax.cli bench --ops cross_entropy --shapes 8192x32768 8192x131072 \
  --dtypes float32 bfloat16 --modes fwd+bwd --impls 'jaxsoftmax[xla]' optax torch --rss none \
  --budget 0.5 --out "$OUT_DIR" --append
step parity 100 $PY -m jaxsoftmax.cli parity --devices gpu --dtypes float32 bfloat16 --out "$OUT_DIR/parity-gpu"
echo "== done"; cat "$OUT_DIR/steps.txt"
