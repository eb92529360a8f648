#!/usr/bin/env bash
# The GPU plan (issue 17), one command: `make gpu RESULTS=DIR`, or
#   bash tools/gpu_plan.sh DIR          (or JAXSOFTMAX_RESULTS=DIR bash tools/gpu_plan.sh)
# on a copy of this tree on a machine with CUDA JAX, torch and pytest preinstalled and no network:
# nothing is installed, the package runs from the tree (PYTHONPATH=.). Every step has its own time
# limit (under 10 minutes) and writes into DIR, so a step that runs over leaves the others' results:
#   info            the GPU, driver, jax / torch versions
#   kernels         the compiled-kernel, lowering and dispatch tests (junit XML), with the suite's
#                   own settings: a warning is an error, as in a user's strict test suite
#   parity          the parity grid, JAX on the GPU against torch on CUDA (float32, bfloat16)
#   bandwidth       softmax / log_softmax forward over the Triton tutorial's shapes, as a fraction
#                   of the same run's copy bandwidth
#   bench-kernels   fwd+bwd per op, dtype and row-length class: the kernels beside our XLA path and
#                   the peers (the rows --record-defaults reads)
#   sweep           jaxsoftmax against its JAX peer over rows x row lengths, heat maps
#   record-defaults the kernel default table with this device's run: DIR/defaults.json (copy it
#                   to jaxsoftmax/_src/kernels/defaults.json and commit it with DIR's results)
#   kernels-lenient the kernels step's tests again with the Pallas Triton backend's
#                   DeprecationWarning ignored (kernels-deprecation-ignored.xml): whether the
#                   kernels compile and match where jax deprecates their backend; the table reads
#                   only kernels.xml
# GPU_PLAN_DRY_RUN=1 runs the same steps on this CPU with tiny shapes (the kernels interpreted),
# so the plan is proven end to end where no GPU is (tests/bench/test_sweep.py runs it).
#   apart           (short plan only) benchmarks/gpu_apart_ab.py: the CUDA fence of
#                   rows.rebuilt_apart on and off beside the peer (apart.log)
#   hlo             benchmarks/hlo_side_by_side.py --dump: both sides' compiled programs of the
#                   cells left under the floor on a GPU (hlo/), to read on a machine without one
# GPU_PLAN_SHORT=1 (`make gpu-short`) is a session of 15 minutes of device time: one device command
# of at most 570 s (info, parity, a sweep of rows {64, 4096} by lengths {10, 1024, 8192, 32768},
# the kernel tests both ways, apart, hlo), as the fourth and fifth GPU sessions ran it
# (benchmarks/NOTES.md).
# GPU_PLAN_STEPS="info kernels ..." runs only those steps, GPU_PLAN_KERNELS / GPU_PLAN_SWEEP
# replace the bench-kernels / sweep arguments, and GPU_PLAN_LIST=1 prints each step's limit in
# seconds and runs nothing. GPU_PLAN_ARCHIVE=FILE (outside DIR) rewrites FILE, a .tgz of DIR, after
# every step: the device tool carries back only a few files per command and nothing from a killed
# one's scratch space, so `GPU_PLAN_ARCHIVE=$OUT/results.tgz` keeps every finished step's files
# (the fifth GPU session lost its parity report and sweep JSON without it).
set -u
OUT_DIR=${1:-${JAXSOFTMAX_RESULTS:-}}
if [ -z "$OUT_DIR" ]; then
  echo "usage: bash tools/gpu_plan.sh RESULTS_DIR (or JAXSOFTMAX_RESULTS=DIR)" >&2
  exit 2
