"""Adaptive softmax (Grave et al., 2017): torch's ``nn.AdaptiveLogSoftmaxWithLoss``, functionally.

The classes are split by ``cutoffs`` ``c_0 < c_1 < ... < c_K = n_classes``: the head scores the
shortlist ``[0, c_0)`` and one logit per cluster ``i`` (classes ``[c_i, c_{i+1})``), and cluster
``i``'s tail, a two-layer projection ``x A_i B_i`` without biases, scores the classes inside it:

.. math:: \\log p(y \\mid x) = \\begin{cases}
            \\mathrm{lsm}(h)_y & y < c_0 \\\\
            \\mathrm{lsm}(h)_{c_0 + i} + \\mathrm{lsm}(x A_i B_i)_{y - c_i} & c_i \\le y < c_{i+1}
          \\end{cases}

with ``h = x W_h (+ b_h)``. Kernels are Flax's ``[in, out]`` (torch's ``weight`` transposed).
Under ``jit`` shapes are static, so each tail runs on every row and rows outside its cluster are
masked (torch runs a tail on its rows only); the log-softmaxes are :func:`jaxsoftmax.log_softmax`.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoftmax._src import checks, family, xent
from jaxsoftmax._src.errors import ArgumentError

__all__ = ["check_cutoffs", "log_prob", "log_prob_of_targets", "TargetError", "ASMOutput",
           "adaptive_log_softmax_with_loss", "check_targets", "as_pair"]


class TargetError(IndexError, RuntimeError):
  """A target outside ``[0, n_classes)`` (torch raises RuntimeError; Python idiom IndexError)."""


def check_cutoffs(cutoffs, n_classes, op: str) -> tuple[int, ...]:
  """torch's rule: a non-empty increasing sequence of unique ints in ``[1, n_classes - 1]``."""
  if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 2:
    raise ArgumentError(f"{op}: n_classes must be an int >= 2; got {n_classes!r}.")
  if isinstance(cutoffs, (str, bytes)) or not isinstance(cutoffs, Sequence):
    raise TypeError(f"{op}: cutoffs must be a sequence of ints; got {type(cutoffs).__name__}.")
  values = list(cutoffs)
  if not values:
    raise ArgumentError(f"{op}: cutoffs should be a sequence of length larger than 0; got [].")
  if any(isinstance(c, bool) or not isinstance(c, numbers.Real) or int(c) != c for c in values):
    raise ArgumentError(f"{op}: cutoffs must be integers; got {values}.")
  values = [int(c) for c in values]
  if values != sorted(values) or len(set(values)) != len(values):
    raise ArgumentError(f"{op}: cutoffs must be unique and sorted in increasing order; got "
                        f"{values}.")
  if values[0] <= 0 or values[-1] > n_classes - 1:
    raise ArgumentError(f"{op}: every value of cutoffs must be between 1 and n_classes - 1 = "
                        f"{n_classes - 1}; got {values}.")
  return tuple(values) + (int(n_classes),)


def _head_and_tails(x, head_kernel, head_bias, tails, cutoffs):
  """``(lsm(h), [lsm(x A_i B_i)])`` in the compute dtype."""
  # Half inputs: every matmul and log-softmax in float32, each gradient rounded once (at the casts).
  ct = checks.compute_dtype(x.dtype)
  xc = x.astype(ct)
  h = xc @ head_kernel.astype(ct)
  if head_bias is not None:
    h = h + head_bias.astype(ct)[None, :]
  head = family.log_softmax(h, axis=-1)
  parts = [family.log_softmax((xc @ a.astype(ct)) @ b.astype(ct), axis=-1) for a, b in tails]
  return head, parts


@functools.partial(jax.jit, static_argnames=("cutoffs",))
def log_prob(x, head_kernel, head_bias, tails, cutoffs):
  """``[N, n_classes]`` log-probabilities of every class (torch's ``log_prob``).

  Jitted (``cutoffs`` static), as ``_with_loss`` is: called eagerly it is one program, not a
  dispatch per matmul, slice and concatenation."""
  head, parts = _head_and_tails(x, head_kernel, head_bias, tails, cutoffs)
  shortlist = cutoffs[0]
  out = [head[:, :shortlist]]
  for i, part in enumerate(parts):
    out.append(part + head[:, shortlist + i:shortlist + i + 1])
  return jnp.concatenate(out, axis=-1).astype(x.dtype)


def log_prob_of_targets(x, target, head_kernel, head_bias, tails, cutoffs):
  """Each row's ``log p(target)`` (torch's ``output``); NaN for a target out of range."""
  head, parts = _head_and_tails(x, head_kernel, head_bias, tails, cutoffs)
  shortlist, rows = cutoffs[0], jnp.arange(x.shape[0])
  # The head's column: the class itself in the shortlist, else its cluster's logit.
  cluster = jnp.searchsorted(jnp.asarray(cutoffs, target.dtype), target,
                             side="right").astype(target.dtype)  # 0: the shortlist
  column = jnp.where(cluster == 0, target, shortlist + cluster - 1)
  out = head[rows, jnp.clip(column, 0, head.shape[1] - 1)]
  for i, part in enumerate(parts):
    inside = cluster == i + 1
    local = jnp.clip(target - cutoffs[i], 0, part.shape[1] - 1)
    out = out + jnp.where(inside, part[rows, local], 0.0)
  in_range = xent.in_range(target, cutoffs[-1])
  return jnp.where(in_range, out, jnp.nan).astype(x.dtype)


