"""The cross-entropy arithmetic, written once: label weights, the mean's denominator, reductions,
label-smoothing coefficients and the class-weight gradient.

``cross_entropy`` and ``nll_loss`` (:mod:`jaxsoftmax._src.losses`), ``linear_cross_entropy``
(:mod:`jaxsoftmax._src.linear`) and the callers of the cross-entropy row kernel all read these as
siblings. With per-class weights ``w``, smoothing ``eps``, ``C`` classes, ``W = sum_c w_c`` and a
row cotangent ``r_n`` (``d loss / d l_n``), the gradient of a row's loss is

.. math:: \\bar x_{n,c} = \\alpha_n\\,p_{n,c} - \\beta_n\\,w_c - \\gamma_n\\,[c = y_n],\\quad
          \\alpha_n = r_n((1-\\varepsilon) w_{y_n} + \\tfrac{\\varepsilon}{C} W),\\;
          \\beta_n = r_n \\tfrac{\\varepsilon}{C},\\;
          \\gamma_n = r_n (1-\\varepsilon) w_{y_n}

and with the row statistics ``m = max x``, ``s = sum exp(x - m)`` and the smoothing sum
``S = sum_c w_c (x_c - m)`` its loss is

.. math:: l_n = (1-\\varepsilon)\\,w_{y_n}(\\log s - (x_{y_n} - m))
               + \\tfrac{\\varepsilon}{C}(W \\log s - S).

Labels address the class axis where it is (no transposes); out-of-range labels are clipped for the
memory access and made NaN through their weight, so under ``jit`` a bad label is loud.

The options large-vocabulary training adds act on the same coefficients. The z-loss ``s lse_n^2``
(PaLM) and a cotangent ``g_n`` on the returned log-sum-exp both have gradient ``c_n p_n``
(``d lse / dx = p``), so they only add ``c_n = 2 s lse_n r^z_n + g_n`` to ``alpha_n``; the
z-loss is counted over kept rows, unweighted, and its mean divides by their number (see
:func:`reduce_with_z`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from jaxsoftmax._src import rows

__all__ = ["at_labels", "gather", "add_at_labels", "scatter_add", "one_per_row", "per_class",
           "in_range", "label_weights", "denominator", "total_weight", "reduce", "row_cotangent",
           "neg_log_softmax", "weight_along", "smoothing_coefficients", "losses_from_stats",
           "finish_class_weight_grad", "Outputs", "LossAux", "z_rows", "reduce_with_z",
           "lse_coefficient", "lse_terms", "given", "dense", "absent", "present", "defvjp",
           "softcap"]


def at_labels(labels, axis):
  """Index tuple addressing ``x[..., labels, ...]`` (class axis ``axis``) for every example.

  Gathering through it touches one element per example; a one-hot ``iota == label`` mask for a
  gather makes XLA:CPU materialise logits-sized arrays (measured). Adding at the labels to a
  dense gradient is the other way round: see :func:`add_at_labels`.
  """
  index = list(jnp.indices(labels.shape, sparse=True))  # one index per batch axis
  index.insert(axis, labels)
  return tuple(index)


def gather(x, labels, num_classes, axis):
  """``x`` at each example's label (labels clipped into range; callers mask what is invalid)."""
  if x.size == 0:
    return jnp.zeros(labels.shape, x.dtype)
  index = at_labels(jnp.clip(labels, 0, num_classes - 1), axis)
  return x.at[index].get(mode="promise_in_bounds", wrap_negative_indices=False)


