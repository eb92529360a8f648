#!/usr/bin/env bash
# The fifth GPU session (2026-11-27, H200, 15 minutes of device time): two device commands at
# 85b59c6.
# run1/: the short plan, its results written under $OUT/r. It finished (465.6 s), but the device
# tool carries back at most 8 files of a command, so parity/ and the sweep's JSON and heat maps
# were lost; plan.log keeps their summaries. (tools/gpu_plan.sh now has GPU_PLAN_ARCHIVE.)
export R=$OUT/r; mkdir -p $R; nvidia-smi --query-gpu=name --format=csv,noheader
GPU_PLAN_SHORT=1 timeout 555 bash tools/gpu_plan.sh $R > $OUT/plan.log 2>&1
# run2-sweep/: the sweep step again, alone, tarred. It ran past the 285 s limit at its 96th of
# 98 cells (sweep.log ends with the SIGABRT traceback); its JSON keeps the 95 finished cells
# (heat maps drawn here with `jaxsoftmax bench --chart FILE.json`).
R=/tmp/r; mkdir -p $R
GPU_PLAN_SHORT=1 GPU_PLAN_STEPS="sweep" timeout 320 bash tools/gpu_plan.sh $R \
  > $R/plan-sweep.log 2>&1
tar czf $OUT/results.tgz -C $R .
