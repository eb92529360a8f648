"""Flax NNX modules mirroring ``torch.nn``: same class names and constructor arguments.

Each module only stores its configuration and calls :mod:`jaxsoftmax.functional` (one exception:
``LinearCrossEntropyLoss`` calls the core with Flax's ``[D, V]`` kernel, which the mirror would take
transposed, a copy outside jit). A class weight is
kept in a :class:`Buffer` (torch's ``register_buffer``): part of the module's state, saved and
restored with it, but not an ``nnx.Param``, so optimizers built on ``nnx.Param`` leave it alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsoftmax._src import linear, torch_compat
from jaxsoftmax._src.losses import LossOptions
from jaxsoftmax import functional as F

__all__ = ["Buffer", "Softmax", "LogSoftmax", "Softmin", "Softmax2d", "CrossEntropyLoss", "NLLLoss",
           "LinearCrossEntropyLoss"]


class Buffer(nnx.Variable):
  """Non-trainable module state, like a torch buffer."""


class _DimModule(nnx.Module):
  _fn = None

  def __init__(self, dim: int | None = None, *, axis_name=None):
    self.dim, self.axis_name = dim, axis_name

  def __call__(self, input: jax.typing.ArrayLike) -> jax.Array:
    # _stacklevel=4 makes torch's implicit-dim warning point at the caller of the module.
    return type(self)._fn(input, self.dim, _stacklevel=4, axis_name=self.axis_name)

  def __repr__(self) -> str:
    extra = "" if self.axis_name is None else f", axis_name={self.axis_name!r}"
    return f"{type(self).__name__}(dim={self.dim}{extra})"


class Softmax(_DimModule):
  """``torch.nn.Softmax(dim=None)``: rescales ``dim`` to sum to one."""

  _fn = staticmethod(F.softmax)


class LogSoftmax(_DimModule):
  """``torch.nn.LogSoftmax(dim=None)``."""

  _fn = staticmethod(F.log_softmax)


class Softmin(_DimModule):
  """``torch.nn.Softmin(dim=None)``: ``softmax(-x)``."""

  _fn = staticmethod(F.softmin)


class Softmax2d(nnx.Module):
  """``torch.nn.Softmax2d()``: softmax over channels at every location of ``(N, C, H, W)`` or
  ``(C, H, W)`` input (channel dim -3, torch's NCHW layout)."""

  def __call__(self, input: jax.typing.ArrayLike) -> jax.Array:
    x = jnp.asarray(input)
    if x.ndim not in (3, 4):
      raise ValueError(f"Softmax2d: expected input to be 3D or 4D, got {x.ndim}D instead "
                       f"(shape {x.shape}).")
    return F.softmax(x, -3)


class _WeightedLoss(nnx.Module):

  def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean",
               axis_name=None, batch_axis_name=None):
    # Resolved once here, as torch's _Loss does, so the legacy warning fires at construction.
    self.reduction = torch_compat.legacy_reduction(size_average, reduce, reduction, stacklevel=5)
    # JAX-side extensions: the class axis / rows split over mesh axes inside shard_map (the
    # weight given here is then this shard's block).
    self.axis_name, self.batch_axis_name = axis_name, batch_axis_name
    self.weight = None if weight is None else Buffer(jnp.array(weight, copy=True))

  def _weight(self):
    return None if self.weight is None else self.weight[...]


class CrossEntropyLoss(_WeightedLoss):
  """``torch.nn.CrossEntropyLoss``: :func:`jaxsoftmax.functional.cross_entropy` as a module.

  Example:
    >>> loss = CrossEntropyLoss(label_smoothing=0.1)
    >>> loss(jnp.array([[2.0, 0.5, -1.0]]), jnp.array([0])).round(4)
    Array(0.3913, dtype=float32)
  """

  def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
               reduction: str = "mean", label_smoothing: float = 0.0, *, axis_name=None,
               batch_axis_name=None):
    super().__init__(weight, size_average, reduce, reduction, axis_name, batch_axis_name)
    self.ignore_index = ignore_index
    self.label_smoothing = label_smoothing

  def __call__(self, input, target) -> jax.Array:
    return F.cross_entropy(input, target, weight=self._weight(), ignore_index=self.ignore_index,
                           reduction=self.reduction, label_smoothing=self.label_smoothing,
                           axis_name=self.axis_name, batch_axis_name=self.batch_axis_name)


