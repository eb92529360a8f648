"""log_softmax and softmax, forward+backward under jit, jaxsoftmax beside jax.nn: interleaved,
median of 11 calls, three rounds per shape (timings on this CPU are bimodal per process).
A first probe for issue 17: ``.venv/bin/python benchmarks/family_vs_jaxnn.py``."""
import time, numpy as np, jax, jax.numpy as jnp, jaxsoftmax
def bench(f, x, g, reps=11):
  f(x, g)[0].block_until_ready()
  ts = []
  for _ in range(reps):
    t = time.perf_counter(); jax.block_until_ready(f(x, g)); ts.append(time.perf_counter() - t)
  return np.median(ts)
def fb(fn):
  def run(x, g):
    y, vjp = jax.vjp(fn, x); return y, vjp(g)[0]
  return jax.jit(run)
ours = fb(lambda x: jaxsoftmax.log_softmax(x, axis=-1))
peer = fb(lambda x: jax.nn.log_softmax(x, axis=-1))
ours_sm = fb(lambda x: jaxsoftmax.softmax(x, axis=-1))
peer_sm = fb(lambda x: jax.nn.softmax(x, axis=-1))
for shape in [(4096, 1024), (65536, 10), (1024, 32768)]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32); g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  r = []
  for _ in range(3):
    a = bench(ours, x, g); b = bench(peer, x, g); c = bench(ours_sm, x, g); d = bench(peer_sm, x, g)
    r.append((b / a, d / c, a * 1e3, b * 1e3))
  r = np.array(r)
  print(shape, "log_softmax peer/ours", np.round(r[:, 0], 2), "softmax", np.round(r[:, 1], 2), "ms ours/peer", np.round(np.median(r[:, 2]), 2), np.round(np.median(r[:, 3]), 2))
