"""Copies at the framework boundary: every array that crosses between torch, NumPy and JAX, or
comes from a file, is copied, never aliased.

Why: on the CPU, ``jnp.asarray(a, dtype)`` and ``jax.device_put(a)`` may wrap a NumPy buffer
without copying it (seen with jax 0.10.2 on a torch tensor's ``.numpy()`` view), and
``tensor.numpy()`` / ``torch.from_numpy`` always share memory. A JAX array built that way from a
torch parameter changes whenever torch updates the parameter in place (an optimizer step,
``add_``, ``copy_``, ``load_state_dict``), although JAX promises immutable arrays. Copying first
into a fresh NumPy array that nobody else holds makes the result independent of whatever JAX or
torch decide about aliasing. The cost is one copy of the weights per crossing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["numpy_copy", "jax_copy", "torch_copy"]


def numpy_copy(value, dtype=None) -> np.ndarray:
  """A fresh, writable, C-contiguous NumPy array holding ``value`` (a torch tensor on any device,
  a JAX array, a NumPy array or an array-like), optionally cast to ``dtype``."""
  if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds it exactly
      import ml_dtypes  # noqa: PLC0415 - a dependency of jax

      value = value.float().numpy().astype(ml_dtypes.bfloat16)
    else:
      value = value.numpy()
  return np.array(value, dtype=dtype, copy=True, order="C")


def jax_copy(value, dtype=None, device=None):
  """A JAX array that shares no memory with ``value`` (see :func:`numpy_copy`)."""
  import jax  # noqa: PLC0415

  # The intermediate copy is ours alone: whether JAX wraps it or copies it again, nothing else
  # can write to it.
  return jax.device_put(numpy_copy(value, dtype), device)


def torch_copy(value, dtype=None, device="cpu"):
  """A torch tensor that shares no memory with ``value``; ``dtype`` is a torch dtype or None."""
  import torch  # noqa: PLC0415

  array = numpy_copy(value)
  if array.dtype.name == "bfloat16":  # torch.from_numpy knows no ml_dtypes bfloat16
    tensor = torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
  else:
    tensor = torch.from_numpy(array)
  return tensor.to(device=device, dtype=dtype)