def add_at_labels(dense, labels, values, num_classes, axis, dtype=None, *, nan_rows=False):
  """``dense`` plus ``values`` at each example's label, returned in ``dtype`` (``dense``'s own by
  default). Labels are clipped as in :func:`scatter_add`, except that ``nan_rows=True`` (the
  caller's promise that an out-of-range label's row of ``dense`` is NaN already, as
  cross_entropy's ``e * alpha / s`` is) lets the one-hot select below compare them unclipped.

  In ``dense``'s own dtype this is :func:`scatter_add`: one element per example, in place. Into a
  narrower dtype (a bfloat16 gradient formed in float32) a scatter would make XLA:CPU write the
  float32 gradient, scatter into it, then convert it in a pass of its own; there the label's term
  is a one-hot select in the same elementwise loop that forms ``dense`` and rounds it
  (cross_entropy's backward in bfloat16 at (4096, 1024): 6.4 ms as a scatter, 3.0 ms as a
  select). In float32 the select gains nothing and its loop does not vectorise as well (one row of
  262144: 89 us against 34 us for the product and scatter), except on rows of at most
  :data:`~jaxsoftmax._src.rows.SHORT_ROW` classes, where it fuses into a loop over a few elements
  per row and the scatter is a pass of its own (backward at (65536, 10): 1.5x faster as a select,
  for cross_entropy and nll_loss alike; at 128 classes the two measured within noise). Of 9 and
  10 classes, LLVM vectorises the select's loop across rows, with strided element accesses, and it
  wins only where XLA splits it over threads: cross_entropy's float32 backward at (4096, 10) ran
  0.86x of optax as a select and 1.04x as a scatter, (16384, 10) 1.07-1.22x against 0.98x, and
  rows of 2-8 classes 1.2-2.5x as a select against 0.95-1.1x (benchmarks/NOTES.md, sixteenth
  pass). So there the select is used from :data:`~jaxsoftmax._src.rows.ROUND_BITS_FROM` elements.
  """
  dtype = dense.dtype if dtype is None else jnp.dtype(dtype)
  if dtype == dense.dtype and (
      num_classes > rows.SHORT_ROW
      or (num_classes > rows.SHORT_STATS and dense.size < rows.ROUND_BITS_FROM)):
    return scatter_add(dense, labels, values, num_classes, axis)
  shape = [1] * dense.ndim
  shape[axis] = num_classes
  classes = lax.broadcasted_iota(jnp.int32, shape, axis)
  if not nan_rows:
    labels = jnp.clip(labels, 0, num_classes - 1)
  hit = classes == jnp.expand_dims(labels.astype(jnp.int32), axis)
  # The select keeps this loop out of YNNPACK: its rounding is rows.round_once's own loop, where
  # the rows are long enough and the loop large enough (rows.ROUND_BITS_FROM) to gain from it.
  return rows.round_once(dense + jnp.where(hit, jnp.expand_dims(values, axis), 0.0), dtype,
                         own_loop=num_classes > rows.SHORT_ROW
                         and dense.size >= rows.ROUND_BITS_FROM)


def scatter_add(base, labels, values, num_classes, axis):
  """``base`` plus ``values`` at each example's label.

  Labels are clipped into range, so an out-of-range label's value (NaN, by :func:`label_weights`)
  lands in its own row instead of vanishing: under jit its gradient is NaN, like its loss. Ignored
  examples must carry a value of 0.
  """
  index = at_labels(jnp.clip(labels, 0, num_classes - 1), axis)
  return base.at[index].add(values, mode="promise_in_bounds", wrap_negative_indices=False)


