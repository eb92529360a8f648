"""GPU probe (issue 17, third GPU session): for the sweep's bfloat16 cells under the floor, time
fwd+bwd of jaxsoftmax as shipped (a 16-bit x of >= 2^20 elements keeps x and rebuilds the float32
values: ``checks.REBUILD_FROM``) beside the same code with the float32 residual
(``REBUILD_FROM`` raised past the array) and the JAX peer, interleaved, three rounds; and count
the kernels (fusions, custom calls, copies) of each compiled program.

    PYTHONPATH=. python benchmarks/gpu_residual_ab.py [--tiny] [--out FILE.json]

``--mode bwd`` times the backward alone (its own program, the residual an argument), as the CPU
probe of the sixth pass did (``--ops cross_entropy log_softmax "cross_entropy[probs]" --shapes
1024x1024 2048x1024 4096x1024 --mode bwd``). The compiled-program reach (``__defaults__``) follows
``providers.jax_setup``'s callables; a probe, not an API.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics

import jax

from jaxsoftmax._src import checks
from jaxsoftmax.bench import providers
from jaxsoftmax.bench.measure import time_interleaved
from jaxsoftmax.bench.sweep import SWEEP_PEER


def kernels(compiled) -> int:
  """Top-level instructions in the entry computation that launch work (fusions, custom calls)."""
  text = compiled.as_text()
  entry = text[text.index("ENTRY"):]
  entry = entry[:entry.index("\n}")]
  return len(re.findall(r"= \S+ (fusion|custom-call|copy|all-reduce|sort|scatter|gather)\(", entry))


def medians_of_rounds(calls, budget_s: float, rounds: int = 3) -> dict[str, float]:
  """Milliseconds per call of each program: the median over ``rounds`` interleaved rounds of the
  median call in each round."""
  per_round = []
  for _ in range(rounds):
    t = time_interleaved(calls, reps=1000, budget_s=budget_s, min_reps=7)
    per_round.append({n: statistics.median(v) * 1e3 for n, v in t.items()})
  return {n: statistics.median(r[n] for r in per_round) for n in calls}


def save(path: str | None, rows: list) -> None:
  """The probe's rows as JSON with the device and jax version, where a path is given."""
  if path:
    with open(path, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows},
                f, indent=1)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--out")
  ap.add_argument("--budget", type=float, default=0.15)
  ap.add_argument("--shapes", nargs="+", help="NxV (default: the bfloat16 cells under the floor)")
  ap.add_argument("--dtypes", nargs="+", default=["bfloat16"])
  ap.add_argument("--hlo", help="directory for every compiled program's HLO text")
  ap.add_argument("--mode", default="fwd+bwd", choices=["fwd+bwd", "bwd"])
  ap.add_argument("--ops", nargs="+",
                  default=["softmax", "log_softmax", "cross_entropy", "cross_entropy[probs]",
                           "nll_loss"])
  a = ap.parse_args()
  ops = a.ops
  shapes = [(64, 128), (64, 1024)] if a.tiny else [(4096, 1024), (4096, 8192), (4096, 32768),
                                                   (64, 32768)]
  if a.shapes:
    shapes = [tuple(int(n) for n in s.split("x")) for s in a.shapes]
  dtypes = a.dtypes
  shipped = checks.REBUILD_FROM
  rows = []
  for op in ops:
    for shape in shapes:
      for dtype in dtypes:
        calls, nk = {}, {}
        for name, impl, threshold in (("rebuild", "jaxsoftmax", 0 if a.tiny else shipped),
                                      ("f32res", "jaxsoftmax", 2**62),
                                      ("peer", SWEEP_PEER[op], shipped)):
          checks.REBUILD_FROM = threshold
          jax.clear_caches()  # the ops' own jits would reuse the other threshold's trace
          try:
            c, _ = providers.jax_setup(op, impl, shape, dtype, [a.mode])
          finally:
            checks.REBUILD_FROM = shipped
          calls[name] = c[a.mode]
          compiled = c[a.mode].__defaults__[-1]
          nk[name] = kernels(compiled)
          if a.hlo:
            stem = f"{op}-{dtype}-{shape[0]}x{shape[1]}-{name}".replace("[", "_").replace("]", "")
            with open(f"{a.hlo}/{stem}.txt", "w") as f:
              f.write(compiled.as_text())
        med = medians_of_rounds(calls, a.budget)
        row = {"op": op, "shape": shape, "dtype": dtype, "ms": med, "kernels": nk,
               "peer/rebuild": med["peer"] / med["rebuild"],
               "peer/f32res": med["peer"] / med["f32res"]}
        rows.append(row)
        print(f"{op:22s} {dtype} {shape!s:14s} ms rebuild {med['rebuild']:.4f} f32res "
              f"{med['f32res']:.4f} peer {med['peer']:.4f} | peer/rebuild "
              f"{row['peer/rebuild']:.2f} peer/f32res {row['peer/f32res']:.2f} | kernels {nk}",
              flush=True)
  save(a.out, rows)


if __name__ == "__main__":
  main()
