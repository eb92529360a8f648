"""Re-time sweep cells: jaxsoftmax against its JAX peer, the sweep's own callables and harness
(interleaved, rotated, at least 7 calls a round), three rounds per shape; prints each round's
peer / jaxsoftmax ratio. For telling a cell's spread from a real gap (issue 17).

    PYTHONPATH=. python benchmarks/cell_rounds.py cross_entropy float32 fwd+bwd 64x1024 4096x128
"""

from __future__ import annotations

import argparse
import statistics

from jaxsoftmax.bench import providers
from jaxsoftmax.bench.sweep import SWEEP_PEER
from jaxsoftmax.bench.measure import time_interleaved

def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("op", choices=sorted(SWEEP_PEER))
  ap.add_argument("dtype")
  ap.add_argument("mode", choices=["fwd", "bwd", "fwd+bwd"])
  ap.add_argument("shapes", nargs="+", help="e.g. 64x1024 (linear_cross_entropy: NxDxV)")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--budget", type=float, default=0.6)
  a = ap.parse_args()
  peer = SWEEP_PEER[a.op]
  for text in a.shapes:
    shape = tuple(int(n) for n in text.split("x"))
    calls = {impl: providers.jax_setup(a.op, impl, shape, a.dtype, [a.mode])[0][a.mode]
             for impl in ("jaxsoftmax", peer)}
    ratios = []
    for _ in range(a.rounds):
      times = time_interleaved(calls, reps=1000, budget_s=a.budget, min_reps=7)
      med = {n: statistics.median(v) for n, v in times.items()}
      ratios.append(round(med[peer] / med["jaxsoftmax"], 3))
    print(f"{a.op} {a.dtype} {a.mode} {shape}: {peer} / jaxsoftmax per round {ratios}, "
          f"jaxsoftmax {med['jaxsoftmax'] * 1e3:.3f} ms", flush=True)


if __name__ == "__main__":
  main()