def one_per_row(shape, labels, values, num_classes, axis, dtype):
  """Zeros of ``shape`` in the 16-bit ``dtype`` with ``values`` at each example's label (clipped
  as in :func:`scatter_add`), each rounded once: ``scatter_add`` into float32 zeros and
  ``astype``, bit for bit (``-0.0`` lands as ``+0.0``, as it does added to a zero).

  The entries are written as their 16-bit patterns into ``uint16`` zeros. A float scatter in
  bfloat16 is done by XLA:CPU in float32 with a conversion per element of the whole array; of one
  row it becomes a scalar loop that rounds each of its zeros (nll_loss's backward of (1, 32768):
  48 us against 24 us for the jax.numpy idiom's loop of constants; benchmarks/NOTES.md, fifteenth
  pass). Into ``uint16`` zeros only the label's entry is rounded (once per example, before the
  scatter), and the loop stores zeros elsewhere.
  """
  dtype = jnp.dtype(dtype)
  if dtype.itemsize != 2 or not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"one_per_row: dtype must be a 16-bit float; got {dtype}.")
  values = jnp.where(values == 0, 0.0, values).astype(dtype)  # -0.0 + 0.0 is +0.0
  index = at_labels(jnp.clip(labels, 0, num_classes - 1), axis)
  bits = jnp.zeros(shape, jnp.uint16).at[index].set(
      lax.bitcast_convert_type(values, jnp.uint16), mode="promise_in_bounds",
      wrap_negative_indices=False)
  return lax.bitcast_convert_type(bits, dtype)


def per_class(labels, values, num_classes):
  """Sum of ``values`` over examples, binned by (clipped) label: a bincount."""
  index = jnp.clip(labels.reshape(-1), 0, num_classes - 1)
  return jnp.zeros(num_classes, values.dtype).at[index].add(
      values.reshape(-1), mode="promise_in_bounds", wrap_negative_indices=False)


def in_range(labels, num_classes: int):
  """``0 <= labels < num_classes``, as one unsigned comparison for signed labels (a negative label
  read as unsigned is larger than any class count): one operation instead of three. XLA copies
  this per-row test into each loop that reads it, per element of a gradient's loop, and XLA:CPU
  runs a program on the caller's thread only under 1000 flops (rows.TINY)."""
  dt = jnp.dtype(labels.dtype)
  if not jnp.issubdtype(dt, jnp.integer):
    return (labels >= 0) & (labels < num_classes)
  if jnp.issubdtype(dt, jnp.signedinteger):
    labels = lax.bitcast_convert_type(labels, jnp.dtype(f"uint{8 * dt.itemsize}"))
  if num_classes > jnp.iinfo(dt).max:  # every label the dtype holds, negatives excepted
    return labels <= jnp.iinfo(dt).max
  return labels < num_classes


def label_weights(labels, weight, ignore_index, num_classes, dtype):
  """``(w_y, kept)``: each example's weight ``w[y_n]`` (0 where ignored, NaN where the label is out
  of range) and whether it counts."""
  kept = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
  if weight is None:
    w_y = jnp.ones(labels.shape, dtype)
  else:
    w_y = jnp.take(weight.astype(dtype), jnp.clip(labels, 0, max(num_classes - 1, 0)), axis=0)
  # Out of range under jit: a loud NaN, never a silent 0.
  w_y = jnp.where(in_range(labels, num_classes), w_y, jnp.nan)
  return jnp.where(kept, w_y, 0.0), kept


def denominator(w_y, weight, ignore_index):
  """The mean's divisor: ``sum_n w[y_n]`` over kept examples; simply N when all count with weight
  1. (An out-of-range label makes its ``w_y`` NaN, so its loss, and the mean, are NaN either way.)
  """
  if weight is None and ignore_index is None:
    return jnp.asarray(w_y.size, w_y.dtype)
  return jnp.sum(w_y)


def total_weight(weight, num_classes, dtype):
  """``W = sum_c w_c`` (``C`` without class weights)."""
  return float(num_classes) if weight is None else jnp.sum(weight.astype(dtype))


def reduce(losses, denominator, reduction):
  """``"none"``: the losses; ``"sum"``: their sum; ``"mean"``: the sum over ``denominator``."""
  if reduction == "none":
    return losses
  # Finish the per-example losses first, then sum them (rows.total_sum says why and how).
  total = rows.total_sum(losses)
  return total if reduction == "sum" else total / denominator


def row_cotangent(g, losses_shape, denominator, reduction):
  """``d L / d l_n`` for each example: g (none), g (sum) or g / denominator (mean), broadcast."""
  if reduction == "none":
    return g
  scale = g if reduction == "sum" else g / denominator
  return jnp.broadcast_to(scale, losses_shape)


