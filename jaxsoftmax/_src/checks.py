"""Trace-time validation shared by the core ops, the torch mirror and the NNX modules.

Every check runs on static information (shapes, dtypes, Python scalars) or on concrete values when
the caller passes them, so it costs nothing under ``jit`` and never uses ``assert``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoftmax._src.errors import ArgumentError, DTypeError

REDUCTIONS = ("mean", "sum", "none")


def is_concrete(x) -> bool:
  """True when ``x`` holds values we may read now (not an abstract tracer)."""
  return not isinstance(x, jax.core.Tracer)


def as_array(x) -> jax.Array:
  """``jnp.asarray(x)``, but an array (or tracer) is returned as it is: ``asarray`` would bind a
  ``convert_element_type`` to its own dtype, which under eager autodiff (``jax.grad`` of an
  unjitted call) is a program of its own, compiled per shape and dtype."""
  return x if isinstance(x, jax.Array) else jnp.asarray(x)


def as_float_array(x, name: str, op: str) -> jax.Array:
  """Converts ``x`` to a JAX array and checks that it is real floating point."""
  arr = as_array(x)
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    raise DTypeError(
        f"{op}: {name} must be a real floating-point array; got dtype {arr.dtype}. "
        f"Cast it first, e.g. {name}.astype(jnp.float32)."
    )
  return arr


def compute_dtype(dtype) -> np.dtype:
  """float16/bfloat16 compute in float32 and round once at the end, as torch does."""
  dtype = np.dtype(dtype)
  return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


#: From this many elements up, a 16-bit input is kept as the backward's residual in place of a
#: float32 array derived from it (the softmax family's y or e, cross_entropy's e), which the
#: backward then rebuilds by the forward's own operations: 2 bytes per element, what jax.nn and
#: optax keep, not 4. Below it the float32 array (at most 4 MiB) is kept: there the rebuilt
#: exponentials made XLA:CPU split the backward's loop over both cores, whose wake-up cost more than
#: the loop (cross_entropy bfloat16 backward at (1024, 2): 0.37x of optax's; (4096, 128): 0.74x;
#: benchmarks/NOTES.md, 2026-11-26 evening).
REBUILD_FROM = 2**20


def rebuilds_from_input(x) -> bool:
  """Whether the backward rebuilds its float32 values from a kept 16-bit ``x`` (REBUILD_FROM)."""
  return compute_dtype(x.dtype) != x.dtype and x.size >= REBUILD_FROM


def normalize_axis(axis, ndim: int, op: str, name: str = "axis") -> int:
  """Wraps a possibly negative axis, as torch's ``maybe_wrap_dim`` does (0-d arrays accept 0 and -1)."""
  if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
    raise TypeError(f"{op}: {name} must be an int; got {axis!r} of type {type(axis).__name__}.")
  axis = int(axis)
  n = max(ndim, 1)
  if not -n <= axis < n:
    raise IndexError(
        f"{op}: {name}={axis} is out of range for an array of rank {ndim} "
        f"(expected to be in range of [{-n}, {n - 1}])."
    )
  return axis % n


def normalize_axes(axis, ndim: int, op: str, name: str = "axis") -> tuple[int, ...]:
  """Like :func:`normalize_axis` but also accepts a sequence of axes or None (all axes)."""
  if axis is None:
    return tuple(range(max(ndim, 1)))
  if isinstance(axis, Sequence) and not isinstance(axis, str):
    axes = tuple(normalize_axis(a, ndim, op, name) for a in axis)
    if len(set(axes)) != len(axes):
      raise ValueError(f"{op}: {name}={tuple(axis)!r} repeats an axis (rank {ndim}).")
    if not axes:
      raise ValueError(f"{op}: {name}=() names no axis; pass at least one.")
    return tuple(sorted(axes))
  return (normalize_axis(axis, ndim, op, name),)


