"""Why log_softmax's 16-bit forward at short rows ((1024, 10), bfloat16) is 0.75x of jax.nn on
XLA:CPU, and which formulations would not be (issue 17). Times, interleaved, three rounds, the
forward of: jax.nn, jaxsoftmax, and standalone float32-compute formulations of the unrolled
short-row path; prints each one's largest difference from jaxsoftmax's output and how many of its
fusions XLA:CPU splits over threads (``outer_dimension_partitions``).

    PYTHONPATH=. python benchmarks/short_row_forms.py --shape 1024x10 --dtype bfloat16

The formulations, for ``x`` converted to float32, row max ``m``, ``s = sum exp(x - m)``:
  torch-order     (x - m) - log s, torch's order (its CPU kernel keeps it on purpose), the
                  statistics over the transposed ``[C, N]`` view (contiguous vectors of N)
  lse             x - (m + log s): one row vector for the output, but m + log s is rounded at the
                  magnitude of the logits (torch's note: x = [1e4, 1e4] gives 0.69336, not log 2)
  compensated     (x - hi) - lo, hi + lo = m + log s exactly (two-sum): two vectors, neither the
                  cheap max chain
  compensated-rows  the same over the untransposed ``[N, 1]`` statistics (column slices)

Run at f062306 plus this script's last form (2026-11-27; jax.nn / form, three rounds):
jaxsoftmax 0.87, 0.96, 0.97, with its output loop (which recomputes the unrolled max) split over
both threads; torch-order 1.09-1.26, also split; lse 1.32-1.57 and compensated 1.59-1.71, neither
split; compensated-rows 1.11-1.16, its sum loop split instead. Earlier runs of the same forms
gave jaxsoftmax 0.68-0.87 and torch-order 0.83-1.23: the split is what the runs agree on, the
margins move with the machine. Not adopted: lse rounds at the logits' magnitude, and
compensated differs from torch's order in the last float32 bit and would change every short-row
path's layout on a CPU for one 0.1 ms cell (0.75 in the 2cc1568 sweep, 0.95 in the sweep at
d7d236c); benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

import jaxsoftmax
from jaxsoftmax.bench.measure import time_interleaved


def _stats(v):
  """Row max and log-sum over the transposed view, unrolled over the (few) classes."""
  xt = v.astype(jnp.float32).T
  m = xt[0]
  for j in range(1, xt.shape[0]):
    m = jnp.maximum(m, xt[j])
  s = jnp.exp(xt[0] - m)
  for j in range(1, xt.shape[0]):
    s = s + jnp.exp(xt[j] - m)
  return m, jnp.log(s)


def torch_order(v):
  m, ls = _stats(v)
  return ((v.astype(jnp.float32) - m[:, None]) - ls[:, None]).astype(v.dtype)


def lse(v):
  m, ls = _stats(v)
  return (v.astype(jnp.float32) - (m + ls)[:, None]).astype(v.dtype)


def _two_sum(m, ls):
  """hi, lo with hi + lo == m + ls exactly (two-sum, whichever is larger)."""
  hi = m + ls
  t = hi - m
  return hi, (m - (hi - t)) + (ls - t)


def compensated(v):
  # hi and lo are formed as [N] vectors and broadcast after: formed at [N, 1] (broadcast first),
  # XLA fused them into the output loop, which it then split over both threads (1.07-1.23x).
  hi, lo = _two_sum(*_stats(v))
  return ((v.astype(jnp.float32) - hi[:, None]) - lo[:, None]).astype(v.dtype)


def compensated_rows(v):
  """The compensated output over ``[N, 1]`` statistics (column slices, as rows.py unrolls)."""
  xc = v.astype(jnp.float32)
  cols = [xc[:, j:j + 1] for j in range(xc.shape[1])]
  m = cols[0]
  for c in cols[1:]:
    m = jnp.maximum(m, c)
  s = sum((jnp.exp(c - m) for c in cols[1:]), jnp.exp(cols[0] - m))
  hi, lo = _two_sum(m, jnp.log(s))
  return ((xc - hi) - lo).astype(v.dtype)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--shape", default="1024x10")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--budget", type=float, default=0.7)
  a = ap.parse_args()
  shape = tuple(int(n) for n in a.shape.split("x"))
  x = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(a.dtype)
  forms = {"jax.nn": jax.nn.log_softmax, "jaxsoftmax": jaxsoftmax.log_softmax,
           "torch-order": torch_order, "lse": lse, "compensated": compensated,
           "compensated-rows": compensated_rows}
  compiled = {n: jax.jit(f).lower(x).compile() for n, f in forms.items()}
  ours = compiled["jaxsoftmax"](x).astype(jnp.float32)
  split = 'outer_dimension_partitions":["'
  for n, c in compiled.items():
    text = c.as_text()
    diff = float(jnp.max(jnp.abs(c(x).astype(jnp.float32) - ours)))
    print(f"{n}: {text.count(' fusion(')} fusions, "
          f"{text.count(split)} split over threads, "
          f"max |difference from jaxsoftmax| {diff:.3g}")
  calls = {n: (lambda c=c: c(x).block_until_ready()) for n, c in compiled.items()}
  for _ in range(3):
    t = time_interleaved(calls, reps=2000, budget_s=a.budget, min_reps=7)
    med = {n: statistics.median(v) for n, v in t.items()}
    print("jax.nn / form:", {n: round(med["jax.nn"] / med[n], 2) for n in med},
          f"(jax.nn {med['jax.nn'] * 1e3:.3f} ms)", flush=True)


if __name__ == "__main__":
  main()
