"""Does fencing softmax's rebuilt residual pay (issue 17, ``family._apart``)? Times fwd+bwd of
jaxsoftmax with the fence as the rule places it (``rule``), never (``never``) and always
(``always``), beside jax.nn, interleaved, three rounds, on the default device; prints each
program's XLA temp memory too (where XLA merged the two passes' float32 ``y``, it doubles).

    PYTHONPATH=. python benchmarks/fence_ab.py --ops softmax --shapes 1024x8192 4096x1024
"""

from __future__ import annotations

import argparse
import statistics

import jax
from jax import lax

from jaxsoftmax._src import family
from jaxsoftmax.bench import providers
from jaxsoftmax.bench.measure import time_interleaved

VARIANTS = {"rule": family._apart,
            "never": lambda kept, axes: kept,
            "always": lambda kept, axes: lax.optimization_barrier(tuple(kept))}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--ops", nargs="+", default=["softmax", "softmin"])
  ap.add_argument("--shapes", nargs="+", default=["1024x8192", "4096x1024"])
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--budget", type=float, default=0.5)
  a = ap.parse_args()
  rule = family._apart
  for op in a.ops:
    for shape in [tuple(int(n) for n in s.split("x")) for s in a.shapes]:
      calls, temp = {}, {}
      for name, fence in [*VARIANTS.items(), ("jax.nn", rule)]:
        family._apart = fence
        jax.clear_caches()  # the ops' own jits would reuse another variant's trace
        try:
          impl = "jax.nn" if name == "jax.nn" else "jaxsoftmax"
          c, t = providers.jax_setup(op, impl, shape, a.dtype, ["fwd+bwd"])
        finally:
          family._apart = rule
        calls[name], temp[name] = c["fwd+bwd"], round(t["fwd+bwd"] or 0.0, 1)
      rounds = []
      for _ in range(3):
        t = time_interleaved(calls, reps=1000, budget_s=a.budget, min_reps=7)
        rounds.append({n: statistics.median(v) for n, v in t.items()})
      ratios = {n: [round(r["jax.nn"] / r[n], 2) for r in rounds] for n in VARIANTS}
      print(f"{op} {a.dtype} {shape}: jax.nn / ours per round {ratios} | temp MiB {temp}",
            flush=True)


if __name__ == "__main__":
  main()
