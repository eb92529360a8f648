"""GPU probe (issue 17): the shipped ``rows.rebuilt_apart`` rule (on CUDA below
``rows.GPU_APART_FROM`` classes a 16-bit backward rebuilds its row statistics from a fenced ``x``)
beside the same programs with the rule off (``GPU_APART_FROM = 0``: the forward's row sum shared
by both passes, as before the fourth GPU session) and the JAX peer: fwd+bwd, interleaved, three
rounds, with each compiled program's kernel count. The programs are the sweep's own
(``providers.jax_setup``).

log_softmax was measured with a hand-written copy of the rule (``log_softmax_apart_ab.py``);
soft-target cross_entropy took it from its HLO alone. This times both as shipped.

    PYTHONPATH=. python benchmarks/gpu_apart_ab.py [--tiny] [--out FILE.json]
"""

from __future__ import annotations

import argparse

import jax

from jaxsoftmax._src import rows
from jaxsoftmax.bench import providers
from jaxsoftmax.bench.sweep import SWEEP_PEER

# Run as a script, benchmarks/ is on sys.path.
from gpu_residual_ab import kernels, medians_of_rounds, save  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--tiny", action="store_true", help="one small shape (a check on a CPU)")
  ap.add_argument("--out")
  ap.add_argument("--budget", type=float, default=0.15)
  ap.add_argument("--ops", nargs="+", default=["log_softmax", "cross_entropy[probs]"])
  ap.add_argument("--shapes", nargs="+", default=["4096x1024", "4096x8192", "16384x4096",
                                                   "4096x16384", "4096x32768"])
  a = ap.parse_args()
  shapes = ["256x4096"] if a.tiny else a.shapes
  shipped, out = rows.GPU_APART_FROM, []
  for op in a.ops:
    for shape in shapes:
      dims = tuple(int(n) for n in shape.split("x"))
      calls, nk = {}, {}
      for name, impl, limit in (("fenced", "jaxsoftmax", shipped), ("shared", "jaxsoftmax", 0),
                                ("peer", SWEEP_PEER[op], shipped)):
        rows.GPU_APART_FROM = limit
        jax.clear_caches()  # the ops' own jits would keep the other rule's trace
        try:
          c, _ = providers.jax_setup(op, impl, dims, "bfloat16", ["fwd+bwd"])
        finally:
          rows.GPU_APART_FROM = shipped
        calls[name] = c["fwd+bwd"]
        nk[name] = kernels(c["fwd+bwd"].__defaults__[-1])
      ms = medians_of_rounds(calls, a.budget)
      row = {"op": op, "shape": dims, "ms": ms, "kernels": nk,
             "peer/fenced": ms["peer"] / ms["fenced"], "peer/shared": ms["peer"] / ms["shared"]}
      out.append(row)
      print(f"{op:22s} bf16 {shape:11s} peer/fenced {row['peer/fenced']:.2f} peer/shared "
            f"{row['peer/shared']:.2f} | ms {ms['fenced']:.4f} {ms['shared']:.4f} "
            f"{ms['peer']:.4f} | kernels {nk}", flush=True)
  save(a.out, out)


if __name__ == "__main__":
  main()
