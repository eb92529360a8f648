"""Per-kernel times and XLA's flop count for one sweep cell, jaxsoftmax beside its JAX peer: the
sweep's own callables, 200 calls under ``jax.profiler.trace`` (median duration of each fusion in
the Perfetto trace, and the whole call as ``$providers.py ... <lambda>``; ``threads`` is how many
threads ran it), and ``cost_analysis()["flops"]`` of
the compiled program. XLA:CPU's PjRt client runs a program on the caller's thread only under 1000
flops (benchmarks/NOTES.md, fifteenth pass), so the flop count says which side of that line a
tiny cell is on.

    PYTHONPATH=. python benchmarks/kernel_profile.py log_softmax float32 fwd+bwd 64x2
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import statistics
import tempfile

import jax

from jaxsoftmax.bench import providers
from jaxsoftmax.bench.sweep import SWEEP_PEER


def _kernel_medians(call, calls: int) -> dict[str, tuple[float, int]]:
  for _ in range(50):  # warm
    call()
  out = tempfile.mkdtemp()
  with jax.profiler.trace(out, create_perfetto_trace=True):
    for _ in range(calls):
      call()
  (path,) = glob.glob(out + "/**/perfetto_trace.json.gz", recursive=True)
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  durations, threads = collections.defaultdict(list), collections.defaultdict(set)
  for e in events:
    if e.get("ph") == "X":
      durations[e["name"]].append(e["dur"])
      threads[e["name"]].add(e.get("tid"))
  keep = {n: v for n, v in durations.items()
          if len(v) >= calls and ("fusion" in n or n.startswith(("wrapped", "dot", "scatter"))
                                  or "block_until_ready" in n or n.startswith("$providers.py"))
          and not n.startswith("end:")}
  return {n: (statistics.median(v), len(threads[n])) for n, v in keep.items()}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("op", choices=sorted(SWEEP_PEER))
  ap.add_argument("dtype")
  ap.add_argument("mode", choices=["fwd", "bwd", "fwd+bwd"])
  ap.add_argument("shape", help="e.g. 64x2")
  ap.add_argument("--calls", type=int, default=200)
  a = ap.parse_args()
  shape = tuple(int(n) for n in a.shape.split("x"))
  for impl in ("jaxsoftmax", SWEEP_PEER[a.op]):
    call = providers.jax_setup(a.op, impl, shape, a.dtype, [a.mode])[0][a.mode]
    cost = call.__defaults__[0].cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    print(f"===== {impl}: {cost.get('flops', float('nan')):.0f} flops")
    for name, (us, n) in sorted(_kernel_medians(call, a.calls).items(), key=lambda kv: -kv[1][0]):
      print(f"  {name[:60]:60s} {us:9.2f} us  threads={n}")


if __name__ == "__main__":
  main()