class NLLLoss(_WeightedLoss):
  """``torch.nn.NLLLoss``: :func:`jaxsoftmax.functional.nll_loss` as a module."""

  def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
               reduction: str = "mean", *, axis_name=None, batch_axis_name=None):
    super().__init__(weight, size_average, reduce, reduction, axis_name, batch_axis_name)
    self.ignore_index = ignore_index

  def __call__(self, input, target) -> jax.Array:
    return F.nll_loss(input, target, weight=self._weight(), ignore_index=self.ignore_index,
                      reduction=self.reduction, axis_name=self.axis_name,
                      batch_axis_name=self.batch_axis_name)


class LinearCrossEntropyLoss(nnx.Module):
  """``torch.nn.LinearCrossEntropyLoss``: a Linear head fused with cross-entropy.

  The projection is an ``nnx.Linear`` (kernel ``(in_features, C * prod(out_features))``, torch's
  ``linear.weight`` transposed), initialised as torch's ``nn.Linear``; the loss is
  :func:`jaxsoftmax.linear_cross_entropy` (chunked, the logits never formed) for integer targets
  and ``out_features=()``, and the reference path otherwise.

  Example:
    >>> loss = LinearCrossEntropyLoss(16, 100, rngs=nnx.Rngs(0))
    >>> loss(jnp.ones((4, 16)), jnp.array([1, 2, 3, 4])).shape
    ()
  """

  def __init__(self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (),
               bias: bool = False, dtype=jnp.float32, reduction: str = "mean", weight=None,
               ignore_index: int | None = None, label_smoothing: float = 0.0, options=None,
               axis_name=None, batch_axis_name=None, rngs: nnx.Rngs):
    self.num_classes, self.out_features = num_classes, tuple(out_features)
    init = torch_compat.torch_uniform(in_features)
    self.linear = nnx.Linear(in_features, num_classes * math.prod(self.out_features),
                             use_bias=bias, kernel_init=init, bias_init=init, dtype=dtype,
                             param_dtype=dtype, rngs=rngs)
    self.reduction, self.ignore_index = reduction, ignore_index
    self.label_smoothing, self.options = label_smoothing, options
    self.weight = None if weight is None else Buffer(jnp.array(weight, copy=True))
    self.axis_name, self.batch_axis_name = axis_name, batch_axis_name

  def __call__(self, input, target) -> jax.Array:
    kernel = self.linear.kernel[...]
    bias = None if self.linear.bias is None else self.linear.bias[...]
    weight = None if self.weight is None else self.weight[...]
    target = jnp.asarray(target)
    if not self.out_features and jnp.issubdtype(target.dtype, jnp.integer):
      # The core takes the (D, V) kernel as it is: no transposed copy.
      x = jnp.asarray(input)
      chunk = getattr(self.options, "batch_chunk_size", None)
      # The core directly, with Flax's [D, V] kernel: the mirror takes torch's [V, D], and
      # transposing a large kernel outside jit would copy it.
      return linear.validated_call(
          "LinearCrossEntropyLoss", linear.ArgNames("input", "linear.kernel", "target",
                                                    "linear.bias"), x, kernel, target,
          bias=bias, weight=weight, chunk_size=chunk, vocab_first=False,
          options=LossOptions(-100 if self.ignore_index is None else self.ignore_index,
                              self.label_smoothing, self.reduction),
          axis_name=self.axis_name, batch_axis_name=self.batch_axis_name)
    torch_weight = kernel.T.reshape((self.num_classes,) + self.out_features + (kernel.shape[0],))
    return F.linear_cross_entropy(
        input, torch_weight, target, linear_bias=bias, weight=weight, reduction=self.reduction,
        ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, options=self.options,
        axis_name=self.axis_name, batch_axis_name=self.batch_axis_name)
