#!/usr/bin/env bash
# One device session (2026-11-26 second GPU session): probe, parity, reduced sweep.
set -u
export PYTHONPATH=. PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p $O/parity $O/sweep
run() { local name=$1 lim=$2; shift 2; local t0=$SECONDS
  timeout --signal=ABRT --kill-after=5 $lim "$@" >$O/$name.log 2>&1; echo "$name rc=$? s=$((SECONDS-t0))" | tee -a $O/steps.txt; tail -n 40 $O/$name.log; }
run info 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c 'import jax, torch, optax, flax; d=jax.devices()[0]; print(jax.__version__, d.device_kind, torch.__version__, torch.cuda.is_available(), optax.__version__, flax.__version__)'"
run probe 170 python benchmarks/residual_probe.py --out $O
run parity 100 python -m jaxsoftmax.cli parity --devices gpu --dtypes bfloat16 float32 --ops softmax log_softmax softmin cross_entropy nll_loss --out $O/parity
run sweep 120 python -m jaxsoftmax.cli bench --sweep --ops softmax log_softmax cross_entropy --rows 64 4096 --cols 10 1024 32768 --dtypes float32 bfloat16 --modes fwd+bwd --budget 0.1 --out $O/sweep
cat $O/steps.txt
