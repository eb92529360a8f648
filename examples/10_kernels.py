"""Which kernel runs: implementation=None | "xla" | "pallas".

On a GPU or TPU the default takes the Pallas kernels; on a CPU it takes XLA, and "pallas" runs the
same Triton kernels in Pallas' interpreter (slow, exact: that is how CI tests them). The kernel for
the platform is picked when the program is lowered, so one jitted function lowers to Triton for
cuda and to Mosaic for tpu.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax

x = jax.random.normal(jax.random.key(0), (4, 1000))
labels = jnp.array([1, 2, 3, 4])
print("default backend:", jax.default_backend())
for impl in (None, "xla", "pallas"):
  loss, grad = jax.value_and_grad(
      lambda x, impl=impl: jaxsoftmax.cross_entropy(x, labels, implementation=impl))(x)
  print(f"implementation={impl!s:7} loss={float(loss):.6f} |grad|={float(jnp.abs(grad).sum()):.6f}")

ref = jaxsoftmax.softmax(x, implementation="xla")
print("softmax, pallas vs xla, max |diff|:",
      float(np.abs(np.asarray(jaxsoftmax.softmax(x, implementation="pallas")) - ref).max()))
for platform, marker in (("cuda", "xla.gpu.triton"), ("tpu", "tpu_custom_call")):
  text = jax.jit(lambda x: jaxsoftmax.softmax(x, implementation="pallas")).trace(x).lower(
      lowering_platforms=(platform,)).as_text()
  print(f"lowered for {platform}: kernel call present = {marker in text}")
try:
  jaxsoftmax.softmax(x, axis=0, implementation="pallas")
except ValueError as e:
  print("ValueError:", e)
