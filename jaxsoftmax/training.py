"""Training steps for the classifiers: optax's Adam and jaxsoftmax's cross-entropy on logits."""

from __future__ import annotations

import jax
from flax import nnx

import jaxsoftmax

__all__ = ["loss_fn", "train_step"]


def loss_fn(model: nnx.Module, x: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of the model's logits (the loss includes the softmax)."""
  return jaxsoftmax.cross_entropy(model(x), labels)


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array,
               labels: jax.Array) -> jax.Array:
  """One optimizer step on a batch; returns the loss before the step."""
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, labels)
  optimizer.update(model, grads)
  return loss
