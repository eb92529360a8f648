"""What a backward run on its own pays per argument (issue 17, the custom_vjp's overhead at small
rows). Every residual a forward keeps is an argument of the backward's executable, so the sweep's
``bwd`` cells at a few microseconds feel each one. Prints, for every sweep op in float32:

* the residual arrays of jaxsoftmax's VJP and of its JAX peer's (the leaves of ``jax.vjp``'s
  function, as the sweep's ``bwd`` mode passes them), and
* the cost of a spare argument: one jitted call of ``x * 2`` at (1, 128) with 0, 1, 3 and 6
  unused (1, 1) arguments, timed in blocks of calls, median over rounds.

    PYTHONPATH=. python benchmarks/residual_arguments.py

Run on this 2-core CPU (jax 0.10.2, benchmarks/NOTES.md, twelfth pass): 7.9, 8.0, 8.7 and 9.4 us,
about 0.25 us an argument; soft-target cross_entropy kept six arrays to optax's three until the
row statistics travelled as one.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from jaxsoftmax.bench import providers
from jaxsoftmax.bench.sweep import SWEEP_PEER


def residuals(op: str, impl: str, shape, dtype: str = "float32") -> list[tuple[int, ...]]:
  """The shapes of the arrays ``impl``'s VJP of ``op`` keeps, built as the sweep builds them."""
  f = providers._jax_fns(op, impl)  # noqa: SLF001  (the sweep's own callables)
  data = providers.inputs(op, shape, dtype)
  labels = data.get("labels")
  args = tuple(jnp.asarray(data[k], dtype) for k in ("x", "w") if k in data)
  _, vjp = jax.jit(lambda labels, *a: jax.vjp(lambda *d: f(labels, *d), *a))(labels, *args)
  return [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(vjp)]


def spare_argument_cost(spares=(0, 1, 3, 6), rounds: int = 15, calls: int = 2000) -> dict:
  """Median microseconds of a jitted call with ``k`` unused row-sized arguments, per ``k``."""
  x = jnp.ones((1, 128))
  extra = [jnp.ones((1, 1)) for _ in range(max(spares))]
  fns = {}
  for k in spares:
    f = jax.jit(lambda x, *unused: x * 2.0)
    args = (x, *extra[:k])
    f(*args).block_until_ready()
    fns[k] = (f, args)
  times: dict = {k: [] for k in spares}
  for _ in range(rounds):
    for k, (f, args) in fns.items():
      start = time.perf_counter()
      for _ in range(calls):
        f(*args).block_until_ready()
      times[k].append((time.perf_counter() - start) / calls * 1e6)
  return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
  for op, peer in SWEEP_PEER.items():
    shape = (64, 256, 10) if op == "linear_cross_entropy" else (64, 10)
    print(f"{op} {shape}: jaxsoftmax {residuals(op, 'jaxsoftmax', shape)}; "
          f"{peer} {residuals(op, peer, shape)}", flush=True)
  cost = spare_argument_cost()
  print("one jitted call with k spare (1, 1) arguments, us:",
        {k: round(v, 2) for k, v in cost.items()})


if __name__ == "__main__":
  main()
