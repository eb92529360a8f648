"""One sweep cell timed with each program's parameters in both orders: jaxsoftmax and its JAX peer,
each compiled twice (``providers.jax_setup(..., reverse=)``), all four interleaved in one loop,
for several rounds. Prints each order's peer / jaxsoftmax ratio per round (issue 17: the order
alone moves a cell by up to 10%, either way by shape; benchmarks/NOTES.md, eighth pass).

    PYTHONPATH=. python benchmarks/argument_order.py cross_entropy float32 fwd+bwd 4096x128 \
        1024x1024 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics

from jaxsoftmax.bench import providers
from jaxsoftmax.bench.measure import time_interleaved
from jaxsoftmax.bench.sweep import MIN_REPS, SWEEP_PEER


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("op", choices=sorted(SWEEP_PEER))
  ap.add_argument("dtype")
  ap.add_argument("mode", choices=["fwd", "bwd", "fwd+bwd"])
  ap.add_argument("shapes", nargs="+", help="e.g. 64x1024 (linear_cross_entropy: NxDxV)")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--budget", type=float, default=1.2, help="seconds per round, all four")
  a = ap.parse_args()
  peer = SWEEP_PEER[a.op]
  for text in a.shapes:
    shape = tuple(int(n) for n in text.split("x"))
    calls = {(impl, rev): providers.jax_setup(a.op, impl, shape, a.dtype, [a.mode],
                                              reverse=rev)[0][a.mode]
             for rev in (False, True) for impl in ("jaxsoftmax", peer)}
    per = {False: [], True: []}
    ours_ms = {False: [], True: []}
    for _ in range(a.rounds):
      times = time_interleaved(calls, reps=1000, budget_s=a.budget, min_reps=MIN_REPS)
      for rev in (False, True):
        mine = statistics.median(times[("jaxsoftmax", rev)])
        per[rev].append(statistics.median(times[(peer, rev)]) / mine)
        ours_ms[rev].append(mine * 1e3)
    both = [statistics.geometric_mean(pair) for pair in zip(per[False], per[True])]
    print(f"{a.op} {a.dtype} {a.mode} {shape}: {peer} / jaxsoftmax per round")
    for rev, name in ((False, "given order"), (True, "reversed")):
      mid = statistics.median(per[rev])
      print(f"  {name:<12} {[round(r, 3) for r in per[rev]]} median {mid:.3f}; "
            f"jaxsoftmax {statistics.median(ours_ms[rev]):.3f} ms")
    print(f"  both (geometric mean per round) {[round(r, 3) for r in both]} median "
          f"{statistics.median(both):.3f}")


if __name__ == "__main__":
  main()
