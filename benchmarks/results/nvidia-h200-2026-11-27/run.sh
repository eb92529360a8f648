#!/usr/bin/env bash
# One device session (2026-11-27, fourth GPU session, 15 minutes of device time): parity on CUDA at
# today's code (softmax's rebuilt residual fenced from 16384 classes since the third session), a
# sweep of every op in fwd+bwd over rows {64, 4096} x lengths {10, 1024, 8192, 32768}, then the compiled-kernel tests.
# The results are tarred after every step: the device tool returns few files, and a step stopped
# by its limit must not take the others' results with it.
# DRY=1 runs the same steps on this CPU with tiny settings (to check the script before the device).
set -u
export PYTHONPATH=. PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; R=$O/r; mkdir -p $R/parity $R/sweep
PY=${PY:-python}; DEV=gpu; ROWS="64 4096"; COLS="10 1024 8192 32768"; DT="float32 bfloat16"
POPS="softmax log_softmax softmin cross_entropy nll_loss cross_entropy[llm] linear_cross_entropy linear_cross_entropy[llm]"
if [ "${DRY:-0}" = 1 ]; then DEV=cpu; ROWS="64"; COLS="10"; DT=float32; POPS=softmax; fi
run() { local name=$1 lim=$2; shift 2; local t0=$SECONDS
  timeout --signal=ABRT --kill-after=5 $lim "$@" >$R/$name.log 2>&1
  echo "$name rc=$? s=$((SECONDS-t0))" | tee -a $R/steps.txt; tail -n 25 $R/$name.log
  tar czf $O/results.tgz -C $R .; }
run info 30 bash -c "(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv); $PY -c 'import jax, torch, optax, flax; d=jax.devices()[0]; print(jax.__version__, d.device_kind, torch.__version__, torch.cuda.is_available(), optax.__version__, flax.__version__)'"
run parity 170 $PY -m jaxsoftmax.cli parity --devices $DEV --dtypes $DT --ops $POPS --out $R/parity
run sweep 300 $PY -m jaxsoftmax.cli bench --sweep --rows $ROWS --cols $COLS --dtypes $DT --modes fwd+bwd --budget 0.1 --out $R/sweep
run kernels 45 $PY -m pytest -q -p no:cacheprovider parity_tests/test_pallas.py -k "compiled or lowers or dispatch or default or table or record" --junitxml=$R/kernels.xml
cat $R/steps.txt
