"""The rebuilt 16-bit backward with ``expf.exp`` against the same program with ``jnp.exp``, beside
the JAX peer: all three interleaved in one process, several rounds (issue 17; benchmarks/NOTES.md,
ninth pass). Prints peer / jaxsoftmax per round for each ``exp``.

    PYTHONPATH=. python benchmarks/rebuild_exp_ab.py log_softmax bfloat16 bwd 1024x1024 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

from jaxsoftmax._src import expf
from jaxsoftmax.bench import providers
from jaxsoftmax.bench.measure import time_interleaved
from jaxsoftmax.bench.sweep import MIN_REPS, SWEEP_PEER


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("op", choices=sorted(SWEEP_PEER))
  ap.add_argument("dtype")
  ap.add_argument("mode", choices=["fwd", "bwd", "fwd+bwd"])
  ap.add_argument("shapes", nargs="+", help="e.g. 64x1024")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--budget", type=float, default=1.2, help="seconds per round, all three")
  a = ap.parse_args()
  peer = SWEEP_PEER[a.op]
  polynomial = expf.exp
  for text in a.shapes:
    shape = tuple(int(n) for n in text.split("x"))
    setup = lambda impl: providers.jax_setup(a.op, impl, shape, a.dtype, [a.mode])[0][a.mode]
    calls = {"expf.exp": setup("jaxsoftmax")}
    jax.clear_caches()  # jaxsoftmax's jitted functions are traced again, now with jnp.exp
    expf.exp = jnp.exp
    try:
      calls["jnp.exp"] = setup("jaxsoftmax")
    finally:
      expf.exp = polynomial
      jax.clear_caches()
    calls[peer] = setup(peer)
    per = {k: [] for k in ("expf.exp", "jnp.exp")}
    for _ in range(a.rounds):
      times = time_interleaved(calls, reps=1000, budget_s=a.budget, min_reps=MIN_REPS)
      for k, v in per.items():
        v.append(statistics.median(times[peer]) / statistics.median(times[k]))
    print(f"{a.op} {a.dtype} {a.mode} {shape}: {peer} / jaxsoftmax per round")
    for k, v in per.items():
      print(f"  {k:<9} {[round(r, 3) for r in v]} median {statistics.median(v):.3f}")


if __name__ == "__main__":
  main()
