"""The tutorial's classifiers as Flax NNX modules, initialised as PyTorch initialises them.

Both return logits: softmax stays out of the forward pass, because cross-entropy includes it (the
tutorial's point); apply :func:`jaxsoftmax.softmax` at inference, as :func:`predict_proba` does.

PyTorch's default for ``nn.Linear`` and ``nn.Conv2d`` is ``kaiming_uniform_(a=sqrt(5))`` for the
weight and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for the bias; the weight bound works out to the
same ``1/sqrt(fan_in)``. Flax's default (lecun_normal, zero bias) trains differently, so the models
use PyTorch's, and train like the originals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import jaxsoftmax
from jaxsoftmax._src.torch_compat import torch_uniform

__all__ = ["IncomeClassifier", "DigitClassifier", "predict_proba", "predict_digit"]


def _linear(fan_in: int, fan_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  init = torch_uniform(fan_in)
  return nnx.Linear(fan_in, fan_out, kernel_init=init, bias_init=init, rngs=rngs)


def _conv(in_channels: int, out_channels: int, kernel: int, rngs: nnx.Rngs) -> nnx.Conv:
  init = torch_uniform(in_channels * kernel * kernel)
  return nnx.Conv(in_channels, out_channels, (kernel, kernel), padding="VALID", kernel_init=init,
                  bias_init=init, rngs=rngs)


class IncomeClassifier(nnx.Module):
  """Census-income MLP: ``Linear 13->64 -> ReLU -> Linear 64->32 -> ReLU -> Linear 32->2``.

  Input ``[batch, 13]`` standardised features; output ``[batch, 2]`` logits.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.fc1 = _linear(13, 64, rngs)
    self.fc2 = _linear(64, 32, rngs)
    self.fc3 = _linear(32, 2, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.fc1(x))
    x = jax.nn.relu(self.fc2(x))
    return self.fc3(x)


class DigitClassifier(nnx.Module):
  """MNIST CNN (LeNet-style): two 5x5 convolutions with 2x2 max-pooling, then 256->120->84->10.

  Input ``[batch, 28, 28, 1]`` (NHWC, JAX's layout); output ``[batch, 10]`` logits. Features are
  flattened in PyTorch's NCHW order, so weights loaded from the torch twin give the same outputs.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = _conv(1, 6, 5, rngs)
    self.conv2 = _conv(6, 16, 5, rngs)
    self.fc1 = _linear(16 * 4 * 4, 120, rngs)
    self.fc2 = _linear(120, 84, rngs)
    self.fc3 = _linear(84, 10, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1):
      raise ValueError(f"DigitClassifier expects NHWC images of shape (N, 28, 28, 1); got "
                       f"{x.shape}. (A torch-style (N, 1, 28, 28) batch needs "
                       "x.transpose(0, 2, 3, 1).)")
    x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # flatten as torch does: C, then H, W
    x = jax.nn.relu(self.fc1(x))
    x = jax.nn.relu(self.fc2(x))
    return self.fc3(x)


def predict_proba(model: nnx.Module, x: jax.Array, *, temperature=1.0) -> jax.Array:
  """Class probabilities: the softmax the forward pass leaves out (optionally at a temperature)."""
  return jaxsoftmax.softmax(model(x), axis=-1, temperature=temperature)


def predict_digit(model: DigitClassifier, image: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The tutorial's ``predict_digit``: ``(predicted class, softmax probabilities)``.

  Accepts one image ``[28, 28]`` / ``[28, 28, 1]`` or a batch ``[N, 28, 28, 1]``.
  """
  x = jnp.asarray(image, jnp.float32)
  single = x.ndim in (2, 3)
  if x.ndim == 2:
    x = x[..., None]
  if single:
    x = x[None]
  probs = predict_proba(model, x)
  classes = jnp.argmax(probs, axis=-1)
  return (classes[0], probs[0]) if single else (classes, probs)