def neg_log_softmax(x, m, total):
  """``-log_softmax`` from the row max and the sum of ``exp(x - m)``, without cancellation."""
  return jnp.log(total) - (x - m)


def weight_along(weight, ndim, axis, dtype):
  """The class weights shaped to broadcast along the class axis of an ``ndim``-d array."""
  shape = [1] * ndim
  shape[axis] = -1
  return weight.astype(dtype).reshape(shape)


def smoothing_coefficients(row_g, w_y, total_w, eps, num_classes):
  """``(alpha, beta, gamma)`` of the module docstring, for row cotangents ``row_g``."""
  a = (1.0 - eps) * w_y + (eps / num_classes) * total_w
  return row_g * a, row_g * (eps / num_classes), row_g * (1.0 - eps) * w_y


def losses_from_stats(m, log_s, x_y, smooth_sum, w_y, kept, total_w, eps, num_classes):
  """Per-row losses from row statistics (all of shape ``[rows]``); ``smooth_sum`` is read only
  when ``eps > 0``. Kept as ``log s - (x_y - m)``: forming ``m + log s`` first would round the
  log-sum-exp at the magnitude of the logits."""
  losses = w_y * (log_s - (x_y - m))
  if eps > 0.0:
    losses = (1.0 - eps) * losses + (eps / num_classes) * (total_w * log_s - smooth_sum)
  return jnp.where(kept, losses, 0.0)  # an ignored row adds nothing, even if its logits are inf


def finish_class_weight_grad(dweight, g, loss, denominator, labels, kept, reduction, dtype):
  """``d L / d w`` from its per-row part: for ``"mean"`` the denominator ``sum_n w[y_n]`` depends
  on ``w`` too, which subtracts ``g L / denominator`` once per kept example of each class."""
  if reduction == "mean":
    ct = dweight.dtype
    counts = per_class(labels, kept.astype(ct), dweight.shape[0])
    dweight = dweight - (g.astype(ct) * loss.astype(ct) / denominator) * counts
  return dweight.astype(dtype)


# ------------------------------------------------------------------------------------------------
# Large-vocabulary options: z-loss, soft-capping and the outputs formed in the same pass.


@dataclasses.dataclass(frozen=True)
class Outputs:
  """Which in-pass outputs a call returns beside its loss (static)."""

  lse: bool = False
  argmax: bool = False
  accuracy: bool = False
  z_loss: bool = False

  def __bool__(self) -> bool:
    return self.lse or self.argmax or self.accuracy or self.z_loss


class LossAux(NamedTuple):
  """What a loss returns beside itself when asked (fields not asked for are None).

  Attributes:
    lse: per-row ``logsumexp`` of the (soft-capped) logits, the labels' batch shape, in the logits'
      dtype (as ``torch.logsumexp``; computed in float32 for half inputs and rounded once);
      differentiable, with gradient ``softmax``.
    argmax: per-row predicted class (int32), the first maximum as ``torch.argmax``.
    accuracy: the fraction of kept rows whose argmax is the label (for probability targets, the
      targets' argmax); a float32 scalar, no gradient.
    z_loss: the z-loss term already inside the loss (``s lse^2`` over kept rows, reduced as the
      loss, in the logits' dtype), for logging; differentiable.
  """

  lse: jax.Array | None = None
  argmax: jax.Array | None = None
  accuracy: jax.Array | None = None
  z_loss: jax.Array | None = None


def softcap(x, cap, dtype=None):
  """Gemma-2's ``c tanh(x / c)``, computed in ``x``'s compute dtype (``dtype``: cast to it)."""
  if cap is None:
    return x
  ct = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
  y = cap * jnp.tanh(x.astype(ct) / cap)
  return y.astype(x.dtype if dtype is None else dtype)


