"""torch's conventions, in one place: the implicit ``dim``, the legacy ``size_average``/``reduce``
flags, torch dtypes, torch's default initialisation, and Gumbel-softmax given its noise.

The torch mirror (:mod:`jaxsoftmax.functional`, :mod:`jaxsoftmax.nn`) and the tutorial's models
read them; the core ops never do.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp

from jaxsoftmax._src import checks, family

__all__ = ["implicit_dim", "to_dtype", "legacy_reduction", "torch_uniform",
           "gumbel_softmax_from_noise"]


def implicit_dim(name: str, ndim: int, stacklevel: int) -> int:
  """torch's ``_get_softmax_dim``: warns, then picks 0 for 0-, 1- and 3-d inputs, else 1."""
  warnings.warn(
      f"Implicit dimension choice for {name} has been deprecated. "
      "Change the call to include dim=X as an argument.",
      stacklevel=stacklevel,
  )
  return 0 if ndim in (0, 1, 3) else 1


def to_dtype(dtype):
  """Accepts JAX/NumPy dtypes, their names, and torch dtypes (``torch.float32``)."""
  if type(dtype).__module__ == "torch":  # a torch.dtype, without importing torch
    dtype = str(dtype).removeprefix("torch.")
  return jnp.dtype(dtype)


def legacy_reduction(size_average, reduce, reduction, stacklevel=4) -> str:
  """torch's ``_Reduction.legacy_get_string``: the deprecated flags override ``reduction``."""
  if size_average is None and reduce is None:
    return reduction
  size_average = True if size_average is None else size_average
  reduce = True if reduce is None else reduce
  result = ("mean" if size_average else "sum") if reduce else "none"
  warnings.warn(
      f"size_average and reduce args will be deprecated, please use reduction='{result}' instead.",
      stacklevel=stacklevel,
  )
  return result


def gumbel_softmax_from_noise(logits, gumbels, tau, hard, dim):
  """The deterministic part of :func:`gumbel_softmax`, given standard Gumbel noise."""
  ct = checks.compute_dtype(logits.dtype)  # add the noise in float32 too: round only once
  y_soft = family.softmax(logits.astype(ct) + gumbels.astype(ct), dim, temperature=tau)
  y_soft = y_soft.astype(logits.dtype)
  if not hard:
    return y_soft
  axis = checks.normalize_axis(dim, y_soft.ndim, "gumbel_softmax", "dim")
  index = jnp.argmax(y_soft, axis=axis, keepdims=True)  # first maximum, as torch
  y_hard = (jax.lax.broadcasted_iota(index.dtype, y_soft.shape, axis) == index).astype(y_soft.dtype)
  # Straight-through estimator: the value of y_hard, the gradient of y_soft.
  return y_hard - jax.lax.stop_gradient(y_soft) + y_soft




def torch_uniform(fan_in: int):
  """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: torch's default init for Linear/Conv weights and
  biases (``kaiming_uniform_(a=sqrt(5))`` works out to the same bound)."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
