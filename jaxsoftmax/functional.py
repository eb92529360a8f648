"""A mirror of ``torch.nn.functional``'s softmax family: same names, arguments, defaults, semantics.

Code ported from PyTorch keeps working line for line: ``F.softmax(x, dim=1)``,
``F.cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.1)``. Each function only
translates torch's conventions (``dim``, class dim 1 for K-dimensional inputs, the implicit-dim rule,
``dtype=``, legacy ``size_average``/``reduce``) and calls the core op in :mod:`jaxsoftmax`.

Deliberate differences (see the README's table): integer targets of any width are accepted (JAX
defaults to int32; torch wants int64 or uint8); a negative ``label_smoothing`` raises (torch ignores
it silently); ``gumbel_softmax`` needs an explicit ``key``; ``tau <= 0`` raises.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp

from jaxsoftmax._src import checks, family, linear, losses, torch_compat, xent
from jaxsoftmax._src.errors import ArgumentError, DTypeError

__all__ = ["softmax", "log_softmax", "softmin", "cross_entropy", "nll_loss", "gumbel_softmax",
           "linear_cross_entropy", "LinearCrossEntropyOptions"]


def _family_input(input, dim, dtype, name, stacklevel):
  x = checks.as_array(input)
  if dim is None:
    dim = torch_compat.implicit_dim(name, x.ndim, stacklevel + 1)
  if isinstance(dim, bool) or not isinstance(dim, int):
    raise TypeError(f"{name}(): argument 'dim' must be int, not {type(dim).__name__}.")
  if dtype is not None:
    x = x.astype(torch_compat.to_dtype(dtype))  # torch casts the input before the op
  return x, dim


def softmax(input, dim: int | None = None, _stacklevel: int = 3, dtype=None, *,
            axis_name=None, num_classes=None) -> jax.Array:
  r"""``torch.nn.functional.softmax``: :math:`\exp(x_i) / \sum_j \exp(x_j)` along ``dim``.

  Args:
    input: the input array.
    dim: the dimension that sums to one. ``None`` applies torch's deprecated implicit rule (dim 0
      for 0-, 1- and 3-d inputs, else 1) with its ``UserWarning``.
    _stacklevel: where that warning points, as in torch.
    dtype: if given, the input is cast to it before the operation (as torch's ``dtype=``).
    axis_name: JAX-side extension: inside ``jax.shard_map``, the mesh axis (or axes) ``dim`` is
      split over; see :func:`jaxsoftmax.softmax`. ``num_classes``: the true size of a padded
      ``dim``, likewise.

  Example:
    >>> from jaxsoftmax import functional as F
    >>> F.softmax(jnp.array([[1.0, 2.0, 3.0]]), dim=1).round(4)
    Array([[0.09  , 0.2447, 0.6652]], dtype=float32)
  """
  x, dim = _family_input(input, dim, dtype, "softmax", _stacklevel)
  return family.softmax(x, dim, axis_name=axis_name, num_classes=num_classes)


def log_softmax(input, dim: int | None = None, _stacklevel: int = 3, dtype=None, *,
                axis_name=None, num_classes=None) -> jax.Array:
  """``torch.nn.functional.log_softmax``; arguments as :func:`softmax`."""
  x, dim = _family_input(input, dim, dtype, "log_softmax", _stacklevel)
  return family.log_softmax(x, dim, axis_name=axis_name, num_classes=num_classes)


def softmin(input, dim: int | None = None, _stacklevel: int = 3, dtype=None, *,
            axis_name=None, num_classes=None) -> jax.Array:
  """``torch.nn.functional.softmin``: ``softmax(-input)``; arguments as :func:`softmax`."""
  x, dim = _family_input(input, dim, dtype, "softmin", _stacklevel)
  return family.softmin(x, dim, axis_name=axis_name, num_classes=num_classes)


def _class_dim(x, op) -> int:
  if x.ndim == 0:
    raise ArgumentError(f"{op}: input must have at least 1 dimension (classes); got a 0-d array.")
  return 1 if x.ndim >= 2 else 0


def _check_batch(x, target, op):
  """torch's wording for the commonest mistake: different batch sizes (a ValueError there too)."""
  if x.ndim >= 2 and target.ndim >= 1 and target.shape != x.shape and x.shape[0] != target.shape[0]:
    raise ArgumentError(
        f"{op}: Expected input batch_size ({x.shape[0]}) to match target batch_size "
        f"({target.shape[0]}); input shape {x.shape}, target shape {target.shape}."
    )


def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100,
                  reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, *,
                  axis_name=None, batch_axis_name=None, num_classes=None, z_loss: float = 0.0,
                  logit_softcap: float | None = None, return_lse: bool = False,
                  return_argmax: bool = False, return_accuracy: bool = False,
                  return_z_loss: bool = False):
  r"""``torch.nn.functional.cross_entropy``: log-softmax over dim 1 (dim 0 for 1-d input) + NLL.

  ``input`` is ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``. ``target`` holds class indices of
  shape ``()``, ``(N)`` or ``(N, d1, ..., dK)``, or class probabilities of ``input``'s shape.
  JAX-side extensions: ``axis_name`` (the class dim split over mesh axes inside ``shard_map``)
  and ``batch_axis_name`` (the rows split), ``num_classes`` (the true size of a padded class
  dim), ``z_loss``, ``logit_softcap`` and the ``return_*`` in-pass outputs, as
  :func:`jaxsoftmax.cross_entropy` (torch has none of them: its equivalents are composed, e.g.
  ``F.cross_entropy(c * torch.tanh(x / c), t) + s * (torch.logsumexp(x, 1)**2).mean()``).

  Example:
    >>> from jaxsoftmax import functional as F
    >>> F.cross_entropy(jnp.array([[2.0, 0.5, -1.0]]), jnp.array([0])).round(4)
    Array(0.2413, dtype=float32)
  """
  op = "cross_entropy"
  reduction = torch_compat.legacy_reduction(size_average, reduce, reduction)
  x = checks.as_float_array(input, "input", op)
  target = jnp.asarray(target)
  axis = _class_dim(x, op)
  if target.shape == x.shape:  # torch's rule: same shape means class probabilities
    if not jnp.issubdtype(target.dtype, jnp.floating):
      raise DTypeError(
          f"{op}: Expected floating point type for target with class probabilities, got "
          f"{target.dtype}."
      )
    if ignore_index >= 0:
      raise ArgumentError(f"{op}: ignore_index is not supported for floating point target; got "
                          f"ignore_index={ignore_index}.")
    ignore_index = None
  else:
    if not jnp.issubdtype(target.dtype, jnp.integer):
      raise DTypeError(
          f"{op}: expected target of class indices to have an integer dtype, but got "
          f"{target.dtype} (class probabilities must have input's shape {x.shape}; got "
          f"{target.shape})."
      )
    _check_batch(x, target, op)
  return losses.cross_entropy(x, target, axis=axis, weight=weight, ignore_index=ignore_index,
                               label_smoothing=label_smoothing, reduction=reduction,
                               axis_name=axis_name, batch_axis_name=batch_axis_name,
                               num_classes=num_classes, z_loss=z_loss,
                               logit_softcap=logit_softcap, return_lse=return_lse,
                               return_argmax=return_argmax, return_accuracy=return_accuracy,
                               return_z_loss=return_z_loss)