def z_rows(lse, kept, z_loss):
  """Each row's z-loss ``s lse^2`` (0 where ignored), or None when ``s = 0``."""
  if not z_loss:
    return None
  return jnp.where(kept, z_loss * jnp.square(lse), 0.0)


def reduce_with_z(losses, z, denominator, count, reduction):
  """The loss with its z-loss: ``"none"``: ``l_n + z_n``; ``"sum"``: the sum of both; ``"mean"``:
  ``sum l / denominator + sum z / count``, ``count`` the kept rows. The z-loss regularises the
  partition function, which does not depend on the label, so class weights do not scale it (as
  Liger-Kernel and levanter); without class weights both divisors are the kept rows."""
  if z is None:
    return reduce(losses, denominator, reduction)
  if reduction == "none":
    return losses + z
  if reduction == "sum":
    return reduce(losses + z, denominator, "sum")
  return reduce(losses, denominator, "mean") + reduce(z, count, "mean")


def absent(like):
  """A stand-in residual for ``like``, kept only when some input is differentiated: a
  zero-size array of its rank and dtype. The residuals' tree must not depend on which inputs are
  differentiated: jax (0.10) memoises a forward per pattern of symbolic zeros but keeps one
  residual tree per call, so a pattern traced after another (``saved_residuals`` or ``vjp``
  with respect to the logits and the weights, then ``grad`` with respect to the logits alone)
  failed an assertion inside jax's custom_vjp."""
  return jnp.zeros((0,) * like.ndim, like.dtype)


def present(residual, like):
  """Whether ``residual`` is the array it stands for, not :func:`absent` (``like``: a residual of
  the same shape that is always kept)."""
  return residual.shape == like.shape


def defvjp(op, fwd, bwd, *, perturbed=False):
  """``op.defvjp(fwd, bwd)`` with symbolic zeros: ``bwd`` sees which output cotangents are zero (a
  returned lse nobody differentiates costs no pass of its own), ``fwd`` sees plain values. With
  ``perturbed``, ``fwd`` also gets ``perturbed=``, a tuple saying which positional inputs are
  being differentiated (so it keeps what only their gradients need only when they are)."""
  def fwd_values(*args):
    values = (a.value if isinstance(a, CustomVJPPrimal) else a for a in args)
    if not perturbed:
      return fwd(*values)
    flags = tuple(isinstance(a, CustomVJPPrimal) and a.perturbed for a in args)
    return fwd(*values, perturbed=flags)
  op.defvjp(fwd_values, bwd, symbolic_zeros=True)


def given(ct):
  """A cotangent, or None where JAX passed a symbolic zero (nobody differentiates that output)."""
  return None if ct is None or isinstance(ct, SymbolicZero) else ct


def dense(ct):
  """A cotangent as an array (a symbolic zero becomes zeros)."""
  if isinstance(ct, SymbolicZero):
    return jnp.zeros(ct.aval.shape, ct.aval.dtype)
  return ct


def lse_terms(lse, kept, z_loss, z_g, g_lse):
  """``c_n`` of the module docstring from per-row z-loss cotangents ``z_g`` (``r^z_n``) and an lse
  cotangent ``g_lse`` (either None); None if neither applies."""
  extra = None
  if z_g is not None and z_loss:
    extra = jnp.where(kept, (2.0 * z_loss) * lse * z_g, 0.0)
  if g_lse is not None:
    g_lse = g_lse.astype(lse.dtype)
    extra = g_lse if extra is None else extra + g_lse
  return extra


def lse_coefficient(g, lse, kept, z_loss, count, reduction, g_lse):
  """:func:`lse_terms` under the loss's cotangent ``g``: the z-loss's row cotangents are ``g``
  (none, sum) or ``g / count`` (mean)."""
  z_g = row_cotangent(g.astype(lse.dtype), lse.shape, count, reduction) if z_loss else None
  return lse_terms(lse, kept, z_loss, z_g, g_lse)
