"""The optimized HLO entry computation of log_softmax's forward+backward at (65536, 10), float32,
jaxsoftmax beside jax.nn (issue 17's worst case): ``.venv/bin/python benchmarks/family_hlo.py``."""
import re, numpy as np, jax, jax.numpy as jnp, jaxsoftmax
def fb(fn):
  def run(x, g):
    y, vjp = jax.vjp(fn, x); return y, vjp(g)[0]
  return jax.jit(run)
x = jnp.zeros((65536, 10), jnp.float32)
for name, fn in [("ours", lambda x: jaxsoftmax.log_softmax(x, axis=-1)), ("peer", lambda x: jax.nn.log_softmax(x, axis=-1))]:
  txt = fb(fn).lower(x, x).compile().as_text()
  entry = txt[txt.index("ENTRY"):]
  print(name, "entry ops:", len([l for l in entry.splitlines() if " = " in l]))
  print("\n".join(l.strip()[:160] for l in entry.splitlines() if " = " in l))
