"""Quick CPU check that jaxsoftmax is not slower than jax.nn / optax (issue 2's bar).

The full benchmark harness is a later issue; this interleaves providers in one run and reports
medians and the ratio. Usage: .venv/bin/python benchmarks/quick_cpu.py
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoftmax

SHAPES = [(4096, 1024), (1024, 32768), (65536, 10)]
REPEATS = 40

def setups(shape, labels):
  """fwd+bwd programs; labels are arguments, as in training (a constant would be folded)."""
  grad = lambda f: jax.jit(jax.grad(f))
  return {
      "softmax": {"jaxsoftmax": grad(lambda x, y: (jaxsoftmax.softmax(x) * x).sum()),
                  "jax.nn": grad(lambda x, y: (jax.nn.softmax(x) * x).sum())},
      "log_softmax": {"jaxsoftmax": grad(lambda x, y: (jaxsoftmax.log_softmax(x) * x).sum()),
                      "jax.nn": grad(lambda x, y: (jax.nn.log_softmax(x) * x).sum())},
      "cross_entropy": {
          "jaxsoftmax": grad(lambda x, y: jaxsoftmax.cross_entropy(x, y)),
          "optax": grad(lambda x, y: optax.softmax_cross_entropy_with_integer_labels(x, y).mean()),
      },
  }


def main():
  print(f"{'op':14s} {'shape':14s} {'provider':11s} {'median ms':>10s} {'ratio':>7s}")
  for shape in SHAPES:
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    labels = jnp.asarray(rng.integers(0, shape[1], shape[0]), jnp.int32)
    for op, providers in setups(shape, labels).items():
      for f in providers.values():
        f(x, labels).block_until_ready()  # compile + warm up
      times = {name: [] for name in providers}
      items = list(providers.items())
      for i in range(REPEATS):
        # Interleaved, so load on the machine hits every provider alike, and rotated: identical
        # programs were measured up to 1.7x apart depending on which ran first.
        for name, f in items[i % len(items):] + items[:i % len(items)]:
          start = time.perf_counter()
          f(x, labels).block_until_ready()
          times[name].append((time.perf_counter() - start) * 1e3)
      medians = {k: statistics.median(v) for k, v in times.items()}
      base = medians["jaxsoftmax"]
      for name, m in medians.items():
        print(f"{op:14s} {str(shape):14s} {name:11s} {m:10.2f} {m / base:7.2f}")

if __name__ == "__main__":
  main()
