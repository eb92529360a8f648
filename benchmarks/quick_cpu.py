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

def setups(shape):
  labels = jnp.asarray(np.random.default_rng(0).integers(0, shape[1], shape[0]))
  def ce_js(x):
    return jaxsoftmax.cross_entropy(x, labels)
  def ce_optax(x):
    return optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()
  grad = lambda f: jax.jit(jax.grad(f))
  return {
      "softmax": {"jaxsoftmax": grad(lambda x: (jaxsoftmax.softmax(x) * x).sum()),
                  "jax.nn": grad(lambda x: (jax.nn.softmax(x) * x).sum())},
      "log_softmax": {"jaxsoftmax": grad(lambda x: (jaxsoftmax.log_softmax(x) * x).sum()),
                      "jax.nn": grad(lambda x: (jax.nn.log_softmax(x) * x).sum())},
      "cross_entropy": {"jaxsoftmax": grad(ce_js), "optax": grad(ce_optax)},
  }

def main():
  print(f"{'op':14s} {'shape':14s} {'provider':11s} {'median ms':>10s} {'ratio':>7s}")
  for shape in SHAPES:
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    for op, providers in setups(shape).items():
      for f in providers.values():
        f(x).block_until_ready()  # compile + warm up
      times = {name: [] for name in providers}
      for _ in range(REPEATS):  # interleaved, so load on the machine hits every provider alike
        for name, f in providers.items():
          start = time.perf_counter()
          f(x).block_until_ready()
          times[name].append((time.perf_counter() - start) * 1e3)
      medians = {k: statistics.median(v) for k, v in times.items()}
      base = medians["jaxsoftmax"]
      for name, m in medians.items():
        print(f"{op:14s} {str(shape):14s} {name:11s} {m:10.2f} {m / base:7.2f}")

if __name__ == "__main__":
  main()
