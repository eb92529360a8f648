"""GPU probe (issue 17, fourth GPU session): log_softmax's 16-bit fwd+bwd with the backward
rebuilding ``m``, ``e`` and ``s`` from a fenced ``x`` (``lax.optimization_barrier``), beside the
shipped rule (the backward takes the forward's ``s``) and jax.nn, interleaved, three rounds, with
each compiled program's kernel count.

On the H200 the shipped program is three kernels where jax.nn's is two: XLA computes ``s`` in a
kernel of its own, because the forward and the backward both use it, and so reads ``x`` once more
(benchmarks/results/nvidia-h200-2026-11-27/hlo). The variant leaves the forward's ``s`` one user.
Since it was measured the shipped rule does the same on CUDA below 16384 classes
(``rows.rebuilt_apart``): there "shipped" and "apart" should now time the same.

    PYTHONPATH=. python benchmarks/log_softmax_apart_ab.py [--shapes 4096x8192 ...] [--tiny]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

import jaxsoftmax

# Run as a script, benchmarks/ is on sys.path.
from gpu_residual_ab import kernels, medians_of_rounds  # noqa: E402


@jax.custom_vjp
def apart(x):
  return apart_fwd(x)[0]


def apart_fwd(x):
  xc = x.astype(jnp.float32)
  m = jnp.max(x, axis=-1, keepdims=True).astype(jnp.float32)
  s = jnp.sum(jnp.exp(xc - m), axis=-1, keepdims=True)
  return ((xc - m) - jnp.log(s)).astype(x.dtype), x


def apart_bwd(x, g):
  (x,) = lax.optimization_barrier((x,))
  xc = x.astype(jnp.float32)
  m = jnp.max(x, axis=-1, keepdims=True).astype(jnp.float32)
  e = jnp.exp(xc - m)
  s = jnp.sum(e, axis=-1, keepdims=True)
  gc = g.astype(jnp.float32)
  return ((gc + e * (-jnp.sum(gc, axis=-1, keepdims=True) / s)).astype(g.dtype),)


apart.defvjp(apart_fwd, apart_bwd)


def program(fn, x, g):
  @jax.jit
  def step(x, g):
    y, vjp = jax.vjp(fn, x)
    return y, vjp(g)[0]
  compiled = step.lower(x, g).compile()
  return (lambda: jax.block_until_ready(compiled(x, g))), compiled


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--shapes", nargs="+", default=["4096x1024", "4096x8192", "4096x32768",
                                                   "64x32768", "1024x32768"])
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--budget", type=float, default=0.15)
  a = ap.parse_args()
  shapes = ["64x128"] if a.tiny else a.shapes
  for shape in shapes:
    n, v = (int(k) for k in shape.split("x"))
    kx, kg = jax.random.split(jax.random.key(0))
    x = (3 * jax.random.normal(kx, (n, v))).astype(jnp.bfloat16)
    g = jax.random.normal(kg, (n, v)).astype(jnp.bfloat16)
    fns = {"shipped": jaxsoftmax.log_softmax, "apart": apart, "jax.nn": jax.nn.log_softmax}
    calls, nk = {}, {}
    for name, fn in fns.items():
      calls[name], compiled = program(fn, x, g)
      nk[name] = kernels(compiled)
    y0, d0 = calls["shipped"]()
    y1, d1 = calls["apart"]()
    same = bool(jnp.array_equal(y0, y1)) and bool(jnp.array_equal(d0, d1))
    med = medians_of_rounds(calls, a.budget)
    print(f"log_softmax bf16 {shape:11s} ms shipped {med['shipped']:.4f} apart {med['apart']:.4f}"
          f" jax.nn {med['jax.nn']:.4f} | peer/shipped {med['jax.nn'] / med['shipped']:.2f}"
          f" peer/apart {med['jax.nn'] / med['apart']:.2f} | kernels {nk} | same bits {same}",
          flush=True)


if __name__ == "__main__":
  main()
