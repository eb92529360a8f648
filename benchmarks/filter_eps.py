"""filter_eps on linear_cross_entropy: backward time and gradient error, peaked vs flat predictions
(N=2048, D=256, V=32768, float32, CPU). Run: .venv/bin/python benchmarks/filter_eps.py"""
import time, jax, jax.numpy as jnp, numpy as np, jaxsoftmax as js
rng = np.random.default_rng(0)
n, d, v = 2048, 256, 32768
x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
y = jnp.asarray(rng.integers(0, v, n))
for name, scale in (("peaked", 2.0), ("flat", 0.01)):
  w = jnp.asarray(rng.normal(size=(d, v)) * scale / np.sqrt(d) * 8, jnp.float32)
  fns = {eps: jax.jit(jax.grad(lambda x, w, eps=eps: js.linear_cross_entropy(x, w, y, filter_eps=eps), (0, 1))) for eps in (None, "auto", 1e-4)}
  ref = [np.asarray(g) for g in fns[None](x, w)]
  times = {k: [] for k in fns}
  for f in fns.values(): jax.block_until_ready(f(x, w))
  for _ in range(5):
    for k, f in fns.items():
      t = time.perf_counter(); jax.block_until_ready(f(x, w)); times[k].append(time.perf_counter() - t)
  for k, f in fns.items():
    g = f(x, w); err = max(float(np.abs(np.asarray(a) - b).max() / np.abs(b).max()) for a, b in zip(g, ref))
    print(f"{name:6s} filter_eps={str(k):5s} median {np.median(times[k])*1e3:7.0f} ms  ratio {np.median(times[None])/np.median(times[k]):.2f}x  max rel grad err {err:.2e}")
