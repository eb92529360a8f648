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

from jaxsoftmax._src import adaptive, checks, linear, torch_compat
from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax._src.losses import LossOptions
from jaxsoftmax import functional as F

__all__ = ["AdaptiveLogSoftmaxWithLoss", "Buffer", "Softmax", "LogSoftmax", "Softmin", "Softmax2d", "CrossEntropyLoss", "NLLLoss",
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
               batch_axis_name=None, z_loss: float = 0.0, logit_softcap: float | None = None):
    super().__init__(weight, size_average, reduce, reduction, axis_name, batch_axis_name)
    self.ignore_index = ignore_index
    self.label_smoothing = label_smoothing
    # JAX-side extensions (jaxsoftmax.cross_entropy's): PaLM's z-loss and Gemma-2's soft-cap.
    self.z_loss, self.logit_softcap = z_loss, logit_softcap

  def __call__(self, input, target) -> jax.Array:
    return F.cross_entropy(input, target, weight=self._weight(), ignore_index=self.ignore_index,
                           reduction=self.reduction, label_smoothing=self.label_smoothing,
                           axis_name=self.axis_name, batch_axis_name=self.batch_axis_name,
                           z_loss=self.z_loss, logit_softcap=self.logit_softcap)


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
               axis_name=None, batch_axis_name=None, z_loss: float = 0.0,
               logit_softcap: float | None = None, filter_eps=None, rngs: nnx.Rngs):
    self.num_classes, self.out_features = num_classes, tuple(out_features)
    init = torch_compat.torch_uniform(in_features)
    self.linear = nnx.Linear(in_features, num_classes * math.prod(self.out_features),
                             use_bias=bias, kernel_init=init, bias_init=init, dtype=dtype,
                             param_dtype=dtype, rngs=rngs)
    self.reduction, self.ignore_index = reduction, ignore_index
    self.label_smoothing, self.options = label_smoothing, options
    self.weight = None if weight is None else Buffer(jnp.array(weight, copy=True))
    self.axis_name, self.batch_axis_name = axis_name, batch_axis_name
    self.z_loss, self.logit_softcap, self.filter_eps = z_loss, logit_softcap, filter_eps

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
                              self.label_smoothing, self.reduction, self.z_loss,
                              self.logit_softcap),
          axis_name=self.axis_name, batch_axis_name=self.batch_axis_name,
          filter_eps=self.filter_eps, accumulation_dtype=F.acc_dtype_of(self.options))
    torch_weight = kernel.T.reshape((self.num_classes,) + self.out_features + (kernel.shape[0],))
    return F.linear_cross_entropy(
        input, torch_weight, target, linear_bias=bias, weight=weight, reduction=self.reduction,
        ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, options=self.options,
        axis_name=self.axis_name, batch_axis_name=self.batch_axis_name, z_loss=self.z_loss,
        logit_softcap=self.logit_softcap)


class AdaptiveLogSoftmaxWithLoss(nnx.Module):
  """``torch.nn.AdaptiveLogSoftmaxWithLoss`` (Grave et al., 2017) as a Flax NNX module.

  Same constructor arguments, layers and names as torch (``head``; ``tail[i]`` a pair of Linear
  layers without bias), initialised as torch's ``nn.Linear``; weights move both ways with
  :func:`jaxsoftmax.tutorial.interop.from_torch` / ``to_torch`` under torch's state-dict keys.
  The math is :func:`jaxsoftmax.adaptive_log_softmax_with_loss`.

  Example:
    >>> asm = AdaptiveLogSoftmaxWithLoss(8, 10, [4, 7], rngs=nnx.Rngs(0))
    >>> out = asm(jnp.ones((3, 8)), jnp.array([0, 5, 9]))
    >>> out.output.shape, out.loss.shape
    ((3,), ())
  """

  def __init__(self, in_features: int, n_classes: int, cutoffs, div_value: float = 4.0,
               head_bias: bool = False, *, dtype=jnp.float32, rngs: nnx.Rngs):
    op = "AdaptiveLogSoftmaxWithLoss"
    self.cutoffs = adaptive.check_cutoffs(cutoffs, n_classes, op)  # with n_classes, as torch
    self.in_features, self.n_classes = in_features, n_classes
    self.div_value, self.head_bias = div_value, head_bias
    self.shortlist_size = self.cutoffs[0]
    self.n_clusters = len(self.cutoffs) - 1
    self.head_size = self.shortlist_size + self.n_clusters

    def linear(fan_in, fan_out, bias=False):
      init = torch_compat.torch_uniform(fan_in)
      return nnx.Linear(fan_in, fan_out, use_bias=bias, kernel_init=init, bias_init=init,
                        dtype=dtype, param_dtype=dtype, rngs=rngs)

    self.head = linear(in_features, self.head_size, head_bias)
    tails = []
    for i in range(self.n_clusters):
      hidden = int(in_features // (div_value ** (i + 1)))
      tails.append(nnx.List([linear(in_features, hidden),
                             linear(hidden, self.cutoffs[i + 1] - self.cutoffs[i])]))
    self.tail = nnx.List(tails)

  def _weights(self):
    bias = None if self.head.bias is None else self.head.bias[...]
    return self.head.kernel[...], bias, tuple((a.kernel[...], b.kernel[...]) for a, b in self.tail)

  def __call__(self, input, target) -> adaptive.ASMOutput:
    """``(output, loss)``: each row's ``log p(target)`` and their negative mean."""
    kernel, bias, tails = self._weights()
    return adaptive.adaptive_log_softmax_with_loss(input, target, kernel, tails, self.cutoffs,
                                                   head_bias=bias)

  def log_prob(self, input) -> jax.Array:
    """``(N, n_classes)`` (or ``(n_classes,)``) log-probabilities of every class."""
    x = checks.as_float_array(input, "input", "AdaptiveLogSoftmaxWithLoss.log_prob")
    if x.ndim not in (1, 2) or x.shape[-1] != self.in_features:
      raise ArgumentError(f"AdaptiveLogSoftmaxWithLoss.log_prob: input must be (N, "
                          f"{self.in_features}) or ({self.in_features},); got {x.shape}.")
    kernel, bias, tails = self._weights()
    out = adaptive.log_prob(x if x.ndim == 2 else x[None], kernel, bias, tails, self.cutoffs)
    return out if x.ndim == 2 else out[0]

  def predict(self, input) -> jax.Array:
    """The most likely class of each row (torch's ``predict``: the argmax of :meth:`log_prob`)."""
    return jnp.argmax(self.log_prob(input), axis=-1)
