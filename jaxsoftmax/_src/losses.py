"""Cross-entropy and negative log-likelihood, with torch's weighting, ignoring and smoothing rules.

For logits ``x`` with classes along ``axis``, ``lsm = log_softmax(x)``, per-class weights ``w``
(all ones by default), smoothing ``eps`` and ``C`` classes, the per-example losses are

.. math::
   \\ell_n = (1-\\varepsilon)\\,(-w_{y_n}\\,\\mathrm{lsm}_{n,y_n})
            + \\tfrac{\\varepsilon}{C} \\textstyle\\sum_c (-w_c\\,\\mathrm{lsm}_{n,c})
   \\quad\\text{(integer labels)},\\qquad
   \\ell_n = -\\textstyle\\sum_c w_c\\,t'_{n,c}\\,\\mathrm{lsm}_{n,c},\\;
   t' = (1-\\varepsilon)\\,t + \\tfrac{\\varepsilon}{C}
   \\quad\\text{(probabilities)}

Ignored examples contribute 0. ``reduction="mean"`` divides integer-label losses by
``sum_n w_{y_n}`` over the kept examples (so all-ignored gives NaN, as torch), and
probability-target losses by the number of examples.

Backward passes are ``jax.custom_vjp`` rules. ``cross_entropy`` keeps one logits-sized array,
the forward's float32 ``exp(x - max)``, plus row-sized sums, so its backward needs no exponential
of its own; for float16/bfloat16 logits of ``2^20`` elements or more it keeps the logits instead
and rebuilds the same float32 exponentials (2 bytes per element, as optax's autodiff holds, not
4). Probability targets also keep the logits and targets where those are differentiated, since
their gradient needs every ``lsm``. The backward forms

.. math:: \\bar x_{n,c} = G_n\\,(a_n\\,p_{n,c} - b_{n,c}),\\quad p = e^{x - \\mathrm{lse}}

without ever building ``lsm`` or a one-hot matrix in memory. The gradient with respect to ``weight``
is exact (torch refuses to differentiate it); XLA drops its computation when it is not requested.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsoftmax._src import checks, collectives, dispatch, kernels, xent
from jaxsoftmax._src.rows import (TINY, fenced_on_cpu, rebuilt_apart, rebuilt_output_loop,
                                 round_once, row_max_of, row_sum)
from jaxsoftmax._src.errors import ArgumentError, DTypeError

__all__ = ["cross_entropy", "nll_loss", "LossOptions", "ce_row_kernel", "loss_aux", "aux_specs"]


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """The static options of a cross-entropy loss (hashable: a jit and custom_vjp static argument)."""

  ignore_index: int | None = None
  label_smoothing: float = 0.0
  reduction: str = "mean"
  z_loss: float = 0.0
  softcap: float | None = None
  argmax: bool = False  # the sharded rules gather each block's argmax only when it is asked for
  lse: bool = False  # the lse is returned, so it may get a cotangent (fused rules keep inputs)


# ----------------------------------------------------------------------------------------------
# cross_entropy with integer labels, XLA backend. Residuals: the exponentials exp(x - m) (the one
# logits-sized array: the backward needs no exp of its own; a large 16-bit x instead of them, from
# which the backward rebuilds them: _exps_of), row-sized m, their row sums and
# lsm[y]. The logits themselves are kept only for the exact weight gradient under label
# smoothing, which needs every lsm[c].


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _ce_labels_xla(x, labels, weight, axis, opts):
  return _ce_labels_xla_fwd(x, labels, weight, axis, opts)[0]


def _ce_labels_xla_fwd(x, labels, weight, axis, opts):
  ct = checks.compute_dtype(x.dtype)
  num_classes, eps = x.shape[axis], opts.label_smoothing
  xc = x.astype(ct)
  m = row_max_of(x, ct, axis)
  e = jnp.exp(xc - m)
  total = row_sum(e, axis, into_reduction=True, stats=True, narrow=x.dtype != ct)
  w_y, kept = xent.label_weights(labels, weight, opts.ignore_index, num_classes, ct)
  # lsm = (x - m) - log(total), in that order: forming m + log(total) first would round the
  # log-sum-exp at the magnitude of the logits (x = [1e4, 1e4] gave 0.69336, not log 2).
  x_y = xent.gather(xc, labels, num_classes, axis)
  if weight is None:
    # w_y is 1 where kept, or NaN for a label out of range: the NaN goes into x_y, in the gather's
    # loop, and the loss is -lsm_y, the same values with no row-sized w_y array (which keeps the
    # 16-bit forward's temporary memory within one row vector and rows.row_sum's column of ones
    # of optax's: rows.NARROW_DOT_FROM).
    x_y = jnp.where(xent.in_range(labels, num_classes), x_y, jnp.nan)
  lsm_y = (x_y - jnp.squeeze(m, axis)) - jnp.squeeze(jnp.log(total), axis)
  losses = -lsm_y if weight is None else -w_y * lsm_y
  if eps > 0.0:
    neg_lsm = xent.neg_log_softmax(xc, m, total)
    if weight is not None:
      neg_lsm = neg_lsm * xent.weight_along(weight, x.ndim, axis, ct)
    losses = (1.0 - eps) * losses + (eps / num_classes) * jnp.sum(neg_lsm, axis=axis)
  losses = jnp.where(kept, losses, 0.0)  # an ignored row adds nothing, even if its logits are inf
  denominator = xent.denominator(w_y, weight, opts.ignore_index)
  lse = jnp.squeeze(m, axis) + jnp.squeeze(jnp.log(total), axis)
  count = jnp.sum(kept.astype(ct))
  ce = xent.reduce(losses, denominator, opts.reduction).astype(x.dtype)
  out = xent.reduce_with_z(losses, xent.z_rows(lse, kept, opts.z_loss), denominator, count,
                           opts.reduction).astype(x.dtype)
  rows = (lse, jnp.argmax(xc, axis=axis).astype(jnp.int32))
  # Residuals: e and the row statistics (m, total), the labels, and the mean's denominator where
  # it is not simply N; the z-loss's row count only with a z-loss; what only the class weights'
  # gradient reads (lsm_y, the loss, and under smoothing the logits) only with class weights.
  # Each residual is an argument of the backward's executable (nll_loss's spare two cost 0.9x of
  # the JAX idiom at (64, 128)). Static choices only: see xent.absent.
  dw = weight is not None
  plain = weight is None and opts.ignore_index is None
  # For a large 16-bit x, x itself stands in for e (_exps_of): 2 bytes per element, as optax's.
  return (out, rows), (_stand_in(x, e), total, m, lsm_y if dw else None, labels, weight,
                       None if plain else denominator, ce if dw else None,
                       x if dw and eps > 0.0 else None, count if opts.z_loss else None)


def _exps_of(kept, m):
  """The forward's ``e = exp(x - m)`` (compute precision) from the residual that stands for it:
  ``e`` itself, or for a large 16-bit ``x`` (checks.REBUILD_FROM), ``x``, from which it is
  rebuilt by the forward's own operations (the same values up to float32 rounding in another
  fusion). Keeping ``x`` holds 2 bytes per element, what optax's autodiff holds, where a float32
  ``e`` held 4."""
  ct = checks.compute_dtype(kept.dtype)
  return kept if ct == kept.dtype else jnp.exp(kept.astype(ct) - m)


def _stand_in(x, e):
  """The residual standing for ``e``: ``x`` where the backward rebuilds ``e`` from it."""
  return x if checks.rebuilds_from_input(x) else e


def _ce_labels_xla_bwd(axis, opts, res, g):
  e, total, m, lsm_y, labels, weight, denominator, out, x, count = res
  g, g_lse = xent.dense(g[0]), xent.given(g[1][0])
  e = _exps_of(e, m)
  ct = e.dtype
  num_classes, eps = e.shape[axis], opts.label_smoothing
  if denominator is None:  # no weights, nothing ignored: the mean divides by N
    denominator = jnp.asarray(labels.size, ct)
  # The forward's lse, formed the same way from the same residuals.
  lse = jnp.squeeze(m, axis) + jnp.squeeze(jnp.log(total), axis)
  w_y, kept = xent.label_weights(labels, weight, opts.ignore_index, num_classes, ct)
  row_g = jnp.where(kept, xent.row_cotangent(g.astype(ct), labels.shape, denominator,
                                             opts.reduction), 0.0)
  alpha, beta, gamma = xent.smoothing_coefficients(
      row_g, w_y, xent.total_weight(weight, num_classes, ct), eps, num_classes)
  if weight is None:
    # w_y is 1 on a kept row and 0 or NaN elsewhere: 0 where row_g is 0 already, NaN for an
    # out-of-range label, whose dense row e * alpha / s is NaN already (alpha carries w_y). So the
    # label's term needs neither w_y nor a clipped label, and the per-row range test that XLA
    # fuses into the gradient's loop appears there once, not twice (cross_entropy float32 bwd
    # (64, 2): 1346 -> 835 flops, under XLA:CPU's 1000 for running on the caller's thread).
    gamma = row_g * (1.0 - eps)
  extra = xent.lse_coefficient(g, lse, kept, opts.z_loss, count, opts.reduction, g_lse)
  alpha = alpha if extra is None else alpha + extra
  # A dense part, then one value per example at its label (xent.add_at_labels): no one-hot
  # matrix in memory.
  dx = e * (jnp.expand_dims(alpha, axis) / total)
  if eps > 0.0:
    w_c = 1.0 if weight is None else xent.weight_along(weight, e.ndim, axis, ct)
    dx = dx - jnp.expand_dims(beta, axis) * w_c
  dx = xent.add_at_labels(dx, labels, -gamma, num_classes, axis, g.dtype, nan_rows=True)
  dweight = None
  if out is not None:  # class weights: their exact gradient
    # Exact d/dw (torch refuses to differentiate weight).
    # where(kept, ...): an ignored row may have lsm_y = -inf, and 0 * inf would be NaN.
    dweight = xent.per_class(labels, jnp.where(kept, -(1.0 - eps) * row_g * lsm_y, 0.0),
                             num_classes)
    if eps > 0.0:
      others = tuple(i for i in range(e.ndim) if i != axis)
      dweight = dweight + (eps / num_classes) * jnp.sum(
          jnp.expand_dims(row_g, axis) * xent.neg_log_softmax(x.astype(ct), m, total), axis=others)
    dweight = xent.finish_class_weight_grad(dweight, g, out, denominator, labels, kept,
                                            opts.reduction, weight.dtype)
  return dx.astype(g.dtype), None, dweight


xent.defvjp(_ce_labels_xla, _ce_labels_xla_fwd, _ce_labels_xla_bwd)


# ----------------------------------------------------------------------------------------------
# cross_entropy with integer labels, kernel backend (class axis last). With mean or sum the
# gradient for a unit cotangent is formed in the same pass over the logits, Liger-style, and the
# backward only scales it; with "none" each row has its own cotangent, so the backward runs the
# kernel again from the saved row statistics.


def ce_row_kernel(x2, labels, weight, row_g, w_y, total_w, eps, stats=(), *, interpret, grad,
                  dx_dtype=None, extra_alpha=None):
  """The cross-entropy row kernel on ``[rows, classes]`` logits, its per-row coefficients formed
  from the row cotangents ``row_g`` (plus ``extra_alpha``, the lse terms' coefficient of ``p``);
  also the chunk step of linear_cross_entropy. Returns ``(m, s, x_y, smooth_sum, dx | None)``, the
  statistics as ``[rows, 1]``."""
  num_classes = x2.shape[1]
  coefficients = list(xent.smoothing_coefficients(row_g, w_y, total_w, eps, num_classes))
  if extra_alpha is not None:
    coefficients[0] = coefficients[0] + extra_alpha
  coefficients = [c[:, None] for c in coefficients]
  lab = jnp.clip(labels, 0, num_classes - 1).astype(jnp.int32)[:, None]
  w = None if weight is None else weight.astype(jnp.float32)[None, :]
  return kernels.ce(x2, lab, *coefficients, w, *stats, interpret=interpret, grad=grad,
                    smooth=eps > 0.0, dx_dtype=dx_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _ce_labels_kernel(x, labels, weight, opts, interpret):
  return _ce_labels_kernel_fwd(x, labels, weight, opts, interpret, grad=False)[0]


def _ce_labels_kernel_fwd(x, labels, weight, opts, interpret, *, grad=None):
  ct = jnp.float32
  # With a z-loss the row coefficients need each row's lse before the gradient can be formed, so
  # the backward forms it from the saved statistics (a second read of the logits), as for "none".
  grad = (opts.reduction != "none" and not opts.z_loss) if grad is None else grad
  num_classes, eps = x.shape[-1], opts.label_smoothing
  x2 = x.reshape(-1, num_classes)
  flat = labels.reshape(-1)
  w_y, kept = xent.label_weights(flat, weight, opts.ignore_index, num_classes, ct)
  denominator = xent.denominator(w_y, weight, opts.ignore_index)
  total_w = xent.total_weight(weight, num_classes, ct)
  scale = 1.0 if opts.reduction != "mean" else 1.0 / denominator
  row_g = jnp.where(kept, scale, 0.0)
  # The unit-cotangent gradient is kept in x's dtype (bfloat16 has float32's range), except for
  # float16: there p / N underflows (1/V/N < 6e-8 at V=32768, N=8192) before a loss-scaling
  # cotangent could bring it back, so it is kept in float32.
  dz_dtype = jnp.float32 if x.dtype == jnp.float16 else x.dtype
  m, s, x_y, smooth_sum, dz = ce_row_kernel(x2, flat, weight, row_g, w_y, total_w, eps,
                                            interpret=interpret, grad=grad, dx_dtype=dz_dtype)
  log_s = jnp.log(s[:, 0])
  losses = xent.losses_from_stats(m[:, 0], log_s, x_y[:, 0], smooth_sum[:, 0], w_y, kept,
                                  total_w, eps, num_classes)
  lsm_y = (x_y[:, 0] - m[:, 0]) - log_s
  lse = m[:, 0] + log_s
  count = jnp.sum(kept.astype(ct))
  ce = xent.reduce(losses.reshape(labels.shape), denominator, opts.reduction).astype(x.dtype)
  z = xent.z_rows(lse, kept, opts.z_loss)
  out = xent.reduce_with_z(losses.reshape(labels.shape), None if z is None else z.reshape(
      labels.shape), denominator, count, opts.reduction).astype(x.dtype)
  # The logits are kept for the backward of "none", a z-loss, the smoothed weight gradient and a
  # returned lse (whose cotangent needs a pass of its own); otherwise only the gradient is.
  keep_x = x2 if dz is None or opts.lse or (weight is not None and eps > 0.0) else None
  rows = (lse.reshape(labels.shape), jnp.argmax(x2, axis=1).astype(jnp.int32).reshape(labels.shape))
  return (out, rows), (dz, keep_x, m, s, lsm_y, labels, weight, denominator, ce, lse, count)


def _ce_labels_kernel_bwd(opts, interpret, res, g):
  dz, x2, m, s, lsm_y, labels, weight, denominator, out, lse, count = res
  g, g_lse = xent.dense(g[0]), xent.given(g[1][0])
  ct = jnp.float32
  num_classes, eps = (dz if dz is not None else x2).shape[1], opts.label_smoothing
  flat = labels.reshape(-1)
  w_y, kept = xent.label_weights(flat, weight, opts.ignore_index, num_classes, ct)
  total_w = xent.total_weight(weight, num_classes, ct)
  g32 = g.astype(ct)
  g_rows = g32.reshape(-1) if opts.reduction == "none" else g32
  extra = xent.lse_coefficient(g_rows, lse, kept, opts.z_loss, count, opts.reduction,
                               None if g_lse is None else g_lse.reshape(-1))
  row_g = jnp.where(kept, xent.row_cotangent(g_rows, flat.shape, denominator, opts.reduction), 0.0)
  if dz is not None:  # mean / sum: the forward's gradient, scaled
    dx = (g32 * dz.astype(ct)).astype(g.dtype)
    if extra is not None:  # a cotangent on the lse: its gradient needs a pass of its own
      dx = dx + ce_row_kernel(x2, flat, weight, jnp.zeros_like(row_g), w_y, total_w, eps, (m, s),
                              interpret=interpret, grad=True, extra_alpha=extra)[4].astype(g.dtype)
  else:  # one cotangent per row, or a z-loss: the gradient is formed now from the saved statistics
    dx = ce_row_kernel(x2, flat, weight, row_g, w_y, total_w, eps, (m, s), interpret=interpret,
                       grad=True, extra_alpha=extra)[4]
  dx = dx.reshape(labels.shape + (num_classes,)).astype(g.dtype)
  dweight = None
  if weight is not None:
    dweight = xent.per_class(flat, jnp.where(kept, -(1.0 - eps) * row_g * lsm_y, 0.0), num_classes)
    if eps > 0.0:
      neg_lsm = jnp.log(s) - (x2.astype(ct) - m)
      dweight = dweight + (eps / num_classes) * jnp.sum(row_g[:, None] * neg_lsm, axis=0)
    dweight = xent.finish_class_weight_grad(dweight, g32, out, denominator, flat, kept,
                                            opts.reduction, weight.dtype)
  return dx, None, dweight


xent.defvjp(_ce_labels_kernel, _ce_labels_kernel_fwd, _ce_labels_kernel_bwd)


# ----------------------------------------------------------------------------------------------
# cross_entropy with class-probability targets.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _ce_probs(x, targets, weight, axis, label_smoothing, reduction, z_loss=0.0):
  return _ce_probs_fwd(x, targets, weight, axis, label_smoothing, reduction, z_loss)[0]


def _smoothed(targets, label_smoothing, num_classes, ct):
  t = targets.astype(ct)
  if label_smoothing > 0.0:
    t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
  return t


def _row_stats(x, axis):
  """``(m, total)``: the row max of ``x`` and the row sum of ``exp(x - m)`` in compute precision.
  The sums feed elementwise work (log, the backward's e / total): unrolled on a CPU. (The loss's
  own row sums feed the batch sum: a matrix-vector product, rows.row_sum. With both as products,
  (1024, 2) ran 0.74x of optax in fwd+bwd; with both unrolled, (65536, 10) 0.46x.)"""
  ct = checks.compute_dtype(x.dtype)
  m = row_max_of(x, ct, axis)
  return m, row_sum(jnp.exp(x.astype(ct) - m), axis, stats=True)


def _ce_probs_fwd(x, targets, weight, axis, label_smoothing, reduction, z_loss, perturbed=None):
  ct = checks.compute_dtype(x.dtype)
  num_classes = x.shape[axis]
  xc = x.astype(ct)
  m = row_max_of(x, ct, axis)
  e = jnp.exp(xc - m)
  total = row_sum(e, axis, stats=True)  # as _row_stats (which the backward may rebuild them with)
  wt = _smoothed(targets, label_smoothing, num_classes, ct)
  if weight is not None:
    wt = wt * xent.weight_along(weight, x.ndim, axis, ct)
  # As torch: -(lsm * t * w).sum(), so a zero target on a -inf logit gives NaN (0 * inf).
  # A float32 x's e is the residual. With the loss's x - m and that e formed from fenced operands
  # of their own (each fence over its own list), a large fwd+bwd program forms x - m and exp in
  # the fusion that uses them, not once in a temporary for three fusions to read ((65536, 128):
  # 32.25 MiB of optax's and our temporary memory -> 0.5 MiB; rows.FENCE_FROM_BYTES).
  nbytes = x.size * jnp.dtype(ct).itemsize if x.dtype == ct else 0
  xl, ml = fenced_on_cpu(xc, m, nbytes=nbytes)
  losses = jnp.squeeze(row_sum(wt * xent.neg_log_softmax(xl, ml, total), axis,
                               into_reduction=True, stats=True), axis)
  n_rows = jnp.asarray(x.size // num_classes if num_classes else 0, ct)
  lse = jnp.squeeze(m, axis) + jnp.squeeze(jnp.log(total), axis)
  z = xent.z_rows(lse, jnp.ones(lse.shape, bool), z_loss)
  out = xent.reduce_with_z(losses, z, n_rows, n_rows, reduction).astype(x.dtype)
  # Residuals: the exponentials (the backward's softmax is e / total, no exp of its own; one
  # logits-sized array, as optax's autodiff keeps; for a large 16-bit x, x). The logits too, only
  # when the targets or the class weights are differentiated: their gradients need the exact
  # log-softmax (x - m - log total), which e cannot give back where it underflowed.
  # The row statistics m and total travel as one array, and the lse is formed again from them
  # (the same operations on the same values): every residual is an argument of the backward's
  # executable, about 0.25 us each on this CPU, and with m, total and lse apart the backward at
  # (1, 128) took six arguments to optax's three and ran 0.953x of it (benchmarks/NOTES.md,
  # twelfth pass).
  aux = (lse, jnp.argmax(xc, axis=axis).astype(jnp.int32))
  keep_x = perturbed is None or perturbed[1] or (weight is not None and perturbed[2])
  xe, me, _ = fenced_on_cpu(xc, m, total, nbytes=nbytes)
  e = jnp.exp(xe - me)  # the same values as above (merged with them where not fenced)
  # For a large 16-bit x, x itself stands in for e (_exps_of): 2 bytes per element, as optax's.
  return (out, aux), (x if keep_x else xent.absent(x), _stand_in(x, e), targets, weight,
                      jnp.concatenate([m, total], axis=axis))


def _ce_probs_bwd(axis, label_smoothing, reduction, z_loss, res, g):
  x, e, targets, weight, stats = res
  m, total = (lax.slice_in_dim(stats, i, i + 1, axis=axis) for i in (0, 1))
  lse = jnp.squeeze(m, axis) + jnp.squeeze(jnp.log(total), axis)  # as the forward formed it
  g, g_lse = xent.dense(g[0]), xent.given(g[1][0])
  own_loop = False
  if checks.compute_dtype(e.dtype) != e.dtype:  # a large 16-bit x stands in for e
    own_loop = rebuilt_output_loop(e, axis)
    # On a CUDA GPU, where a row fits one fusion, the row statistics are rebuilt from a fenced x,
    # so that the forward's sum is not shared: the HLO of bfloat16 (4096, 8192) showed it in a
    # kernel of its own, one more read of x, 0.88x of optax (the log_softmax case measured in
    # rows.rebuilt_apart; this one predicted from the HLO, not yet timed).
    e, m, total = rebuilt_apart((e, m, total), e.shape[axis], lambda v: _row_stats(v, axis))
  e = _exps_of(e, m)
  ct = e.dtype
  num_classes = e.shape[axis]
  n_rows = jnp.asarray(e.size // num_classes if num_classes else 0, ct)
  row_g = xent.row_cotangent(g.astype(ct), lse.shape, n_rows, reduction)
  row_g = jnp.expand_dims(row_g, axis)
  t = _smoothed(targets, label_smoothing, num_classes, ct)
  w_c = 1.0 if weight is None else xent.weight_along(weight, e.ndim, axis, ct)
  wt = t * w_c
  # dx = r (p sum_c wt - wt) + extra p, with p = e / total, as -r wt + e c with one coefficient
  # c per row: two multiplies and an add per element, in the order XLA:CPU's YNNPACK fusion runs
  # fastest (the unfolded form ran 0.8x of optax's autodiff; the same terms as e c - r wt, 0.85x).
  # The sign goes on the row cotangent (one negation per row, the same values as -(r wt)): negated
  # after the product it stayed a negation per element ((4096, 128): 0.92x of optax, then 1.0x).
  neg = (-row_g) * wt
  coef = -row_sum(neg, axis)
  extra = xent.lse_coefficient(g, lse, jnp.ones(lse.shape, bool), z_loss, n_rows, reduction, g_lse)
  if extra is not None:
    coef = coef + jnp.expand_dims(extra, axis)
  dx = neg + e * (coef / total)
  dtargets = dweight = None
  if xent.present(x, e):  # the targets or the weights are differentiated
    neg_lsm = xent.neg_log_softmax(x.astype(ct), m, total)
    dtargets = (row_g * (1.0 - label_smoothing) * w_c * neg_lsm).astype(targets.dtype)
    if weight is not None:
      others = tuple(i for i in range(x.ndim) if i != axis)
      dweight = jnp.sum(row_g * t * neg_lsm, axis=others).astype(weight.dtype)
  return round_once(dx, g.dtype, own_loop=own_loop), dtargets, dweight


xent.defvjp(_ce_probs, _ce_probs_fwd, _ce_probs_bwd, perturbed=True)


# ----------------------------------------------------------------------------------------------
# nll_loss: the loss is a gather, its gradient a scatter; no logits-sized residual at all.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _nll(log_probs, labels, weight, axis, ignore_index, reduction, num_classes):
  return _nll_fwd(log_probs, labels, weight, axis, ignore_index, reduction, num_classes)[0]


def _nll_fwd(log_probs, labels, weight, axis, ignore_index, reduction, num_classes):
  ct = checks.compute_dtype(log_probs.dtype)
  w_y, kept = xent.label_weights(labels, weight, ignore_index, num_classes, ct)
  picked = xent.gather(log_probs, labels, num_classes, axis).astype(ct)
  if weight is None:
    # Selects, not a product with w_y: XLA:CPU fuses them into the gather's loop, where the
    # product went into the batch sum's YNNPACK fusion as a third kernel (0.8x of the JAX idiom
    # at (65536, 10)). Same values: w_y is 1, or NaN for a label out of range.
    in_range = xent.in_range(labels, num_classes)
    terms = jnp.where(kept, jnp.where(in_range, picked, jnp.nan), 0.0)
  else:
    terms = jnp.where(kept, w_y * picked, 0.0)
  denominator = xent.denominator(w_y, weight, ignore_index)
  # The loss is -terms, negated after the reduction, as the jax.numpy idiom does: negated in the
  # gather's loop it ran 0.97x of the idiom at (4096, 2) (benchmarks/NOTES.md, nineteenth pass).
  # The same values (negation is exact); 0 - v, not -v, keeps an ignored example's loss and an
  # empty sum +0, as torch's.
  out = (0.0 - xent.reduce(terms, denominator, reduction)).astype(log_probs.dtype)
  # Residuals: the labels, and the mean's denominator where it is not simply N. The picked
  # log-probabilities and the loss only with class weights (their gradient needs them). Every
  # residual is an argument of the backward's executable: at (64, 128) the two unneeded ones cost
  # 0.9x of the JAX idiom, whose backward takes the labels alone.
  wants_dweight = weight is not None
  plain = weight is None and ignore_index is None
  return out, (labels, weight, picked if wants_dweight else None,
               None if plain else denominator, out if wants_dweight else None)


# nll_loss's 16-bit gradient as a one-hot select is one loop doing a compare, a select and a
# conversion per element; XLA:CPU's cost model splits such a loop over both cores from a few
# thousand elements (8192 at (4096, 2), not at (64, 128)), and below about 128K the second thread's
# wake-up costs more than the loop (bwd (1024, 10): 0.12 ms against the scatter's 0.06 ms;
# (64, 1024), (4096, 2), (4096, 10): 0.5-0.75x of the jax.numpy peer). In that band the gradient
# is a scatter; above it the select wins 1.3-7x, below it 1.1-1.5x.
_SCATTER_BAND = (2**12, 2**17)
# In that band, below this many examples the scatter writes 16-bit patterns (xent.one_per_row):
# its per-example rounding is a loop of its own, which XLA:CPU's cost model splits over both cores
# from about 2900 examples (2 classes, jax 0.10.2), and then the wake-up costs more than the
# float32 scatter and conversion it saves (bwd (4096, 2): 0.84x of jax.numpy against 1.09x).
_BITS_BELOW_ROWS = 2048
# XLA:CPU runs a program on the caller's thread only under 1000 flops (rows.TINY). The 16-bit
# one-hot select counts about 3.6 flops per element (HloCostAnalysis: the compare, the select and
# the per-row terms XLA copies into the loop); a float32 scatter and its conversion about one per
# element and five per example (seven with reduction="none"). Above rows.TINY elements, where
# the scatter's estimate stays under this, the gradient is the scatter: bfloat16 bwd (64, 10)
# 2306 -> 963 flops (the jax.numpy idiom's: 837), 0.68-1.07x of the idiom in rounds of
# benchmarks/cell_rounds.py -> 1.03-1.04x. Where both run on the pool the select is faster
# ((8, 128): 1.17x against 1.03x), and where both are under, too ((64, 2): 1.22x against 1.04x)
# (benchmarks/NOTES.md, eighteenth pass).
_CALLER_THREAD_FLOPS = 1000


def _nll_bwd(axis, ignore_index, reduction, num_classes, res, g):
  labels, weight, picked, denominator, out = res
  g = xent.dense(g)
  dtype = g.dtype  # the loss has the log_probs' dtype
  shape = labels.shape[:axis] + (num_classes,) + labels.shape[axis:]
  ct = checks.compute_dtype(dtype)
  if denominator is None:  # no weights, nothing ignored: the mean divides by N
    denominator = jnp.asarray(labels.size, ct)
  w_y, kept = xent.label_weights(labels, weight, ignore_index, num_classes, ct)
  row_g = jnp.where(kept, xent.row_cotangent(g.astype(ct), labels.shape, denominator, reduction),
                    0.0)
  # In bfloat16/float16 a one-hot select rounding once, not float32 zeros, a scatter and a convert
  # (xent.add_at_labels; the same values: each entry is one term rounded once), except at the
  # sizes in _SCATTER_BAND (module constant says why), where it is a scatter: of 16-bit patterns
  # (xent.one_per_row) below _BITS_BELOW_ROWS examples, of float32 values and a conversion above.
  zeros = jnp.zeros(shape, ct)
  narrow = jnp.dtype(dtype) != ct
  per_example = 7 if reduction == "none" else 5  # "none": each example's cotangent, converted
  if narrow and TINY < zeros.size < _CALLER_THREAD_FLOPS - per_example * labels.size:
    # -w_y * row_g as one select per example where there are no class weights (w_y is 1, NaN for
    # an out-of-range label, 0 where ignored, and row_g is 0 there): 128 flops fewer at (64, 10).
    if weight is None:
      bad = ~xent.in_range(labels, num_classes)
      vals = jnp.where(bad & kept if ignore_index is not None else bad, jnp.nan, -row_g)
    else:
      vals = -w_y * row_g
    dlog_probs = xent.scatter_add(zeros, labels, vals, num_classes, axis).astype(dtype)
  elif narrow and _SCATTER_BAND[0] <= zeros.size < _SCATTER_BAND[1]:
    if labels.size < _BITS_BELOW_ROWS:
      dlog_probs = xent.one_per_row(shape, labels, -w_y * row_g, num_classes, axis, dtype)
    else:
      dlog_probs = xent.scatter_add(zeros, labels, -w_y * row_g, num_classes, axis).astype(dtype)
  else:
    dlog_probs = xent.add_at_labels(zeros, labels, -w_y * row_g, num_classes, axis, dtype)
  dweight = None
  if picked is not None:  # class weights: their exact gradient
    dweight = xent.per_class(labels, jnp.where(kept, -picked * row_g, 0.0), num_classes)
    dweight = xent.finish_class_weight_grad(dweight, g, out, denominator, labels, kept, reduction,
                                            weight.dtype)
  return dlog_probs, None, dweight


xent.defvjp(_nll, _nll_fwd, _nll_bwd)


# ----------------------------------------------------------------------------------------------
# Sharded losses (``axis_name=`` / ``batch_axis_name=`` inside ``shard_map``): the class axis last,
# this shard's block of ``c`` classes out of ``C = c P``. Each forward reduces its block to row
# statistics, one all-gather combines them (:mod:`jaxsoftmax._src.collectives`), and the batch
# axes add one all-reduce of ``[sum, denominator]``. The backward is local: every row coefficient
# is in the residuals, and a label's one-hot term lands only on the shard that holds its class.
# Cotangents are summed over the axes they vary over beyond their inputs (``reduce_like``): the
# class weights over the batch axes, nothing else.


def _masked(v, mask, fill=-jnp.inf):
  """``v`` with padding classes (``mask`` False, along the last axis) set to ``fill``."""
  return v if mask is None else jnp.where(mask, v, fill)


def _class_weights(weight, mask, ct, ndim=1):
  """This block's class weights in ``ct``, 0 for padding classes, shaped to broadcast along the
  last axis of an ``ndim``-d array; None when neither is given."""
  if mask is None:
    w = None if weight is None else weight.astype(ct)
  else:
    w = jnp.where(mask, 1.0 if weight is None else weight.astype(ct), 0.0).astype(ct)
  return None if w is None else w.reshape((1,) * (ndim - 1) + (-1,))


def _block_stats(xc):
  """``(m, m_safe, e, s)`` of a block: its row max, the max made 0 where the block's row is all
  ``-inf`` (so ``e`` is 0 there, not NaN), ``e = exp(x - m_safe)`` and its row sum."""
  m = jnp.max(xc, axis=-1, initial=-jnp.inf)
  m_safe = jnp.where(m == -jnp.inf, 0.0, m)
  e = jnp.exp(xc - m_safe[..., None])
  return m, m_safe, e, jnp.sum(e, axis=-1)


def _global_probs(e, m, big, total):
  """This block of ``softmax(x)``: ``e^{x - m_p} e^{m_p - M} / S``."""
  factor = jnp.where(m == -jnp.inf, 0.0, jnp.exp(jnp.where(m == -jnp.inf, 0.0, m) - big)) / total
  return e * factor[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _ce_labels_sharded(x, labels, weight, opts, axes, like):
  return _ce_labels_sharded_fwd(x, labels, weight, opts, axes, like)[0]


def _ce_labels_sharded_fwd(x, labels, weight, opts, axes, like):
  ct = checks.compute_dtype(x.dtype)
  block, eps = x.shape[-1], opts.label_smoothing
  num_classes = axes.num_classes(block)
  mask = axes.class_mask(block)
  xc = _masked(x.astype(ct), mask)
  m, m_safe, e, s = _block_stats(xc)
  local, owns = collectives.block_labels(labels, axes.classes, block)
  x_y = jnp.where(owns, jnp.take_along_axis(xc, local[..., None], axis=-1)[..., 0], 0.0)
  w_loc = _class_weights(weight, mask, ct)
  w_y = jnp.where(owns, 1.0 if w_loc is None else jnp.take(w_loc, local), 0.0).astype(ct)
  columns = [m, s, x_y, w_y]
  if eps > 0.0:  # smoothing: S_p = sum_c w_c (x_c - m_p) and W_p = sum_c w_c per block
    shifted = _masked(xc - m_safe[..., None], mask, 0.0)
    columns.append(jnp.sum(shifted, -1) if w_loc is None else shifted @ w_loc)
    columns.append(jnp.broadcast_to(float(block) if w_loc is None else jnp.sum(w_loc), m.shape))
  if opts.argmax:
    columns.append(collectives.block_argmax(xc, axes.classes))
  stats = collectives.gather_stats([c.astype(ct) for c in columns], axes.classes)
  big, total, _ = collectives.combine_max_sum(stats[:, 0], stats[:, 1])
  z_y, w_y = jnp.sum(stats[:, 2], 0), jnp.sum(stats[:, 3], 0)
  argmax = collectives.combine_argmax(stats[:, 0], stats[:, -1], big) if opts.argmax else None
  kept = jnp.ones(labels.shape, bool) if opts.ignore_index is None else labels != opts.ignore_index
  in_range = xent.in_range(labels, num_classes)
  w_y = jnp.where(kept, jnp.where(in_range, w_y, jnp.nan), 0.0)
  smooth, total_w = None, float(num_classes)
  if eps > 0.0:  # sum_c w_c (x_c - M) = sum_p S_p + (m_p - M) W_p
    m_all = jnp.where(stats[:, 0] == -jnp.inf, 0.0, stats[:, 0])
    smooth = jnp.sum(stats[:, 4] + (m_all - big[None]) * stats[:, 5], 0)
    total_w = jnp.sum(stats[:, 5], 0)
  log_s = jnp.log(total)
  lse = big + log_s
  losses = xent.losses_from_stats(big, log_s, z_y, smooth, w_y, kept, total_w, eps, num_classes)
  red = collectives.reduce_rows(losses, xent.denominator(w_y, weight, opts.ignore_index),
                                opts.reduction, axes.batch, xent.z_rows(lse, kept, opts.z_loss),
                                kept)
  keep_x = xc if weight is not None and eps > 0.0 else None
  probs = _global_probs(e, m, big, total)
  return (red.out.astype(x.dtype), (lse, argmax)), (
      probs, keep_x, big, log_s, z_y, w_y, total_w, kept, local, owns, weight, red.denominator,
      red.ce.astype(x.dtype), lse, red.count)


def _ce_labels_sharded_bwd(opts, axes, like, res, g):
  (probs, xc, big, log_s, z_y, w_y, total_w, kept, local, owns, weight, denominator, out, lse,
   count) = res
  g, g_lse = xent.dense(g[0]), xent.given(g[1][0])
  ct = probs.dtype
  block, eps = probs.shape[-1], opts.label_smoothing
  num_classes = axes.num_classes(block)
  mask = axes.class_mask(block)
  row_g = jnp.where(kept, xent.row_cotangent(g.astype(ct), kept.shape, denominator,
                                             opts.reduction), 0.0)
  alpha, beta, gamma = xent.smoothing_coefficients(row_g, w_y, total_w, eps, num_classes)
  extra = xent.lse_coefficient(g, lse, kept, opts.z_loss, count, opts.reduction, g_lse)
  alpha = alpha if extra is None else alpha + extra
  dx = alpha[..., None] * probs
  if eps > 0.0:
    w_c = _class_weights(weight, mask, ct, dx.ndim)
    dx = dx - beta[..., None] * (1.0 if w_c is None else w_c)
  dx = xent.scatter_add(dx, local, jnp.where(owns, -gamma, 0.0), block, dx.ndim - 1)
  dweight = None
  if weight is not None:
    lsm_y = (z_y - big) - log_s
    mine = kept & owns
    dweight = xent.per_class(local, jnp.where(mine, -(1.0 - eps) * row_g * lsm_y, 0.0), block)
    if eps > 0.0:
      neg_lsm = _masked(log_s[..., None] - (xc - big[..., None]), mask, 0.0)
      dweight = dweight + (eps / num_classes) * jnp.sum(
          (row_g[..., None] * neg_lsm).reshape(-1, block), axis=0)
    dweight = xent.finish_class_weight_grad(dweight, g, out, denominator, local, mine,
                                            opts.reduction, weight.dtype)
  dx, dweight = collectives.reduce_like([dx.astype(g.dtype), dweight], [like[0], like[2]])
  return dx, None, dweight


xent.defvjp(_ce_labels_sharded, _ce_labels_sharded_fwd, _ce_labels_sharded_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _ce_probs_sharded(x, targets, weight, label_smoothing, reduction, axes, like, z_loss=0.0,
                      argmax=False):
  return _ce_probs_sharded_fwd(x, targets, weight, label_smoothing, reduction, axes, like,
                               z_loss, argmax)[0]


def _ce_probs_sharded_fwd(x, targets, weight, label_smoothing, reduction, axes, like, z_loss,
                          argmax):
  ct = checks.compute_dtype(x.dtype)
  num_classes = axes.num_classes(x.shape[-1])
  mask = axes.class_mask(x.shape[-1])
  xc = _masked(x.astype(ct), mask)
  m, m_safe, e, s = _block_stats(xc)
  wt = _smoothed(targets, label_smoothing, num_classes, ct)
  w_c = _class_weights(weight, mask, ct, x.ndim)
  if w_c is not None:
    wt = wt * w_c
  # Per block: T_p = sum_c wt_c and X_p = sum_c wt_c (x_c - m_p); the loss is T log S - X with
  # X = sum_p X_p + (m_p - M) T_p (as torch: a zero target on a -inf logit gives NaN).
  stats = collectives.gather_stats(
      [m, s, jnp.sum(wt, -1), jnp.sum(wt * _masked(xc - m_safe[..., None], mask, 0.0), -1)]
      + ([collectives.block_argmax(xc, axes.classes)] if argmax else []), axes.classes)
  big, total, _ = collectives.combine_max_sum(stats[:, 0], stats[:, 1])
  m_all = jnp.where(stats[:, 0] == -jnp.inf, 0.0, stats[:, 0])
  t_sum = jnp.sum(stats[:, 2], 0)
  losses = t_sum * jnp.log(total) - jnp.sum(stats[:, 3] + (m_all - big[None]) * stats[:, 2], 0)
  lse = big + jnp.log(total)
  kept = jnp.ones(lse.shape, bool)
  red = collectives.reduce_rows(losses, jnp.asarray(losses.size, ct), reduction, axes.batch,
                                xent.z_rows(lse, kept, z_loss), kept)
  rows = (lse, collectives.combine_argmax(stats[:, 0], stats[:, 4], big) if argmax else None)
  return (red.out.astype(x.dtype), rows), (xc, targets, weight, _global_probs(e, m, big, total),
                                           big, jnp.log(total), t_sum, red.denominator, lse,
                                           red.count)


def _ce_probs_sharded_bwd(label_smoothing, reduction, axes, like, z_loss, argmax, res, g):
  xc, targets, weight, probs, big, log_s, t_sum, rows, lse, count = res
  g, g_lse = xent.dense(g[0]), xent.given(g[1][0])
  ct = xc.dtype
  num_classes = axes.num_classes(xc.shape[-1])
  mask = axes.class_mask(xc.shape[-1])
  row_g = xent.row_cotangent(g.astype(ct), big.shape, rows, reduction)[..., None]
  t = _masked(_smoothed(targets, label_smoothing, num_classes, ct), mask, 0.0)
  w_c = _class_weights(weight, mask, ct, xc.ndim)
  w_c = 1.0 if w_c is None else w_c
  neg_lsm = _masked(log_s[..., None] - (xc - big[..., None]), mask, 0.0)
  dx = row_g * (probs * t_sum[..., None] - t * w_c)
  extra = xent.lse_coefficient(g, lse, jnp.ones(lse.shape, bool), z_loss, count, reduction, g_lse)
  if extra is not None:
    dx = dx + extra[..., None] * probs
  dtargets = (row_g * (1.0 - label_smoothing) * w_c * neg_lsm).astype(targets.dtype)
  dweight = None
  if weight is not None:
    dweight = jnp.sum((row_g * t * neg_lsm).reshape(-1, xc.shape[-1]), axis=0).astype(weight.dtype)
  return tuple(collectives.reduce_like([dx.astype(g.dtype), dtargets, dweight], like))


xent.defvjp(_ce_probs_sharded, _ce_probs_sharded_fwd, _ce_probs_sharded_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _nll_sharded(log_probs, labels, weight, ignore_index, reduction, axes, like):
  return _nll_sharded_fwd(log_probs, labels, weight, ignore_index, reduction, axes, like)[0]


def _nll_sharded_fwd(log_probs, labels, weight, ignore_index, reduction, axes, like):
  ct = checks.compute_dtype(log_probs.dtype)
  block = log_probs.shape[-1]
  num_classes = axes.num_classes(block)
  local, owns = collectives.block_labels(labels, axes.classes, block)
  picked = jnp.take_along_axis(log_probs, local[..., None], axis=-1)[..., 0].astype(ct)
  w_y = 1.0 if weight is None else jnp.take(weight.astype(ct), local)
  stats = collectives.gather_stats([jnp.where(owns, picked, 0.0),
                                    jnp.where(owns, w_y, 0.0).astype(ct)], axes.classes)
  picked, w_y = jnp.sum(stats[:, 0], 0), jnp.sum(stats[:, 1], 0)
  kept = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
  in_range = xent.in_range(labels, num_classes)
  w_y = jnp.where(kept, jnp.where(in_range, w_y, jnp.nan), 0.0)
  losses = jnp.where(kept, -w_y * picked, 0.0)
  out, denominator = collectives.reduce_rows(
      losses, xent.denominator(w_y, weight, ignore_index), reduction, axes.batch)[:2]
  out = out.astype(log_probs.dtype)
  return out, (local, owns, kept, w_y, weight, picked, denominator, out)


def _nll_sharded_bwd(ignore_index, reduction, axes, like, res, g):
  local, owns, kept, w_y, weight, picked, denominator, out = res
  dtype = g.dtype
  ct = checks.compute_dtype(dtype)
  block = like[3]
  row_g = jnp.where(kept, xent.row_cotangent(g.astype(ct), kept.shape, denominator, reduction), 0.0)
  zeros = jnp.zeros(kept.shape + (block,), ct)
  dlog_probs = xent.scatter_add(zeros, local, jnp.where(owns, -w_y * row_g, 0.0), block,
                                zeros.ndim - 1).astype(dtype)
  dweight = None
  if weight is not None:
    mine = kept & owns
    dweight = xent.per_class(local, jnp.where(mine, -picked * row_g, 0.0), block)
    dweight = xent.finish_class_weight_grad(dweight, g, out, denominator, local, mine, reduction,
                                            weight.dtype)
  dlog_probs, dweight = collectives.reduce_like([dlog_probs, dweight], [like[0], like[2]])
  return dlog_probs, None, dweight


_nll_sharded.defvjp(_nll_sharded_fwd, _nll_sharded_bwd)


def _sharded_loss(kind, x, labels, weight, axis, axes, **options):
  """The sharded rule of ``kind`` ("labels", "probs", "nll") with the class axis moved last."""
  x = jnp.moveaxis(x, axis, -1)
  if kind == "probs":
    labels = jnp.moveaxis(labels, axis, -1)
  like = (collectives.varying(x), collectives.varying(labels),
          None if weight is None else collectives.varying(weight))
  if kind == "labels":
    return _ce_labels_sharded(x, labels, weight, options["opts"], axes, like)
  if kind == "probs":
    return _ce_probs_sharded(x, labels, weight, options["label_smoothing"], options["reduction"],
                             axes, like, options["z_loss"], options["argmax"])
  return _nll_sharded(x, labels, weight, options["ignore_index"], options["reduction"], axes,
                      like + (x.shape[-1],))


# ----------------------------------------------------------------------------------------------
# Auto meshes: the fused forward (the loss and its gradients for a unit cotangent, which "mean"
# and "sum" scale) as one ``custom_partitioning`` op that runs the sharded rules above on each
# shard, with the rows over the axes of the logits' first dimension and the classes over those of
# the second (see jaxsoftmax._src.linear for the same on linear_cross_entropy). [N, C] logits.


def _auto_fused(kind, static, has_weight):
  """``f(x, t, [weight]) -> (loss, dx, [dt], [dweight])``, partitioned by our rule."""
  from jax.experimental.custom_partitioning import custom_partitioning  # noqa: PLC0415

  probs = kind == "probs"

  def split(args):
    return args[0], args[1], (args[2] if has_weight else None)

  def join(loss, dx, dt, dweight):
    return (loss, dx) + ((dt,) if probs else ()) + ((dweight,) if has_weight else ())

  def plain(x, t, weight):
    if kind == "labels":
      return _ce_labels_xla(x, t, weight, 1, static)[0]
    if probs:
      return _ce_probs(x, t, weight, 1, static.label_smoothing, static.reduction)[0]
    return _nll(x, t, weight, 1, static.ignore_index, static.reduction, x.shape[1])

  def unpartitioned(*args):
    # "none" (no class weight here): each row's gradient for a unit cotangent of its own loss;
    # rows are independent, so one vjp with all-ones cotangents gives them all at once.
    x, t, weight = split(args)
    if probs:
      loss, vjp = jax.vjp(plain, x, t, weight)
      dx, dt, dweight = vjp(jnp.ones_like(loss))
    else:
      loss, vjp = jax.vjp(lambda x, weight: plain(x, t, weight), x, weight)
      (dx, dweight), dt = vjp(jnp.ones_like(loss)), None
    return join(loss, dx, dt, dweight)

  fused = custom_partitioning(unpartitioned)

  def layout(mesh, arg_shapes):
    spec = collectives.spec_of(arg_shapes[0], 2)
    batch = collectives.entry_names(spec[0])
    classes = tuple(a for a in collectives.entry_names(spec[1]) if a not in batch)
    rows, cls = batch or None, classes or None
    x_s, n_s, c_s = (NamedSharding(mesh, P(rows, cls)), NamedSharding(mesh, P(rows)),
                     NamedSharding(mesh, P(cls)))
    args = (x_s, x_s if probs else n_s) + ((c_s,) if has_weight else ())
    loss_s = n_s if static.reduction == "none" else NamedSharding(mesh, P())
    return collectives.Axes(classes, batch), args, join(loss_s, x_s, x_s, c_s)

  def partition(mesh, arg_shapes, result_shape):
    axes, arg_shardings, result_shardings = layout(mesh, arg_shapes)
    rows, cls = frozenset(axes.batch), frozenset(axes.classes)
    like = (rows | cls, rows | cls if probs else rows, cls if has_weight else None)

    def lower_fn(*args):
      x, t, weight = split(args)
      with collectives.untyped(rows | cls):
        if kind == "labels":
          (loss, _), res = _ce_labels_sharded_fwd(x, t, weight, static, axes, like)
          dx, dt, dweight = _ce_labels_sharded_bwd(static, axes, like, res,
                                                   (jnp.ones_like(loss), (None, None)))
        elif probs:
          (loss, _), res = _ce_probs_sharded_fwd(x, t, weight, static.label_smoothing,
                                                 static.reduction, axes, like, 0.0, False)
          dx, dt, dweight = _ce_probs_sharded_bwd(static.label_smoothing, static.reduction, axes,
                                                  like, 0.0, False, res,
                                                  (jnp.ones_like(loss), (None, None)))
        else:
          nll_like = like + (x.shape[1],)
          loss, res = _nll_sharded_fwd(x, t, weight, static.ignore_index, static.reduction,
                                       axes, nll_like)
          dx, dt, dweight = _nll_sharded_bwd(static.ignore_index, static.reduction, axes,
                                             nll_like, res, jnp.ones_like(loss))
      return join(loss, dx, dt, dweight)

    return mesh, lower_fn, result_shardings, arg_shardings

  def infer(mesh, arg_shapes, result_shape):
    return layout(mesh, arg_shapes)[2]

  operands = ["n c", "n c" if probs else "n"] + (["c"] if has_weight else [])
  results = (["n" if static.reduction == "none" else "", "n c"] + (["n c"] if probs else [])
             + (["c"] if has_weight else []))
  fused.def_partition(partition, infer_sharding_from_operands=infer,
                      sharding_rule=", ".join(operands) + " -> " + ", ".join(results))
  return fused


_AUTO_FUSED = {}  # one custom_partitioning op per static configuration (its rule closes over it)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _loss_auto(x, t, weight, kind, static):
  return _loss_auto_fwd(x, t, weight, kind, static)[0]


def _loss_auto_fwd(x, t, weight, kind, static):
  key = (kind, static, weight is not None)
  if key not in _AUTO_FUSED:
    _AUTO_FUSED[key] = _auto_fused(*key)
  out = list(_AUTO_FUSED[key](*((x, t) + (() if weight is None else (weight,)))))
  loss, dx = out[0], out[1]
  dt = out.pop(2) if kind == "probs" else None
  dweight = out[2] if weight is not None else None
  return loss, (dx, dt, dweight)


def _loss_auto_bwd(kind, static, res, g):
  # "mean"/"sum": a scalar cotangent scales everything; "none": row n's gradients by g[n].
  gc = g.astype(jnp.float32)
  gc = gc if static.reduction != "none" else gc[:, None]

  def scale(r):
    return None if r is None else (gc * r.astype(jnp.float32)).astype(r.dtype)
  return tuple(scale(r) for r in res)


_loss_auto.defvjp(_loss_auto_fwd, _loss_auto_bwd)


def _auto_applies(x, axis, reduction, weight, implementation="xla") -> bool:
  """The Auto-mesh rule takes [N, C] logits with classes last; "none" without class weights
  (their gradient sums rows with different cotangents, which a forward cannot prepare)."""
  return (x.ndim == 2 and axis == 1 and (reduction != "none" or weight is None)
          and implementation != "pallas" and collectives.auto_mesh(x) is not None)


# ----------------------------------------------------------------------------------------------
# Public API: validation at trace time, then one jitted call.


def _check_labels(logits, labels, axis, op):
  """Returns ``(labels, True)`` for integer class labels, ``(labels, False)`` for probability
  targets (which must have the logits' shape)."""
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    expected = logits.shape[:axis] + logits.shape[axis + 1:]
    if labels.shape != expected:
      raise ArgumentError(
          f"{op}: integer labels must have the logits' shape without the class axis {axis}: "
          f"expected {expected}, got labels of shape {labels.shape} for logits of shape "
          f"{logits.shape}."
      )
    return labels, True
  if jnp.issubdtype(labels.dtype, jnp.floating):
    if labels.shape != logits.shape:
      raise ArgumentError(
          f"{op}: probability targets must have the logits' shape {logits.shape}; got "
          f"{labels.shape}. (Integer labels select class indices instead.)"
      )
    return labels, False
  raise DTypeError(
      f"{op}: labels must be integer class indices or floating-point class probabilities; "
      f"got dtype {labels.dtype}."
  )


def loss_aux(outputs: xent.Outputs, lse, argmax, target, kept, z_loss, reduction,
             batch=(), dtype=None) -> xent.LossAux:
  """The in-pass outputs asked for, from a rule's per-row ``lse`` and ``argmax``: accuracy over the
  ``kept`` rows and the z-loss reduced as the loss, summed over the ``batch`` mesh axes (one
  all-reduce, only when they are asked for under ``batch_axis_name``)."""
  accuracy = z = None
  if outputs.accuracy:
    hit = (argmax == target) & kept
    both = collectives.batch_sum(jnp.stack([jnp.sum(hit.astype(jnp.float32)),
                                            jnp.sum(kept.astype(jnp.float32))]), batch)
    accuracy = both[0] / both[1]
  if outputs.z_loss:
    rows = xent.z_rows(lse, kept, z_loss)
    rows = jnp.zeros_like(lse) if rows is None else rows
    if reduction == "none":
      z = rows
    elif reduction == "sum":
      z = collectives.batch_sum(jnp.sum(rows), batch)
    else:
      both = collectives.batch_sum(jnp.stack([jnp.sum(rows), jnp.sum(kept.astype(rows.dtype))]),
                                   batch)
      z = both[0] / both[1]
  dtype = lse.dtype if dtype is None else dtype  # the logits' own, as torch.logsumexp's
  return xent.LossAux(lse.astype(dtype) if outputs.lse else None,
                      argmax if outputs.argmax else None, accuracy,
                      None if z is None else z.astype(dtype))


def _target_argmax(targets, axis, axes):
  """The class each probability target puts most mass on (global over class shards)."""
  if not axes.classes:
    return jnp.argmax(targets, axis=axis).astype(jnp.int32)
  t = jnp.moveaxis(targets, axis, -1)
  t = _masked(t.astype(checks.compute_dtype(t.dtype)), axes.class_mask(t.shape[-1]))  # exact ids
  m = jnp.max(t, axis=-1)
  stats = collectives.gather_stats([m, collectives.block_argmax(t, axes.classes)], axes.classes)
  return collectives.combine_argmax(stats[:, 0], stats[:, 1], jnp.max(stats[:, 0], axis=0))


@functools.partial(jax.jit, static_argnames=("axis", "opts", "indices", "checked", "backend",
                                             "axes", "outputs"))
def _cross_entropy(logits, labels, weight, *, axis, opts, indices, checked, backend,
                   axes=collectives.Axes(), outputs=xent.Outputs()):
  if checked:
    checks.check_labels_traced(labels, axes.num_classes(logits.shape[axis]),
                               opts.ignore_index, "cross_entropy")
  dtype = logits.dtype
  # Soft-capped half logits stay in float32 (the cap's derivative and the loss see them unrounded;
  # the gradient is rounded once, at the cast back).
  logits = xent.softcap(logits, opts.softcap, checks.compute_dtype(dtype))
  if axes and indices:
    out = _sharded_loss("labels", logits, labels, weight, axis, axes, opts=opts)
  elif axes:
    out = _sharded_loss("probs", logits, labels, weight, axis, axes,
                        label_smoothing=opts.label_smoothing, reduction=opts.reduction,
                        z_loss=opts.z_loss, argmax=opts.argmax)
  elif not indices:
    out = _ce_probs(logits, labels, weight, axis, opts.label_smoothing, opts.reduction,
                    opts.z_loss)
  elif backend is dispatch.Backend.XLA:
    out = _ce_labels_xla(logits, labels, weight, axis, opts)
  else:
    out = _ce_labels_kernel(logits, labels, weight, opts,
                            backend is dispatch.Backend.PALLAS_INTERPRET)
  loss, (lse, argmax) = out
  loss = loss.astype(dtype)
  if not outputs:
    return loss
  if indices:
    target = labels
    kept = jnp.ones(labels.shape, bool) if opts.ignore_index is None else (
        labels != opts.ignore_index)
  else:
    target = _target_argmax(labels, axis, axes) if outputs.accuracy else None
    kept = jnp.ones(lse.shape, bool)
  return loss, loss_aux(outputs, lse, argmax, target, kept, opts.z_loss, opts.reduction,
                        axes.batch, dtype)


@functools.partial(jax.jit, static_argnames=("axis", "ignore_index", "reduction", "checked",
                                             "axes"))
def _nll_loss(log_probs, labels, weight, *, axis, ignore_index, reduction, checked=False,
              axes=collectives.Axes()):
  if checked:
    checks.check_labels_traced(labels, axes.num_classes(log_probs.shape[axis]),
                               ignore_index, "nll_loss")
  if axes:
    return _sharded_loss("nll", log_probs, labels, weight, axis, axes, ignore_index=ignore_index,
                         reduction=reduction)
  return _nll(log_probs, labels, weight, axis, ignore_index, reduction, log_probs.shape[axis])


@functools.partial(jax.jit, static_argnames=("kind", "static"))
def _loss_jit(x, t, weight, *, kind, static):
  out = _loss_auto(xent.softcap(x, static.softcap, checks.compute_dtype(x.dtype)), t, weight,
                   kind, static)
  return out.astype(x.dtype)


def _explicit_axes(spec, axis, reduction):
  """From the logits' PartitionSpec over an Explicit mesh: the sharded call's axes, the labels'
  spec (the logits' without the class entry) and the output's."""
  batch = tuple(n for i, e in enumerate(spec) if i != axis for n in collectives.entry_names(e))
  axes = collectives.Axes(collectives.entry_names(spec[axis]), batch)
  label_spec = spec[:axis] + spec[axis + 1:]
  return axes, label_spec, label_spec if reduction == "none" else ()


def aux_specs(outputs: xent.Outputs, out_spec, row_spec):
  """shard_map out_specs for ``loss`` or ``(loss, LossAux)`` on an Explicit mesh: per-row outputs
  follow the rows, accuracy (and a reduced z-loss) are replicated."""
  if not outputs:
    return out_spec

  def spec(asked, entries):
    return P(*entries) if asked else None

  return (P(*out_spec), xent.LossAux(spec(outputs.lse, row_spec), spec(outputs.argmax, row_spec),
                                     spec(outputs.accuracy, ()), spec(outputs.z_loss, out_spec)))


def _sharding_axes(axis_name, batch_axis_name, implementation, op) -> collectives.Axes:
  """The validated mesh axes of a sharded call (empty ``Axes`` for an unsharded one)."""
  axes = collectives.check_axes(collectives.axis_names(axis_name, "axis_name", op),
                                collectives.axis_names(batch_axis_name, "batch_axis_name", op), op)
  if axes and implementation == "pallas":
    raise ArgumentError(f"{op}: implementation='pallas' cannot take axis_name or batch_axis_name "
                        "(the sharded path is XLA's); use implementation=None or 'xla'.")
  return axes


def _prepare_loss(x, labels, axis, weight, reduction, op, name):
  x = checks.as_float_array(x, name, op)
  if x.ndim == 0:
    raise ArgumentError(f"{op}: {name} must have a class axis; got a 0-d array.")
  axis = checks.normalize_axis(axis, x.ndim, op)
  if x.shape[axis] == 0:  # torch: IndexError, since no target can be in range
    raise IndexError(f"{op}: {name} of shape {x.shape} has no classes (size 0 along axis {axis}).")
  labels, indices = _check_labels(x, labels, axis, op)
  weight = checks.check_weight(weight, x.shape[axis], op)
  reduction = checks.check_reduction(reduction, op)
  return x, labels, indices, axis, weight, reduction


def cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, axis: int = -1,
                  weight: jax.typing.ArrayLike | None = None, ignore_index: int | None = None,
                  label_smoothing: float = 0.0, reduction: str = "mean",
                  checked: bool = False, implementation: str | None = None,
                  axis_name: str | tuple[str, ...] | None = None,
                  batch_axis_name: str | tuple[str, ...] | None = None,
                  num_classes: int | None = None, z_loss: float = 0.0,
                  logit_softcap: float | None = None, return_lse: bool = False,
                  return_argmax: bool = False, return_accuracy: bool = False,
                  return_z_loss: bool = False) -> jax.Array | tuple[jax.Array, xent.LossAux]:
  r"""Cross-entropy between logits and integer labels or class probabilities, as torch computes it.

  .. math:: \ell_n = -\sum_c w_c\, t_{n,c} \log\mathrm{softmax}(x_n)_c

  with ``t`` the (smoothed) one-hot label or the given probabilities. Computed from the logits in
  one stable pass; never forms ``log(softmax(x))``.

  Args:
    logits: ``[..., classes, ...]`` floating point, classes along ``axis``.
    labels: integer class indices of the logits' shape without ``axis``, or floating-point class
      probabilities of the logits' shape.
    axis: the class axis (torch's mirror uses 1; JAX code usually keeps classes last).
    weight: optional ``[classes]`` rescaling weights; differentiable.
    ignore_index: a label value whose examples contribute nothing (integer labels only).
    label_smoothing: ``eps`` in [0, 1]; the target becomes ``(1 - eps) t + eps / classes``.
    reduction: ``"mean"`` (weighted mean over kept examples), ``"sum"`` or ``"none"``.
    checked: under ``jit``, also check the labels with ``jax.experimental.checkify``: run the
      caller under ``checkify.checkify`` and ``err.throw()`` names the first out-of-range label and
      its index (concrete labels are always checked, raising IndexError).
    implementation: ``None`` (the Pallas row kernel on GPU/TPU for integer labels with the class
      axis last, else XLA), ``"xla"`` or ``"pallas"``; see :func:`jaxsoftmax.softmax`. The kernel
      forms the gradient in the forward pass (mean and sum), in one read of the logits.
    axis_name: inside ``jax.shard_map``, the mesh axis (or axes) the class axis is split over in
      contiguous blocks: ``logits``, probability targets and ``weight`` are this shard's blocks,
      integer labels stay global class ids. One all-gather of a few numbers per row combines the
      blocks; the backward needs no collective. See :mod:`jaxsoftmax._src.collectives`.
    batch_axis_name: inside ``jax.shard_map``, the mesh axes the rows are split over: ``"mean"``
      divides by the global sum of kept weights and ``"sum"`` sums over every shard (one
      all-reduce of two numbers); ``"none"`` returns this shard's rows.
    num_classes: with ``axis_name``, the true number of classes when the class axis was padded at
      the end to a multiple of the axis size (less than one block of padding): padding classes
      never enter a max, a sum or a gradient, and ``label_smoothing`` spreads over the real ones.
    z_loss: ``s >= 0``: adds ``s lse_n^2`` (``lse_n = logsumexp`` of row n's logits) for each kept
      row (PaLM's z-loss), gradient ``2 s lse_n softmax``. Class weights do not scale it, and
      ``"mean"`` divides its sum by the number of kept rows (the lse does not depend on the label;
      as Liger-Kernel and levanter): ``F.cross_entropy + s * (lse**2)[kept].mean()``.
    logit_softcap: ``c > 0``: the logits become ``c tanh(logits / c)`` before anything else
      (Gemma-2's final soft-cap, ``c = 30``), with the gradient through it.
    return_lse: also return each row's ``logsumexp`` (differentiable: its gradient is softmax).
    return_argmax: also return each row's predicted class (the first maximum), int32.
    return_accuracy: also return the fraction of kept rows whose argmax is the label.
    return_z_loss: also return the z-loss term inside the loss, reduced as the loss (to log it).

  Returns:
    A scalar, or per-example losses of the labels' batch shape when ``reduction="none"``; in the
    logits' dtype. With any ``return_*``: ``(loss, aux)``, ``aux`` a :class:`LossAux` whose fields
    not asked for are None. All of them come from the loss's own pass over the logits.

  Raises:
    DTypeError: non-floating logits, or labels that are neither integer nor floating.
    ArgumentError: (a ``ValueError``) mismatched shapes, bad weight, label_smoothing outside [0, 1].
    IndexError: a concrete label outside ``[0, classes)`` that is not ``ignore_index``.
    ValueError: unknown reduction.

  Note:
    Under ``jit`` labels are not checked; an out-of-range label gives NaN (loss and gradient), never
    a silent finite number. All examples ignored with ``reduction="mean"`` gives NaN, as in torch.

  Example:
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> jaxsoftmax.cross_entropy(logits, jnp.array([0, 2])).round(4)
    Array(0.1755, dtype=float32)

  See also: :func:`nll_loss`, :func:`log_softmax`.
  """
  op = "cross_entropy"
  logits, labels, indices, axis, weight, reduction = _prepare_loss(
      logits, labels, axis, weight, reduction, op, "logits")
  axes = _sharding_axes(axis_name, batch_axis_name, implementation, op)
  axes = collectives.Axes(axes.classes, axes.batch, collectives.check_num_classes(
      num_classes, logits.shape[axis], axes.classes, op))
  ignore_index = checks.check_ignore_index(ignore_index, op)
  label_smoothing = checks.check_label_smoothing(label_smoothing, op)
  checks.check_flags(op, return_lse=return_lse, return_argmax=return_argmax,
                     return_accuracy=return_accuracy, return_z_loss=return_z_loss)
  outputs = xent.Outputs(return_lse, return_argmax, return_accuracy, return_z_loss)
  opts = LossOptions(ignore_index, label_smoothing, reduction, checks.check_z_loss(z_loss, op),
                     checks.check_softcap(logit_softcap, op),
                     outputs.argmax or outputs.accuracy, outputs.lse or outputs.z_loss)
  if indices:
    checks.check_labels_in_range(labels, axes.num_classes(logits.shape[axis]),
                                 ignore_index, op)
  elif ignore_index is not None:
    raise ArgumentError(f"{op}: ignore_index={ignore_index} applies to integer labels only, "
                        "not to probability targets.")
  layout = None if axes else collectives.explicit_layout(logits)
  if (layout is None and not axes and not outputs and not opts.z_loss
      and _auto_applies(logits, axis, reduction, weight, implementation)):
    return _loss_jit(logits, labels, weight, kind="labels" if indices else "probs", static=opts)
  if layout is not None and implementation != "pallas":
    mesh, spec = layout
    axes, label_spec, out_spec = _explicit_axes(spec, axis, reduction)

    def body(logits, labels, weight):
      return _cross_entropy(logits, labels, weight, axis=axis, opts=opts, indices=indices,
                            backend=dispatch.Backend.XLA, axes=axes, checked=False,
                            outputs=outputs)

    return collectives.run_on_mesh(body, mesh, [logits, labels, weight],
                                   [spec, label_spec if indices else spec, (spec[axis],)],
                                   aux_specs(outputs, out_spec, label_spec))
  if axes:
    return _cross_entropy(logits, labels, weight, axis=axis, opts=opts, indices=indices,
                          backend=dispatch.Backend.XLA, axes=axes, outputs=outputs,
                          checked=bool(checked) and indices and not checks.is_concrete(labels))
  backend = dispatch.resolve(implementation, dispatch.KernelCall(
      op, logits.dtype, last_axis=axis == logits.ndim - 1, rows=labels.size,
      n=logits.shape[axis], empty=logits.size == 0,
      other=None if indices else "takes integer labels only (probability targets use 'xla')"))
  return _cross_entropy(logits, labels, weight, axis=axis, opts=opts, indices=indices,
                        backend=backend, outputs=outputs,
                        checked=bool(checked) and indices and not checks.is_concrete(labels))


def nll_loss(log_probs: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, axis: int = -1,
             weight: jax.typing.ArrayLike | None = None, ignore_index: int | None = None,
             reduction: str = "mean", checked: bool = False,
             axis_name: str | tuple[str, ...] | None = None,
             batch_axis_name: str | tuple[str, ...] | None = None,
             num_classes: int | None = None) -> jax.Array:
  r"""Negative log-likelihood of integer labels under given log-probabilities.

  .. math:: \ell_n = -w_{y_n}\, \mathrm{lp}_{n, y_n}

  Args:
    log_probs: ``[..., classes, ...]`` log-probabilities (e.g. from :func:`log_softmax`).
    labels: integer class indices, the log_probs' shape without ``axis``.
    axis: the class axis.
    weight: optional ``[classes]`` weights; differentiable.
    ignore_index: a label value whose examples contribute nothing.
    reduction: ``"mean"`` (divided by ``sum_n w[y_n]`` over kept examples), ``"sum"`` or ``"none"``.
    checked: check traced labels with checkify, as :func:`cross_entropy`.
    axis_name: the class axis split over mesh axes inside ``shard_map``, as :func:`cross_entropy`.
    batch_axis_name: the rows split over mesh axes, as :func:`cross_entropy`.
    num_classes: the true class count of padded blocks, as :func:`cross_entropy`.

  Returns:
    A scalar, or per-example losses for ``reduction="none"``.

  Raises:
    As :func:`cross_entropy`; probability targets are not accepted.

  Example:
    >>> lp = jaxsoftmax.log_softmax(jnp.array([[2.0, 0.5, -1.0]]))
    >>> jaxsoftmax.nll_loss(lp, jnp.array([0])).round(4)
    Array(0.2413, dtype=float32)

  See also: :func:`cross_entropy`.
  """
  op = "nll_loss"
  log_probs, labels, indices, axis, weight, reduction = _prepare_loss(
      log_probs, labels, axis, weight, reduction, op, "log_probs")
  if not indices:
    raise DTypeError(f"{op}: labels must be integer class indices; got dtype {labels.dtype}.")
  ignore_index = checks.check_ignore_index(ignore_index, op)
  axes = _sharding_axes(axis_name, batch_axis_name, None, op)
  axes = collectives.Axes(axes.classes, axes.batch, collectives.check_num_classes(
      num_classes, log_probs.shape[axis], axes.classes, op))
  checks.check_labels_in_range(labels, axes.num_classes(log_probs.shape[axis]),
                               ignore_index, op)
  layout = None if axes else collectives.explicit_layout(log_probs)
  if layout is None and not axes and _auto_applies(log_probs, axis, reduction, weight):
    return _loss_jit(log_probs, labels, weight, kind="nll",
                     static=LossOptions(ignore_index, 0.0, reduction))
  if layout is not None:
    mesh, spec = layout
    axes, label_spec, out_spec = _explicit_axes(spec, axis, reduction)

    def body(log_probs, labels, weight):
      return _nll_loss(log_probs, labels, weight, axis=axis, ignore_index=ignore_index,
                       reduction=reduction, axes=axes)

    return collectives.run_on_mesh(body, mesh, [log_probs, labels, weight],
                                   [spec, label_spec, (spec[axis],)], out_spec)
  return _nll_loss(log_probs, labels, weight, axis=axis, ignore_index=ignore_index,
                   reduction=reduction, axes=axes,
                   checked=bool(checked) and not checks.is_concrete(labels))