def check_targets(target, n_classes: int, op: str) -> None:
  """Raises :class:`TargetError` naming the first bad target when ``target`` is concrete."""
  if not checks.is_concrete(target) or target.size == 0:
    return
  values = np.asarray(target).reshape(-1)
  bad = (values < 0) | (values >= n_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise TargetError(f"{op}: Target values should be in [0, {n_classes - 1}]; target[{i}] = "
                      f"{int(values[i])} (values in [{int(values.min())}, {int(values.max())}] "
                      f"were found).")


def as_pair(input, target, in_features: int, op: str):
  """torch's shape rules: ``(N, in)`` with ``(N,)`` targets, or ``(in,)`` with a 0-d target;
  returns ``(x, target, batched)`` with a batch axis added where there was none."""
  x = checks.as_float_array(input, "input", op)
  target = jnp.asarray(target)
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise TypeError(f"{op}: target must hold integer class indices; got dtype {target.dtype}.")
  if target.ndim == 1:
    if x.ndim != 2:
      raise ArgumentError(f"{op}: 1D target tensor expects 2D input tensors, but found inputs "
                          f"with size {x.shape}.")
    if x.shape[0] != target.shape[0]:
      raise ArgumentError(f"{op}: Input and target should have the same size in the batch "
                          f"dimension: input {x.shape}, target {target.shape}.")
  elif target.ndim == 0:
    if x.ndim != 1:
      raise ArgumentError(f"{op}: 0D target tensor expects 1D input tensors, but found inputs "
                          f"with size {x.shape}.")
  else:
    raise ArgumentError(f"{op}: 0D or 1D target tensor expected, multi-target not supported; got "
                        f"target of shape {target.shape}.")
  if x.shape[-1] != in_features:
    raise ArgumentError(f"{op}: input's last dimension must be in_features = {in_features}; got "
                        f"input of shape {x.shape}.")
  batched = target.ndim == 1
  return (x, target, True) if batched else (x[None], target[None], False)


class ASMOutput(NamedTuple):
  """torch's ``_ASMoutput``: each row's ``log p(target)`` and the mean negative log-likelihood."""

  output: jax.Array
  loss: jax.Array


@functools.partial(jax.jit, static_argnames=("cutoffs",))
def _with_loss(x, target, head_kernel, head_bias, tails, cutoffs):
  output = log_prob_of_targets(x, target, head_kernel, head_bias, tails, cutoffs)
  return output, jnp.mean(-output.astype(checks.compute_dtype(output.dtype))).astype(
      output.dtype)


def adaptive_log_softmax_with_loss(input, target, head_kernel, tails, cutoffs, *,
                                   head_bias=None) -> ASMOutput:
  r"""The adaptive softmax's ``(output, loss)``, as ``torch.nn.AdaptiveLogSoftmaxWithLoss``.

  .. math:: \mathrm{output}_n = \log p(t_n \mid x_n),\quad \mathrm{loss} = -\tfrac1N
            \textstyle\sum_n \mathrm{output}_n

  Args:
    input: ``(N, in_features)`` with ``(N,)`` targets, or ``(in_features,)`` with a 0-d target.
    target: integer classes in ``[0, n_classes)``.
    head_kernel: ``[in_features, cutoffs[0] + n_clusters]``.
    tails: one ``(A_i, B_i)`` per cluster, ``A_i`` ``[in_features, h_i]``, ``B_i`` ``[h_i, size_i]``.
    cutoffs: torch's cutoffs, with or without ``n_classes`` at the end (``n_classes`` is then the
      head's shortlist plus every tail's output size).
    head_bias: optional ``[cutoffs[0] + n_clusters]``.

  Raises:
    TargetError: (``IndexError`` and ``RuntimeError``) a concrete target out of range; under
      ``jit`` its output is NaN instead.
    ArgumentError: bad cutoffs or shapes, in torch's words plus the shapes received.
  """
  op = "adaptive_log_softmax_with_loss"
  tails = tuple((jnp.asarray(a), jnp.asarray(b)) for a, b in tails)
  head_kernel = jnp.asarray(head_kernel)
  n_classes = head_kernel.shape[1] - len(tails) + sum(b.shape[1] for _, b in tails)
  full = check_cutoffs(list(cutoffs)[:len(tails)], n_classes, op)
  head_kernel = jnp.asarray(head_kernel)
  x, target, batched = as_pair(input, target, head_kernel.shape[0], op)
  check_targets(target, n_classes, op)
  output, loss = _with_loss(x, target, head_kernel, None if head_bias is None else
                            jnp.asarray(head_bias), tails, full)
  return ASMOutput(output if batched else output[0], loss)