def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
             reduction: str = "mean", *, axis_name=None, batch_axis_name=None,
             num_classes=None) -> jax.Array:
  """``torch.nn.functional.nll_loss`` on log-probabilities, class dim 1 (0 for 1-d input);
  ``axis_name`` / ``batch_axis_name`` / ``num_classes`` as :func:`cross_entropy`."""
  op = "nll_loss"
  reduction = torch_compat.legacy_reduction(size_average, reduce, reduction)
  x = checks.as_float_array(input, "input", op)
  target = jnp.asarray(target)
  axis = _class_dim(x, op)
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise DTypeError(f"{op}: target must hold integer class indices; got {target.dtype}.")
  _check_batch(x, target, op)
  return losses.nll_loss(x, target, axis=axis, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, axis_name=axis_name,
                         batch_axis_name=batch_axis_name, num_classes=num_classes)


@dataclasses.dataclass(frozen=True)
class LinearCrossEntropyOptions:
  """``torch.nn.LinearCrossEntropyOptions``, as far as it means anything here.

  ``batch_chunk_size`` is the rows per chunk (default: 32 MiB of float32 logits per chunk).
  ``acc_dtype`` is the dtype the weight and bias gradients are summed in across chunks: None
  (float32, torch's ``"auto"`` choice for half inputs on CPU and recent GPUs) or the input's own
  dtype (torch's non-mixed path). ``acc_policy`` picks, in torch, which intermediates use
  ``acc_dtype`` and whether a scratch buffer is kept; here every policy sums ``dw``/``db`` in
  ``acc_dtype`` and keeps the logit gradient in float32, which is what ``"accurate"`` does, so it
  is validated and otherwise has no effect. A torch ``LinearCrossEntropyOptions`` instance is
  accepted as well.
  """

  batch_chunk_size: int | None = None
  chunking_method: str | None = "auto"
  acc_policy: str = "auto"
  acc_dtype: object = None
  allow_retain_graph: bool = False

  def __post_init__(self):
    if self.acc_policy not in _ACC_POLICIES:
      raise ArgumentError(f"LinearCrossEntropyOptions: acc_policy must be one of "
                          f"{sorted(_ACC_POLICIES)}; got {self.acc_policy!r}.")


