"""The memory bound of linear_cross_entropy, read from XLA's compiled memory_analysis (no run)."""

import jax
import jax.numpy as jnp
import optax

import jaxsoftmax

N, D, V = 8192, 512, 32768  # the benchmark shape: naive logits + their gradient = 2 GiB
SHAPES = (jax.ShapeDtypeStruct((N, D), jnp.float32), jax.ShapeDtypeStruct((D, V), jnp.float32),
          jax.ShapeDtypeStruct((N,), jnp.int32))


def _temp_bytes(loss) -> int:
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*SHAPES).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_temp_memory_is_at_most_a_sixteenth_of_the_naive_path():
  naive = _temp_bytes(lambda x, w, y: optax.softmax_cross_entropy_with_integer_labels(
      x @ w, y).mean())
  fused = _temp_bytes(lambda x, w, y: jaxsoftmax.linear_cross_entropy(x, w, y))
  assert naive >= 2 * N * V * 4  # the logits and their gradient, as the issue says (2048 MiB)
  assert fused <= naive / 16, f"fused {fused / 2**20:.1f} MiB vs naive {naive / 2**20:.1f} MiB"


def test_temp_memory_grows_with_the_chunk_not_with_n():
  small = _temp_bytes(lambda x, w, y: jaxsoftmax.linear_cross_entropy(x, w, y, chunk_size=64))
  large = _temp_bytes(lambda x, w, y: jaxsoftmax.linear_cross_entropy(x, w, y, chunk_size=512))
  # Each extra row of a chunk costs about one float32 logits row (V * 4 bytes).
  assert 0.5 * (512 - 64) * V * 4 <= large - small <= 2 * (512 - 64) * V * 4
