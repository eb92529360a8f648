"""filter_eps on linear_cross_entropy's backward: time, gradient error and the fraction of
(chunk x 1024-column) tiles actually skipped.

filter_eps=0.0 walks the same blocks and skips none, so "0.0 vs None" is the cost or gain of the
blocked loop itself and "auto/1e-4 vs 0.0" is what skipping buys. N=2048, D=256, V=32768, float32,
interleaved, median of 5. Cases: flat and peaked logits with random labels (chunks of 256 rows,
the default at this V), and confident predictions (the label is the argmax, as in a trained
model) with chunks of 256 and of 16 rows.
Run: .venv/bin/python benchmarks/filter_eps.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax

N, D, V, BLOCK = 2048, 256, 32768, 1024
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)


def skipped(w, y, eps, chunk):
  """Fraction of (chunk, block) tiles whose every |softmax - onehot| <= eps (mean: r_n = 1/N)."""
  if eps is None:
    return 0.0
  eps = float(jnp.finfo(jnp.float32).eps) / 32 if eps == "auto" else eps
  z = np.asarray(x @ w, np.float64)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(N), np.asarray(y)] -= 1.0
  tiles = np.abs(p).reshape(N // chunk, chunk, V // BLOCK, BLOCK).max(axis=(1, 3))
  return float(np.mean(tiles <= eps))


CASES = (("flat", 0.1, False, 256), ("peaked", 8.0, False, 256), ("confident", 30.0, True, 256),
         ("confident", 30.0, True, 16))  # (name, logits' std, label = argmax, chunk rows)
for name, std, confident, chunk in CASES:
  w = jnp.asarray(rng.normal(size=(D, V)) * std / np.sqrt(D), jnp.float32)
  y = jnp.argmax(x @ w, axis=1) if confident else jnp.asarray(rng.integers(0, V, N))
  epss = (None, 0.0, "auto", 1e-4)
  fns = {eps: jax.jit(jax.grad(lambda x, w, y, eps=eps: jaxsoftmax.linear_cross_entropy(
      x, w, y, filter_eps=eps, chunk_size=chunk), (0, 1))) for eps in epss}
  ref = [np.asarray(g) for g in fns[None](x, w, y)]
  times = {k: [] for k in fns}
  for f in fns.values():
    jax.block_until_ready(f(x, w, y))
  for _ in range(5):
    for k, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(x, w, y))
      times[k].append(time.perf_counter() - t)
  for k, f in fns.items():
    err = max(float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())
              for a, b in zip(f(x, w, y), ref))
    print(f"| {name} | {chunk} | {k!s} | {np.median(times[k]) * 1e3:.0f} | "
          f"{np.median(times[None]) / np.median(times[k]):.2f}x | {skipped(w, y, k, chunk):.0%} | "
          f"{err:.1e} |", flush=True)