fi
DRY=${GPU_PLAN_DRY_RUN:-0}
if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python}; fi
SCALE=${GPU_PLAN_SCALE:-1}          # multiplies every step's time limit
LIST=${GPU_PLAN_LIST:-0}
ARCHIVE=${GPU_PLAN_ARCHIVE:-}
case "$ARCHIVE" in
  "$OUT_DIR"/*) echo "GPU_PLAN_ARCHIVE must be outside the results folder, got $ARCHIVE" >&2; exit 2 ;;
esac
if [ "$LIST" != 1 ]; then mkdir -p "$OUT_DIR" && : >"$OUT_DIR/steps.txt"; fi
archive() {  # DIR as a .tgz at $ARCHIVE, replaced only once complete (a kill mid-tar keeps the last)
  [ -n "$ARCHIVE" ] || return 0
  tar czf "$ARCHIVE.part" -C "$OUT_DIR" . && mv -f "$ARCHIVE.part" "$ARCHIVE"
}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
# A step that runs over its limit gets SIGABRT first, and faulthandler prints where it was.
export PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1
failed=0
SHORT=${GPU_PLAN_SHORT:-0}
if [ "$SHORT" = 1 ]; then
  STEPS=${GPU_PLAN_STEPS:-info parity sweep kernels kernels-lenient apart hlo}
else
  STEPS=${GPU_PLAN_STEPS:-info kernels kernels-lenient parity bandwidth bench-kernels sweep record-defaults hlo}
fi
step() {  # step NAME SECONDS COMMAND...: one step under a limit, logged, its status recorded
  local name=$1 limit=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) echo "== $name: skipped (not in this plan's steps)"; return 0 ;; esac
  if [ "$LIST" = 1 ]; then echo "$name $((limit * SCALE))"; return 0; fi
  local t0=$SECONDS
  echo "== $name (limit $((limit * SCALE)) s)"
  timeout --signal=ABRT --kill-after=10 $((limit * SCALE)) "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || failed=1
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT_DIR/steps.txt"
  tail -n 12 "$OUT_DIR/$name.log"
  archive
}
CLI="$PY -m jaxsoftmax.cli"
KERNELS_OVERRIDE=${GPU_PLAN_KERNELS:-}
SWEEP_OVERRIDE=${GPU_PLAN_SWEEP:-}
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  KERNEL_TESTS="dispatch or default or table or record"
  PARITY="--ops softmax --dtypes float32"
  BANDWIDTH="--ops softmax --shapes 64x128 --modes fwd --dtypes float32 --budget 0.2 --impls jax.nn"
  KERNELS="--ops softmax --shapes 64x128 --dtypes float32 --budget 0.2"
  SWEEP="--ops softmax --rows 1 64 --cols 2 128 --dtypes float32 --modes fwd+bwd --budget 0.05"
  HLO="softmax float32 fwd+bwd 64x128"
  INFO="import jax; print('dry run on', jax.devices()[0].device_kind, jax.__version__)"
else
  DEVICE=gpu
  KERNEL_TESTS="compiled or lowers or dispatch or default or table or record"
  PARITY="--dtypes float32 bfloat16"
  # torch.compile is left out: inductor compiles each shape for tens of seconds
  BANDWIDTH="--preset gpu --ops softmax log_softmax --modes fwd --dtypes float32 bfloat16 --budget 2 --impls jaxsoftmax[xla] jaxsoftmax[pallas] jax.nn torch"
  KERNELS="--ops softmax log_softmax cross_entropy --shapes 4096x1024 4096x8192 4096x32768 8192x131072 --dtypes float32 bfloat16 --budget 1"
  SWEEP="--dtypes float32 bfloat16 --modes fwd+bwd --budget 0.2"
  INFO="import jax, torch; d = jax.devices()[0]; print(jax.__version__, d, d.device_kind, torch.__version__, torch.cuda.is_available())"
  # The bfloat16 cells of more than 0.2 ms under the floor on the H200 (fifth GPU session).
  HLO="softmax bfloat16 fwd+bwd 4096x8192 cross_entropy[probs] bfloat16 fwd+bwd 4096x8192 log_softmax bfloat16 fwd+bwd 4096x16384 nll_loss bfloat16 fwd+bwd 4096x1024"
fi
# The short session's limits: parity took 126 s and 111 s, this sweep 274 s and 282 s (and a third
# run went past 285 s at its 96th of 98 cells) and each kernel-test run 15-18 s on an H200
# (2026-11-27).
LIMIT_PARITY=540 LIMIT_SWEEP=540 LIMIT_KERNELS=300
APART="--shapes 4096x1024 4096x8192 4096x32768"
if [ "$SHORT" = 1 ]; then
  LIMIT_PARITY=125 LIMIT_SWEEP=305 LIMIT_KERNELS=25
  if [ "$DRY" != 1 ]; then
    PARITY="--ops softmax log_softmax softmin cross_entropy nll_loss cross_entropy[llm] linear_cross_entropy linear_cross_entropy[llm] --dtypes float32 bfloat16"
    SWEEP="--rows 64 4096 --cols 10 1024 8192 32768 --dtypes float32 bfloat16 --modes fwd+bwd --budget 0.1"
  fi
fi
KERNELS=${KERNELS_OVERRIDE:-$KERNELS}
SWEEP=${SWEEP_OVERRIDE:-$SWEEP}
step info 30 bash -c "(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv) ; $PY -c \"$INFO\""
step kernels $LIMIT_KERNELS $PY -m pytest -q -p no:cacheprovider parity_tests/test_pallas.py \
  -k "$KERNEL_TESTS" --junitxml="$OUT_DIR/kernels.xml"
step kernels-lenient $LIMIT_KERNELS $PY -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
  parity_tests/test_pallas.py -k "$KERNEL_TESTS" --junitxml="$OUT_DIR/kernels-deprecation-ignored.xml"
step parity $LIMIT_PARITY $CLI parity --devices $DEVICE $PARITY --out "$OUT_DIR/parity"
step bandwidth 540 $CLI bench $BANDWIDTH --rss none --out "$OUT_DIR" --append
step bench-kernels 540 $CLI bench $KERNELS --modes fwd+bwd --rss none \
  --impls 'jaxsoftmax[xla]' 'jaxsoftmax[pallas]' jax.nn optax --out "$OUT_DIR" --append
step sweep $LIMIT_SWEEP $CLI bench --sweep $SWEEP --out "$OUT_DIR"
[ "$DRY" = 1 ] && APART=--tiny
step apart 40 $PY benchmarks/gpu_apart_ab.py $APART --out "$OUT_DIR/apart.json"
LIMIT_HLO=60
[ "$SHORT" = 1 ] && LIMIT_HLO=20
# shellcheck disable=SC2086  # HLO is the cells' words, split on purpose
step hlo $LIMIT_HLO $PY benchmarks/hlo_side_by_side.py $HLO --dump "$OUT_DIR/hlo"
RESULTS=$(ls -t "$OUT_DIR"/*.json 2>/dev/null | grep -v -e '/sweep-' -e '/defaults.json' | head -n 1)
step record-defaults 60 $CLI bench --record-defaults "${RESULTS:-$OUT_DIR/missing.json}" \
  --kernels "$OUT_DIR/kernels.xml" --defaults-out "$OUT_DIR/defaults.json"
[ "$LIST" = 1 ] && exit 0
echo "== done: $OUT_DIR"
cat "$OUT_DIR/steps.txt"
exit $failed