_ACC_POLICIES = frozenset({"auto", "accurate", "balanced", "compact"})


def acc_dtype_of(options):
  """``options.acc_dtype`` (a torch or JAX dtype, or None) as a JAX dtype, or None."""
  acc = getattr(options, "acc_dtype", None)
  if acc is None:
    return None
  return jnp.dtype(str(acc).removeprefix("torch."))


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction: str = "mean", ignore_index: int | None = None,
                         label_smoothing: float = 0.0, options=None, axis_name=None,
                         batch_axis_name=None, num_classes=None, z_loss: float = 0.0,
                         logit_softcap: float | None = None, return_lse: bool = False,
                         return_argmax: bool = False, return_accuracy: bool = False,
                         return_z_loss: bool = False, filter_eps=None):
  r"""``torch.nn.functional.linear_cross_entropy``: ``cross_entropy(linear(input, W, b), target)``.

  ``input`` is ``(D)`` or ``(N, D)``; ``linear_weight`` is torch's ``(C, D)`` (or
  ``(C, d1, ..., dK, D)`` for a K-dimensional loss); ``target`` holds class indices of shape
  ``()``/``(N)``/``(N, d1, ..., dK)`` or class probabilities ``(C)``/``(N, C)``/``(N, C, d1..dK)``.

  Integer targets with a 2-d weight run the chunked core (:func:`jaxsoftmax.linear_cross_entropy`,
  never forming the logits), whatever ``options`` is: torch's reference (``options=None``) and
  chunked paths compute the same loss. Probability targets and K-dimensional weights form the
  logits and call :func:`cross_entropy`, as torch's chunked path falls back to its reference.
  ``ignore_index=None`` means -100 for class indices, as in torch. JAX-side extensions:
  ``axis_name`` (``linear_weight``'s C axis split over mesh axes inside ``shard_map``) and
  ``batch_axis_name`` and ``num_classes``, ``z_loss``, ``logit_softcap``, the ``return_*``
  outputs and ``filter_eps``, as :func:`jaxsoftmax.linear_cross_entropy`; chunked path only.
  ``options.acc_dtype`` is honoured (see :class:`LinearCrossEntropyOptions`).
  """
  op = "linear_cross_entropy"
  x = checks.as_float_array(input, "input", op)
  w = checks.as_float_array(linear_weight, "linear_weight", op)
  target = jnp.asarray(target)
  if x.ndim not in (1, 2):
    raise ArgumentError(f"{op}: input must be (in_features) or (N, in_features); got shape "
                        f"{x.shape}.")
  if w.ndim < 2:
    raise ArgumentError(f"{op}: linear_weight must be (C, in_features) or (C, d1, ..., dK, "
                        f"in_features); got shape {w.shape}.")
  if w.ndim > 2 and x.ndim != 2:
    raise ArgumentError(f"{op}: a K-dimensional linear_weight {w.shape} needs batched input "
                        f"(N, in_features); got input of shape {x.shape}.")
  chunk = getattr(options, "batch_chunk_size", None)  # None: no options, or torch's auto
  indices = jnp.issubdtype(target.dtype, jnp.integer)
  extras = dict(z_loss=z_loss, logit_softcap=logit_softcap, return_lse=return_lse,
                return_argmax=return_argmax, return_accuracy=return_accuracy,
                return_z_loss=return_z_loss)
  if indices and w.ndim == 2 and target.shape == x.shape[:-1]:
    checks.check_flags(op, **{k: v for k, v in extras.items() if k.startswith("return_")})
    return linear.validated_call(
        op, linear.ArgNames("input", "linear_weight", "target", "linear_bias"), x, w, target,
        bias=linear_bias, weight=weight, chunk_size=chunk, vocab_first=True,
        options=losses.LossOptions(-100 if ignore_index is None else ignore_index,
                                   label_smoothing, reduction, z_loss, logit_softcap),
        axis_name=axis_name, batch_axis_name=batch_axis_name, num_classes=num_classes,
        outputs=xent.Outputs(return_lse, return_argmax, return_accuracy, return_z_loss),
        filter_eps=filter_eps, accumulation_dtype=acc_dtype_of(options))
  if (axis_name is not None or batch_axis_name is not None or num_classes is not None
      or filter_eps is not None):
    raise ArgumentError(f"{op}: axis_name, batch_axis_name, num_classes and filter_eps need "
                        f"integer targets of input's batch shape and a 2-d linear_weight (the "
                        f"chunked path); got target {target.dtype} {target.shape} and "
                        f"linear_weight {w.shape}.")
  # The reference path: form the logits (N, C, d1, ..., dK), then cross_entropy over dim 1.
  if x.shape[-1] != w.shape[-1]:
    raise ArgumentError(f"{op}: input's in_features {x.shape[-1]} (shape {x.shape}) must equal "
                        f"linear_weight's last dimension (shape {w.shape}).")
  if x.dtype != w.dtype:
    raise DTypeError(f"{op}: input and linear_weight must have the same dtype; got input "
                     f"{x.dtype} and linear_weight {w.dtype}.")
  # Half inputs: float32 logits (float32 accumulation), the loss rounded once at the end.
  ct = checks.compute_dtype(x.dtype)
  out_shape = w.shape[:-1]
  logits = jax.lax.dot_general(x, w.reshape(math.prod(out_shape), w.shape[-1]),
                               (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=ct)
  if linear_bias is not None:
    b = checks.as_float_array(linear_bias, "linear_bias", op)
    if b.shape != out_shape and b.shape != (math.prod(out_shape),):
      raise ArgumentError(f"{op}: linear_bias must have shape {out_shape}; got {b.shape}.")
    logits = logits + b.astype(ct).reshape((1,) * (logits.ndim - 1) + (-1,))
  logits = logits.reshape(x.shape[:-1] + out_shape)
  if not indices:
    target = target.astype(ct)
  out = cross_entropy(logits, target, weight=weight,
                      ignore_index=-100 if ignore_index is None else ignore_index,
                      reduction=reduction, label_smoothing=label_smoothing, **extras)
  if isinstance(out, tuple):
    return out[0].astype(x.dtype), out[1]
  return out.astype(x.dtype)


def gumbel_softmax(logits, tau: float = 1, hard: bool = False, eps: float = 1e-10, dim: int = -1,
                   *, key: jax.Array) -> jax.Array:
  r"""``torch.nn.functional.gumbel_softmax``: a differentiable sample from a categorical.

  .. math:: y = \mathrm{softmax}((\text{logits} + g) / \tau),\quad g \sim \mathrm{Gumbel}(0, 1)

  Args:
    logits: unnormalised log-probabilities.
    tau: temperature, > 0.
    hard: return one-hot samples whose gradient is that of the soft sample (straight-through).
    eps: deprecated and unused, as in torch (a value other than 1e-10 warns).
    dim: the category dimension.
    key: a ``jax.random`` key; JAX has no global RNG, so unlike torch it is required.
  """
  if eps != 1e-10:
    warnings.warn("`eps` parameter is deprecated and has no effect.", stacklevel=2)
  logits = checks.as_float_array(logits, "logits", "gumbel_softmax")
  gumbels = jax.random.gumbel(key, logits.shape, checks.compute_dtype(logits.dtype))
  return torch_compat.gumbel_softmax_from_noise(logits, gumbels, tau, hard, dim)