def check_positive_finite(value, name: str, op: str) -> float:
  """Validates a Python scalar such as a temperature: finite and > 0."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{op}: {name} must be a real number; got {value!r} of type "
                    f"{type(value).__name__}.")
  value = float(value)
  if not math.isfinite(value) or value <= 0.0:
    raise ValueError(f"{op}: {name} must be finite and > 0; got {name}={value!r}.")
  return value


def check_reduction(reduction, op: str) -> str:
  if reduction not in REDUCTIONS:
    raise ValueError(f"{op}: {reduction} is not a valid value for reduction; expected one of "
                     f"{REDUCTIONS}.")
  return reduction


def check_label_smoothing(label_smoothing, op: str) -> float:
  if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
    raise TypeError(
        f"{op}: label_smoothing must be a float in [0, 1]; got {label_smoothing!r} "
        f"of type {type(label_smoothing).__name__}."
    )
  value = float(label_smoothing)
  if not 0.0 <= value <= 1.0:  # also rejects NaN
    raise ArgumentError(f"{op}: label_smoothing must be between 0.0 and 1.0; got "
                        f"label_smoothing={value!r}.")
  return value


def _real(value, name, op, what):
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{op}: {name} must be {what}; got {value!r} of type {type(value).__name__}.")
  return float(value)


def check_z_loss(z_loss, op: str) -> float:
  """The z-loss coefficient ``s``: a finite float >= 0 (0 turns it off)."""
  value = _real(z_loss, "z_loss", op, "a float >= 0 (the coefficient of lse^2)")
  if not (math.isfinite(value) and value >= 0.0):
    raise ArgumentError(f"{op}: z_loss must be a finite float >= 0 (PaLM uses 1e-4); got "
                        f"z_loss={value!r}.")
  return value


def check_softcap(cap, op: str) -> float | None:
  """The logit soft-cap ``c``: None (off) or a finite float > 0."""
  if cap is None:
    return None
  value = _real(cap, "logit_softcap", op, "None or a float > 0 (Gemma-2 uses 30.0)")
  if not (math.isfinite(value) and value > 0.0):
    raise ArgumentError(f"{op}: logit_softcap must be None or a finite float > 0 (the logits "
                        f"become c * tanh(logits / c)); got logit_softcap={value!r}.")
  return value


def check_flags(op: str, **flags) -> None:
  """``return_*`` switches must be bools (a truthy array or string is a mistake, not a yes)."""
  for name, value in flags.items():
    if not isinstance(value, bool):
      raise TypeError(f"{op}: {name} must be True or False; got {value!r} of type "
                      f"{type(value).__name__}.")


def check_weight(weight, num_classes: int, op: str):
  """A per-class rescaling weight: floating, shape ``[num_classes]``."""
  if weight is None:
    return None
  weight = jnp.asarray(weight)
  if not jnp.issubdtype(weight.dtype, jnp.floating):
    raise DTypeError(f"{op}: weight must be a floating-point array; got dtype {weight.dtype}.")
  if weight.shape != (num_classes,):
    raise ArgumentError(
        f"{op}: weight must have shape ({num_classes},), one entry per class; got shape "
        f"{weight.shape}."
    )
  return weight


def check_ignore_index(ignore_index, op: str):
  if ignore_index is None:
    return None
  if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
    raise TypeError(f"{op}: ignore_index must be an int or None; got {ignore_index!r}.")
  return int(ignore_index)


def check_labels_in_range(labels, num_classes: int, ignore_index, op: str) -> None:
  """Raises IndexError naming the first bad label when ``labels`` is concrete.

  Under ``jit`` the labels are abstract; the ops then give NaN for an out-of-range label, or, with
  ``checked=True`` under ``jax.experimental.checkify``, report it (:func:`check_labels_traced`).
  See docs/contract.md.
  """
  if not is_concrete(labels) or labels.size == 0:
    return
  values = np.asarray(labels)
  bad = (values < 0) | (values >= num_classes)
  if ignore_index is not None:
    bad &= values != ignore_index
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    allowed = f"0 <= label < {num_classes}"
    if ignore_index is not None:
      allowed += f", or ignore_index={ignore_index}"
    raise IndexError(
        f"{op}: target {int(values[index])} at index {index} is out of bounds for "
        f"{num_classes} classes (expected {allowed})."
    )


def check_labels_traced(labels, num_classes: int, ignore_index, op: str) -> None:
  """A ``checkify.check`` (inside jit) naming the first out-of-range label and its index.

  Only for ``checked=True``: the caller must run the function under ``checkify.checkify``, which
  turns this into an error value (``err.throw()`` raises it); JAX refuses a staged check otherwise.
  """
  from jax.experimental import checkify  # noqa: PLC0415

  flat = labels.reshape(-1)
  if flat.size == 0:
    return
  bad = (flat < 0) | (flat >= num_classes)
  if ignore_index is not None:
    bad &= flat != ignore_index
  first = jnp.argmax(bad)
  allowed = f"0 <= label < {num_classes}" + (
      f", or ignore_index={ignore_index}" if ignore_index is not None else "")
  checkify.check(~jnp.any(bad),
                 f"{op}: target {{value}} at flat index {{index}} of labels with shape "
                 f"{labels.shape} is out of bounds for {num_classes} classes (expected {allowed})",
                 value=flat[first], index=first)
