"""Why softmax subtracts the max: the naive exp/sum form overflows on large logits.

The naive form below exists only here, to show the failure; jaxsoftmax always uses the
max-subtracted ("stable") algorithm. Prints JAX beside PyTorch.
"""

import jax.numpy as jnp
import numpy as np

import jaxsoftmax


def naive_softmax(x):
  e = jnp.exp(x)  # exp(1000) overflows float32 to inf, and inf / inf is NaN
  return e / e.sum(axis=-1, keepdims=True)


def main():
  logits = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], np.float32)
  print("logits:\n", logits)
  print("naive exp/sum      :", np.asarray(naive_softmax(logits)).round(4).tolist())
  print("jaxsoftmax.softmax :", np.asarray(jaxsoftmax.softmax(logits)).round(4).tolist())
  try:
    import torch
  except ImportError:
    print("torch not installed: skipping the PyTorch column")
    return
  print("torch.softmax      :", torch.softmax(torch.from_numpy(logits), -1).numpy().round(4).tolist())


if __name__ == "__main__":
  main()
