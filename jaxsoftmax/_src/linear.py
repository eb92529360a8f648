"""Linear cross-entropy: a projection and cross_entropy fused, without the (N, V) logits.

For inputs ``x`` (N, D), a kernel ``w`` (D, V) (Flax's layout), an optional bias ``b`` (V,) and
integer labels, the loss is exactly :func:`jaxsoftmax.cross_entropy` of ``z = x w + b``, with the
same weight, ignore_index, label_smoothing and reduction rules. The rows are processed in chunks of
``C``: each chunk forms its (C, V) logits in float32, reduces them to per-row losses and drops them,
so the memory is O(C V) instead of O(N V).

Under differentiation the gradient is formed in the forward pass (as Liger-Kernel does): with
``p = softmax(z)``, per-row weights ``a_n = (1-eps) w_{y_n} + (eps/V) sum_c w_c`` and the mean's or
sum's row scale ``r_n``,

.. math:: \\bar z_{n,c} = r_n\\,(a_n p_{n,c} - (1-\\varepsilon) w_{y_n} [c = y_n]
                               - (\\varepsilon/V) w_c),\\quad
          \\bar x = \\bar z\\, w^\\top,\\quad \\bar w = x^\\top \\bar z,\\quad \\bar b = 1^\\top \\bar z

chunk by chunk, so each chunk's logits are computed once (three matmuls in all, the minimum). The
backward then only scales the stored gradients by the incoming cotangent. With
``reduction="none"`` the cotangent differs per row, so the backward recomputes the chunks instead,
from the forward's per-row max and log-sum-exp.

Half-precision inputs: matmuls accumulate in float32, the softmax is computed in float32, and the
gradient matmuls take the float32 logit gradient (with ``w`` upcast, which costs a float32 copy of
``w``); every gradient is accumulated in float32 and rounded once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsoftmax._src import checks, collectives, dispatch, xent
from jaxsoftmax._src.errors import ArgumentError, DTypeError
from jaxsoftmax._src.losses import LossOptions, ce_row_kernel

__all__ = ["linear_cross_entropy", "default_chunk_size", "ArgNames", "validated_call"]

# One chunk's float32 logits. Larger chunks keep the matmuls efficient (measurements:
# benchmarks/NOTES.md), while XLA's temporary memory grows by one logits row per chunk row.
_CHUNK_BYTES = 32 * 2**20


# On a GPU or TPU: 256 MiB, so that a chunk has enough rows to fill the device (at V = 131072,
# 512 rows: the Pallas row kernel's default minimum for rows longer than one pass).
_CHUNK_BYTES_ACCELERATOR = 256 * 2**20


def default_chunk_size(n: int, v: int, accelerator: bool | None = None) -> int:
  """Rows per chunk: a power of two whose (rows, V) float32 logits fit in 32 MiB (256 MiB on a GPU
  or TPU, by default when JAX's default backend is one; at least 8 rows), and no more than the rows
  there are."""
  if accelerator is None:
    accelerator = jax.default_backend() in ("gpu", "tpu")
  budget = _CHUNK_BYTES_ACCELERATOR if accelerator else _CHUNK_BYTES
  rows = max(8, 2 ** int(math.log2(max(budget // (4 * max(v, 1)), 1))))
  return max(1, min(rows, n))


@dataclasses.dataclass(frozen=True)
class _Static:
  """The static configuration of one call (a jit and custom_vjp static argument).

  ``vocab_first``: the kernel is ``[V, D]`` (torch's ``Linear.weight``, the mirror) instead of
  ``[D, V]`` (Flax, the core API); it picks the contraction, so no transposed copy of a large
  kernel is ever made.
  """

  loss: LossOptions
  chunk_size: int
  vocab_first: bool
  backend: dispatch.Backend


def _mm(a, b, dims):
  """A matmul that accumulates in, and returns, the compute dtype (float32 for half inputs)."""
  ct = checks.compute_dtype(jnp.result_type(a.dtype, b.dtype))
  return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=ct)


def _chunked(a, labels, chunk, fill=0):
  """``a`` as ``(num_chunks, chunk, ...)``, padded with ``fill``."""
  pad = -labels.shape[0] % chunk
  if pad:
    a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1), constant_values=fill)
  return a.reshape((a.shape[0] // chunk, chunk) + a.shape[1:])


def _logits(x_chunk, w, b, vocab_first):
  z = _mm(x_chunk, w, ((1,), (1 if vocab_first else 0,)))
  return z if b is None else z + b.astype(z.dtype)[None, :]


class _ChunkTerms(NamedTuple):
  """What the chunk step needs beside the chunk's logits ``z``: labels, per-row ``w_y`` (0 if
  ignored or padding, NaN if out of range), kept mask, row cotangents (None: no gradient), and the
  row statistics ``(m, log_s)`` of an earlier pass (None: compute them)."""

  labels: jax.Array
  w_y: jax.Array
  kept: jax.Array
  row_g: jax.Array | None
  stats: tuple[jax.Array, jax.Array] | None


def _xla_chunk_step(z, t, weight, eps, total_w):
  """``(losses, m, log_s, dz | None)`` of one chunk, in XLA."""
  v = z.shape[1]
  if t.stats is None:
    m = jnp.max(z, axis=1)
    log_s = jnp.log(jnp.sum(jnp.exp(z - m[:, None]), axis=1))
  else:
    m, log_s = t.stats
  rows = jnp.arange(t.labels.shape[0])
  z_y = z[rows, jnp.clip(t.labels, 0, v - 1)]
  smooth_sum = None
  if eps > 0.0:
    shifted = z - m[:, None]
    smooth_sum = jnp.sum(shifted, axis=1) if weight is None else shifted @ weight.astype(z.dtype)
  losses = xent.losses_from_stats(m, log_s, z_y, smooth_sum, t.w_y, t.kept, total_w, eps, v)
  if t.row_g is None:
    return losses, m, log_s, None
  alpha, beta, gamma = xent.smoothing_coefficients(t.row_g, t.w_y, total_w, eps, v)
  dz = alpha[:, None] * jnp.exp(z - (m + log_s)[:, None])
  if eps > 0.0:
    dz = dz - beta[:, None] * (1.0 if weight is None else weight.astype(z.dtype)[None, :])
  return losses, m, log_s, xent.scatter_add(dz, t.labels, -gamma, v, 1)


def _kernel_chunk_step(z, t, weight, eps, total_w, *, interpret):
  """As :func:`_xla_chunk_step`, through cross_entropy's row kernel: statistics, losses and
  d loss / d z in one read of the chunk's logits when a row fits on chip."""
  stats = () if t.stats is None else (t.stats[0][:, None], jnp.exp(t.stats[1])[:, None])
  row_g = jnp.zeros_like(t.w_y) if t.row_g is None else t.row_g
  m, s, z_y, smooth_sum, dz = ce_row_kernel(z, t.labels, weight, row_g, t.w_y, total_w, eps,
                                            stats, interpret=interpret,
                                            grad=t.row_g is not None)
  log_s = jnp.log(s[:, 0])
  losses = xent.losses_from_stats(m[:, 0], log_s, z_y[:, 0], smooth_sum[:, 0], t.w_y, t.kept,
                                  total_w, eps, z.shape[1])
  return losses, m[:, 0], log_s, dz


def _chunk_dweight(z, m, log_s, t, eps):
  """The chunk's share of d loss / d weight (before the mean's denominator term)."""
  v = z.shape[1]
  rows = jnp.arange(t.labels.shape[0])
  nll = jnp.where(t.kept, log_s - (z[rows, jnp.clip(t.labels, 0, v - 1)] - m), 0.0)
  dw = xent.per_class(t.labels, (1.0 - eps) * t.row_g * nll, v)
  if eps > 0.0:
    kept_g = jnp.where(t.kept, t.row_g, 0.0)
    shifted = jnp.where(t.kept[:, None], z - m[:, None], 0.0)  # an ignored row's inf: not NaN
    dw = dw + (eps / v) * (jnp.sum(kept_g * log_s) - kept_g @ shifted)
  return dw


def _scan(x, w, b, labels, weight, static, *, row_scale=None, stats=None):
  """One pass over the chunks.

  Returns the gradient sums ``(dw, db, dweight)`` (None without ``row_scale``) and per-row
  ``losses``, ``m``, ``log_s`` (and ``dx`` with ``row_scale``, per-row d loss / d loss_n).
  ``stats`` (m, log_s) from an earlier pass skips the max and sum.
  """
  n, v = labels.shape[0], w.shape[0 if static.vocab_first else 1]
  eps, chunk = static.loss.label_smoothing, static.chunk_size
  ct = checks.compute_dtype(x.dtype)
  total_w = xent.total_weight(weight, v, ct)
  if static.backend is dispatch.Backend.XLA:
    step = _xla_chunk_step
  else:
    step = functools.partial(_kernel_chunk_step,
                             interpret=static.backend is dispatch.Backend.PALLAS_INTERPRET)
  want_grad = row_scale is not None
  seq = {"x": _chunked(x, labels, chunk), "labels": _chunked(labels, labels, chunk, -1),
         "valid": _chunked(jnp.ones((n,), bool), labels, chunk, False)}
  if stats is not None:
    seq["stats"] = _chunked(jnp.stack(stats, 1), labels, chunk)
  if want_grad:
    seq["row_scale"] = _chunked(row_scale, labels, chunk)

  def body(carry, inputs):
    x_chunk, chunk_labels, valid = inputs["x"], inputs["labels"], inputs["valid"]
    z = _logits(x_chunk, w, b, static.vocab_first)
    w_y, kept = xent.label_weights(chunk_labels, weight, static.loss.ignore_index, v, ct)
    kept = kept & valid
    w_y = jnp.where(valid, w_y, 0.0)
    given = None if stats is None else (inputs["stats"][:, 0], inputs["stats"][:, 1])
    row_g = jnp.where(kept, inputs["row_scale"], 0.0) if want_grad else None
    terms = _ChunkTerms(chunk_labels, w_y, kept, row_g, given)
    losses, m, log_s, dz = step(z, terms, weight, eps, total_w)
    out = {"losses": losses, "m": m, "log_s": log_s}
    if not want_grad:
      return carry, out
    # Half inputs: the gradient matmuls take dz in float32 (w and the chunk of x upcast). Rounding
    # dz to bfloat16 first was measured up to 100% off on small entries of d input, where the
    # sum over classes cancels; the forward matmul keeps the half operands.
    w_ct, x_ct = (w, x_chunk) if w.dtype == ct else (w.astype(ct), x_chunk.astype(ct))
    out["dx"] = _mm(dz, w_ct, ((1,), (0 if static.vocab_first else 1,)))  # dz w^T, in ct
    dw, db, dweight = carry
    dw = dw + (_mm(dz, x_ct, ((0,), (0,))) if static.vocab_first
               else _mm(x_ct, dz, ((0,), (0,))))  # x^T dz
    db = None if db is None else db + jnp.sum(dz, axis=0)
    if dweight is not None:
      dweight = dweight + _chunk_dweight(z, m, log_s, terms, eps)
    return (dw, db, dweight), out

  init = None
  if want_grad:
    init = (jnp.zeros(w.shape, ct), None if b is None else jnp.zeros((v,), ct),
            None if weight is None else jnp.zeros((v,), ct))
  carry, out = lax.scan(body, init, seq)
  out = {k: val.reshape((val.shape[0] * val.shape[1],) + val.shape[2:])[:n]
         for k, val in out.items()}
  return carry, out


def _mean_denominator(labels, weight, static, v, ct):
  """cross_entropy's divisor for ``reduction="mean"`` (N, or the kept rows' summed weights)."""
  ignore_index = static.loss.ignore_index
  return xent.denominator(xent.label_weights(labels, weight, ignore_index, v, ct)[0], weight,
                          ignore_index)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lce(x, w, b, labels, weight, static):
  _, out = _scan(x, w, b, labels, weight, static)
  v = w.shape[0 if static.vocab_first else 1]
  denominator = _mean_denominator(labels, weight, static, v, checks.compute_dtype(x.dtype))
  return xent.reduce(out["losses"], denominator, static.loss.reduction).astype(x.dtype)


def _lce_fwd(x, w, b, labels, weight, static):
  v = w.shape[0 if static.vocab_first else 1]
  ct = checks.compute_dtype(x.dtype)
  reduction = static.loss.reduction
  denominator = _mean_denominator(labels, weight, static, v, ct)
  if reduction == "none":  # per-row cotangents: the backward recomputes from (m, log_s)
    _, out = _scan(x, w, b, labels, weight, static)
    loss = out["losses"].astype(x.dtype)
    return loss, (x, w, b, labels, weight, out["m"], out["log_s"], denominator, loss)
  scale = jnp.full(labels.shape, 1.0, ct) if reduction == "sum" else jnp.full(
      labels.shape, 1.0 / denominator, ct)
  grads, out = _scan(x, w, b, labels, weight, static, row_scale=scale)
  loss = xent.reduce(out["losses"], denominator, reduction).astype(x.dtype)
  return loss, (out["dx"], grads, labels, weight, denominator, loss)


def _lce_bwd(static, res, g):
  if static.loss.reduction == "none":
    x, w, b, labels, weight, m, log_s, denominator, loss = res
    (dw, db, dweight), out = _scan(x, w, b, labels, weight, static, row_scale=g.astype(m.dtype),
                                   stats=(m, log_s))
    dweight = None if weight is None else dweight.astype(weight.dtype)
    return (out["dx"].astype(x.dtype), dw.astype(w.dtype),
            None if b is None else db.astype(b.dtype), None, dweight)
  dx, (dw, db, dweight), labels, weight, denominator, loss = res
  dtype = g.dtype  # x, w and bias share the loss's dtype
  g_ct = g.astype(dw.dtype)  # the compute dtype
  if dweight is not None:
    kept = xent.label_weights(labels, weight, static.loss.ignore_index, dweight.shape[0],
                              dweight.dtype)[1]
    dweight = xent.finish_class_weight_grad(g_ct * dweight, g_ct, loss, denominator, labels, kept,
                                            static.loss.reduction, weight.dtype)
  return ((g_ct * dx).astype(dtype), (g_ct * dw).astype(dtype),
          None if db is None else (g_ct * db).astype(dtype), None, dweight)


_lce.defvjp(_lce_fwd, _lce_bwd)


# ----------------------------------------------------------------------------------------------
# Sharded: inside shard_map, ``w``'s V axis (with ``bias`` and ``weight``) split over the class
# axes in contiguous blocks, the rows of ``x`` over the batch axes. Each chunk's logits are this
# shard's (chunk, V / P) block; one all-gather per chunk combines the row statistics (one
# collective in the program: it sits in the scan body). The gradient is formed in the same pass
# with a unit row scale and reduced once at the end: ``dx`` over the class axes, ``dw``, ``db`` and
# the class weights' over the batch axes in one all-reduce, and the loss with the mean's
# denominator in another. Four collectives in all; none carries more than this shard's ``dx``.


class _ShardedStats(NamedTuple):
  """Per-row values that the combine produced, saved for the backward of ``"none"``."""

  m: jax.Array
  log_s: jax.Array
  w_y: jax.Array
  total_w: jax.Array


def _sharded_chunk_step(z, labels, kept, valid, row_g, weight, eps, axes, given):
  """``(losses, stats, dz | None)`` of one chunk of block logits ``z`` [rows, V / P]."""
  block, names = z.shape[1], axes.classes
  num_classes = axes.num_classes(block)
  mask = axes.class_mask(block)
  local, owns = collectives.block_labels(labels, names, block)
  rows = jnp.arange(z.shape[0])
  w_loc = None if weight is None else weight.astype(z.dtype)
  if mask is not None:  # padding classes: -inf logits, weight 0, so nothing of them is counted
    z = jnp.where(mask[None, :], z, -jnp.inf)
    w_loc = jnp.where(mask, 1.0 if w_loc is None else w_loc, 0.0).astype(z.dtype)
  z_y = jnp.where(owns, z[rows, local], 0.0)
  if given is None:
    m = jnp.max(z, axis=1)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    e = jnp.exp(z - m_safe[:, None])
    w_y = jnp.where(owns, 1.0 if w_loc is None else jnp.take(w_loc, local), 0.0).astype(z.dtype)
    columns = [m, jnp.sum(e, axis=1), z_y, w_y]
    if eps > 0.0:
      shifted = z - m_safe[:, None]
      if mask is not None:
        shifted = jnp.where(mask[None, :], shifted, 0.0)
      columns.append(jnp.sum(shifted, 1) if w_loc is None else shifted @ w_loc)
      columns.append(jnp.broadcast_to(float(block) if w_loc is None else jnp.sum(w_loc), m.shape))
    stats = collectives.gather_stats(columns, names)
    big, total, _ = collectives.combine_max_sum(stats[:, 0], stats[:, 1])
    log_s = jnp.log(total)
    in_range = (labels >= 0) & (labels < num_classes)
    w_y = jnp.where(kept, jnp.where(in_range, jnp.sum(stats[:, 3], 0), jnp.nan), 0.0)
    w_y = jnp.where(valid, w_y, 0.0)
    smooth, total_w = None, jnp.full(m.shape, float(num_classes), z.dtype)
    if eps > 0.0:
      m_all = jnp.where(stats[:, 0] == -jnp.inf, 0.0, stats[:, 0])
      smooth = jnp.sum(stats[:, 4] + (m_all - big[None]) * stats[:, 5], 0)
      total_w = jnp.sum(stats[:, 5], 0)
    z_y = jnp.sum(stats[:, 2], 0)
    losses = xent.losses_from_stats(big, log_s, z_y, smooth, w_y, kept, total_w, eps, num_classes)
    saved = _ShardedStats(big, log_s, w_y, total_w)
  else:
    losses, saved = None, given
  if row_g is None:
    return losses, saved, None, None
  big, log_s, w_y, total_w = saved
  alpha, beta, gamma = xent.smoothing_coefficients(row_g, w_y, total_w, eps, num_classes)
  dz = alpha[:, None] * jnp.exp(z - (big + log_s)[:, None])
  if eps > 0.0:
    dz = dz - beta[:, None] * (1.0 if w_loc is None else w_loc[None, :])
  dz = xent.scatter_add(dz, local, jnp.where(owns, -gamma, 0.0), block, 1)
  dweight = None
  if weight is not None:  # this block's share of d loss / d weight (the mean's term comes later)
    mine = kept & owns
    z_y_all = jnp.where(mine, z[rows, local], 0.0)
    nll = jnp.where(mine, log_s - (z_y_all - big), 0.0)
    dweight = xent.per_class(local, (1.0 - eps) * row_g * nll, block)
    if eps > 0.0:
      kept_g = jnp.where(kept, row_g, 0.0)
      shifted = jnp.where(kept[:, None], z - big[:, None], 0.0)
      if mask is not None:
        shifted = jnp.where(mask[None, :], shifted, 0.0)
      smoothing = jnp.sum(kept_g * log_s) - kept_g @ shifted
      if mask is not None:  # the row sum reaches every real class, no padding class
        smoothing = jnp.where(mask, smoothing, 0.0)
      dweight = dweight + (eps / num_classes) * smoothing
  return losses, saved, dz, dweight


def _sharded_scan(x, w, b, labels, weight, static, axes, *, row_scale=None, given=None,
                  sequence=False):
  """One pass over the row chunks of this shard; as :func:`_scan`, on block logits.

  ``sequence``: the rows are split over the class axes too (sequence parallelism). Each chunk of
  rows is then gathered from every class shard (all of them need every row against their block),
  the per-row outputs keep this shard's own rows, and the chunk's ``dx`` is reduce-scattered back.
  """
  n, names = labels.shape[0], axes.classes
  # The chunk rows were chosen for the global rows; a shard may hold fewer (no padded chunk).
  chunk = max(1, min(static.chunk_size, n))
  eps, ct = static.loss.label_smoothing, checks.compute_dtype(x.dtype)
  want_grad = row_scale is not None
  seq = {"x": _chunked(x, labels, chunk), "labels": _chunked(labels, labels, chunk, -1),
         "valid": _chunked(jnp.ones((n,), jnp.int32), labels, chunk, 0)}
  if given is not None:
    seq["given"] = _ShardedStats(*(_chunked(a, labels, chunk) for a in given))
  if want_grad:
    seq["row_scale"] = _chunked(row_scale, labels, chunk)

  def rows_of_all(a):  # this chunk's rows from every class shard, in shard order
    return lax.all_gather(a, names, axis=0, tiled=True) if sequence else a

  def own_rows(a):  # back to this shard's rows
    if not sequence:
      return a
    return lax.dynamic_slice_in_dim(a, collectives.index(names) * chunk, chunk, 0)

  def body(carry, inputs):
    inputs = jax.tree.map(rows_of_all, inputs)
    x_chunk, chunk_labels, valid = inputs["x"], inputs["labels"], inputs["valid"] > 0
    z = _logits(x_chunk, w, b, static.vocab_first)
    kept = valid if static.loss.ignore_index is None else valid & (
        chunk_labels != static.loss.ignore_index)
    row_g = jnp.where(kept, inputs["row_scale"], 0.0) if want_grad else None
    losses, saved, dz, dweight_chunk = _sharded_chunk_step(
        z, chunk_labels, kept, valid, row_g, weight, eps, axes, inputs.get("given"))
    out = {k: own_rows(v) for k, v in saved._asdict().items()}
    if losses is not None:
      out["losses"] = own_rows(losses)
    if not want_grad:
      return carry, out
    w_ct, x_ct = (w, x_chunk) if w.dtype == ct else (w.astype(ct), x_chunk.astype(ct))
    dx = _mm(dz, w_ct, ((1,), (0 if static.vocab_first else 1,)))
    out["dx"] = lax.psum_scatter(dx, names, scatter_dimension=0, tiled=True) if sequence else dx
    dw, db, dweight = carry
    dw = dw + (_mm(dz, x_ct, ((0,), (0,))) if static.vocab_first
               else _mm(x_ct, dz, ((0,), (0,))))
    db = None if db is None else db + jnp.sum(dz, axis=0)
    dweight = None if dweight is None else dweight + dweight_chunk
    return (dw, db, dweight), out

  init = None
  if want_grad:
    block = w.shape[0 if static.vocab_first else 1]
    def zeros(shape):
      return collectives.vary_like(jnp.zeros(shape, ct), x, w, labels, b, weight)
    init = (zeros(w.shape), None if b is None else zeros((block,)),
            None if weight is None else zeros((block,)))
  carry, out = lax.scan(body, init, seq)
  out = {k: val.reshape((val.shape[0] * val.shape[1],) + val.shape[2:])[:n]
         for k, val in out.items()}
  return carry, out


def _sequence(axes) -> bool:
  """Sequence parallelism: the rows are split over the class axes as well."""
  return bool(set(axes.classes) & set(axes.batch))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _lce_sharded(x, w, b, labels, weight, static, axes, like):
  return _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like)[0]


def _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like):
  ct = checks.compute_dtype(x.dtype)
  reduction = static.loss.reduction
  want_grad = reduction != "none"
  grads, out = _sharded_scan(x, w, b, labels, weight, static, axes,
                             row_scale=jnp.ones(labels.shape, ct) if want_grad else None,
                             sequence=_sequence(axes))
  w_y = out["w_y"]
  denominator = xent.denominator(w_y, weight, static.loss.ignore_index)
  loss, denominator = collectives.reduce_rows(out["losses"], denominator, reduction, axes.batch)
  loss = loss.astype(x.dtype)
  stats = _ShardedStats(out["m"], out["log_s"], w_y, out["total_w"])
  if not want_grad:  # per-row cotangents: the backward recomputes from the combined statistics
    return loss, (x, w, b, labels, weight, stats, None, None, denominator, loss)
  scale = 1.0 if reduction == "sum" else 1.0 / denominator
  return loss, (None, None, None, labels, weight, stats, out["dx"], grads, denominator, loss,
                scale)


def _lce_sharded_bwd(static, axes, like, res, g):
  if static.loss.reduction == "none":
    x, w, b, labels, weight, stats, _, _, denominator, loss = res
    (dw, db, dweight), out = _sharded_scan(x, w, b, labels, weight, static, axes,
                                           row_scale=g.astype(stats.m.dtype), given=stats,
                                           sequence=_sequence(axes))
    grads = [out["dx"].astype(x.dtype), dw.astype(w.dtype),
             None if b is None else db.astype(b.dtype),
             None if dweight is None else dweight.astype(weight.dtype)]
  else:
    _, _, _, labels, weight, stats, dx, (dw, db, dweight), denominator, loss, scale = res
    dtype = g.dtype
    gs = g.astype(dw.dtype) * scale
    if dweight is not None:
      block = dweight.shape[0]
      if _sequence(axes):  # dweight holds every row of the class group: count them all
        labels = lax.all_gather(labels, axes.classes, axis=0, tiled=True)
      local, owns = collectives.block_labels(labels, axes.classes, block)
      kept = owns if static.loss.ignore_index is None else owns & (
          labels != static.loss.ignore_index)
      dweight = xent.finish_class_weight_grad(gs * dweight, g.astype(dw.dtype), loss,
                                              denominator, local, kept, static.loss.reduction,
                                              weight.dtype)
    grads = [(gs * dx).astype(dtype), (gs * dw).astype(dtype),
             None if db is None else (gs * db).astype(dtype), dweight]
  dx, dw, db, dweight = collectives.reduce_like(grads, [like[0], like[1], like[2], like[4]])
  return dx, dw, db, None, dweight


_lce_sharded.defvjp(_lce_sharded_fwd, _lce_sharded_bwd)


# ----------------------------------------------------------------------------------------------
# Auto meshes: plain jit over Auto axes carries no layout in the types, and GSPMD's own
# partitioning of the chunked custom VJP moves logits-sized all-reduces. The fused forward (loss
# and the gradients for a unit cotangent, as "mean" and "sum" form them anyway) is therefore a
# ``custom_partitioning`` op: at partitioning time it reads the operands' shardings, runs the
# sharded rules above on each shard (rows over the axes of x's row dimension, classes over the
# axes of w's V dimension), and the backward only scales its results by the cotangent.


def _auto_fused(static, has_bias, has_weight):
  """``f(x, w, [b], labels, [weight]) -> (loss, dx, dw, [db], [dweight])``, partitioned."""
  from jax.experimental.custom_partitioning import custom_partitioning  # noqa: PLC0415

  def split(args):
    it = iter(args)
    x, w = next(it), next(it)
    b = next(it) if has_bias else None
    labels = next(it)
    weight = next(it) if has_weight else None
    return x, w, b, labels, weight

  def join(loss, dx, dw, db, dweight):
    return (loss, dx, dw) + ((db,) if has_bias else ()) + ((dweight,) if has_weight else ())

  def unpartitioned(*args):
    x, w, b, labels, weight = split(args)
    loss, vjp = jax.vjp(lambda x, w, b, weight: _lce(x, w, b, labels, weight, static),
                        x, w, b, weight)
    dx, dw, db, dweight = vjp(jnp.ones_like(loss))
    return join(loss, dx, dw, db, dweight)

  fused = custom_partitioning(unpartitioned)

  def layout(mesh, arg_shapes):
    x_spec = collectives.spec_of(arg_shapes[0], 2)
    w_spec = collectives.spec_of(arg_shapes[1], 2)
    v_entry = w_spec[0] if static.vocab_first else w_spec[1]
    batch = collectives.entry_names(x_spec[0])
    classes = collectives.entry_names(v_entry)
    if set(classes) & set(batch) and not set(classes) <= set(batch):
      classes = tuple(a for a in classes if a not in batch)  # keep what can be honoured
    rows = batch or None
    v_entry = classes or None
    x_s = NamedSharding(mesh, P(rows, None))  # the feature axis replicated
    w_s = NamedSharding(mesh, P(v_entry, None) if static.vocab_first else P(None, v_entry))
    v_s, n_s = NamedSharding(mesh, P(v_entry)), NamedSharding(mesh, P(rows))
    args = (x_s, w_s) + ((v_s,) if has_bias else ()) + (n_s,) + ((v_s,) if has_weight else ())
    results = join(NamedSharding(mesh, P()), x_s, w_s, v_s, v_s)
    return collectives.Axes(classes, batch), args, results

  def partition(mesh, arg_shapes, result_shape):
    axes, arg_shardings, result_shardings = layout(mesh, arg_shapes)
    rows, cls = frozenset(axes.batch), frozenset(axes.classes)
    like = (rows, cls, cls if has_bias else None, rows, cls if has_weight else None)

    def lower_fn(*args):
      x, w, b, labels, weight = split(args)
      with collectives.untyped(rows | cls):
        loss, res = _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like)
        dx, dw, db, _, dweight = _lce_sharded_bwd(static, axes, like, res, jnp.ones_like(loss))
      return join(loss, dx, dw, db, dweight)

    return mesh, lower_fn, result_shardings, arg_shardings

  def infer(mesh, arg_shapes, result_shape):
    return layout(mesh, arg_shapes)[2]

  w_dims = "v d" if static.vocab_first else "d v"
  operands = ["n d", w_dims] + (["v"] if has_bias else []) + ["n"] + (["v"] if has_weight else [])
  results = ["", "n d", w_dims] + (["v"] if has_bias else []) + (["v"] if has_weight else [])
  fused.def_partition(partition, infer_sharding_from_operands=infer,
                      sharding_rule=", ".join(operands) + " -> " + ", ".join(results))
  return fused


_AUTO_FUSED = {}  # one custom_partitioning op per static configuration (its rule closes over it)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lce_auto(x, w, b, labels, weight, static):
  return _lce_auto_fwd(x, w, b, labels, weight, static)[0]


def _lce_auto_fwd(x, w, b, labels, weight, static):
  key = (static, b is not None, weight is not None)
  if key not in _AUTO_FUSED:
    _AUTO_FUSED[key] = _auto_fused(*key)
  args = (x, w) + (() if b is None else (b,)) + (labels,) + (() if weight is None else (weight,))
  out = _AUTO_FUSED[key](*args)
  loss, dx, dw = out[:3]
  rest = list(out[3:])
  db = rest.pop(0) if b is not None else None
  dweight = rest.pop(0) if weight is not None else None
  return loss, (dx, dw, db, dweight)


def _lce_auto_bwd(static, res, g):
  """The forward's unit-cotangent gradients, scaled: ``(dx, dw, db, None, dweight)``."""
  def scale(r):
    return None if r is None else (g.astype(jnp.float32) * r.astype(jnp.float32)).astype(r.dtype)
  dx, dw, db, dweight = res
  return scale(dx), scale(dw), scale(db), None, scale(dweight)


_lce_auto.defvjp(_lce_auto_fwd, _lce_auto_bwd)


def _auto_none(static, has_bias, has_weight):
  """For ``"none"`` (a cotangent per row, so the backward cannot be prepared in the forward):
  ``forward(x, w, [b], labels, [weight]) -> (losses, m, log_s, w_y, total_w)`` and
  ``backward(x, w, [b], labels, [weight], m, log_s, w_y, total_w, g) -> (dx, dw, [db],
  [dweight])``, both partitioned by the sharded rules."""
  from jax.experimental.custom_partitioning import custom_partitioning  # noqa: PLC0415

  n_operands = 3 + has_bias + has_weight

  def split(args):
    it = iter(args[:n_operands])
    x, w = next(it), next(it)
    b = next(it) if has_bias else None
    labels = next(it)
    weight = next(it) if has_weight else None
    return x, w, b, labels, weight

  def grads(dx, dw, db, dweight):
    return (dx, dw) + ((db,) if has_bias else ()) + ((dweight,) if has_weight else ())

  def forward_plain(*args):
    x, w, b, labels, weight = split(args)
    _, out = _scan(x, w, b, labels, weight, static)
    w_y = xent.label_weights(labels, weight, static.loss.ignore_index,
                             w.shape[0 if static.vocab_first else 1], out["m"].dtype)[0]
    return (out["losses"].astype(x.dtype), out["m"], out["log_s"], w_y,
            jnp.zeros_like(out["m"]))

  def backward_plain(*args):
    x, w, b, labels, weight = split(args)
    m, log_s, g = args[n_operands], args[n_operands + 1], args[-1]
    (dw, db, dweight), out = _scan(x, w, b, labels, weight, static,
                                   row_scale=g.astype(m.dtype), stats=(m, log_s))
    return grads(out["dx"].astype(x.dtype), dw.astype(w.dtype),
                 None if b is None else db.astype(b.dtype),
                 None if weight is None else dweight.astype(weight.dtype))

  forward, backward = custom_partitioning(forward_plain), custom_partitioning(backward_plain)

  def layout(mesh, arg_shapes):
    x_spec = collectives.spec_of(arg_shapes[0], 2)
    w_spec = collectives.spec_of(arg_shapes[1], 2)
    batch = collectives.entry_names(x_spec[0])
    classes = tuple(a for a in collectives.entry_names(w_spec[0] if static.vocab_first
                                                       else w_spec[1]) if a not in batch)
    rows, cls = batch or None, classes or None
    x_s = NamedSharding(mesh, P(rows, None))
    w_s = NamedSharding(mesh, P(cls, None) if static.vocab_first else P(None, cls))
    v_s, n_s = NamedSharding(mesh, P(cls)), NamedSharding(mesh, P(rows))
    operands = (x_s, w_s) + ((v_s,) if has_bias else ()) + (n_s,) + ((v_s,) if has_weight else ())
    return collectives.Axes(classes, batch), operands, (n_s,) * 5, grads(x_s, w_s, v_s, v_s)

  def like_of(axes):
    rows, cls = frozenset(axes.batch), frozenset(axes.classes)
    return (rows, cls, cls if has_bias else None, rows, cls if has_weight else None), rows | cls

  def forward_partition(mesh, arg_shapes, result_shape):
    axes, operands, stats, _ = layout(mesh, arg_shapes)
    like, every = like_of(axes)

    def lower_fn(*args):
      x, w, b, labels, weight = split(args)
      with collectives.untyped(every):
        loss, res = _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like)
      return (loss,) + tuple(res[5])

    return mesh, lower_fn, stats, operands

  def backward_partition(mesh, arg_shapes, result_shape):
    axes, operands, stats, results = layout(mesh, arg_shapes)
    like, every = like_of(axes)

    def lower_fn(*args):
      x, w, b, labels, weight = split(args)
      saved = _ShardedStats(*args[n_operands:n_operands + 4])
      res = (x, w, b, labels, weight, saved, None, None, None, None)
      with collectives.untyped(every):
        dx, dw, db, _, dweight = _lce_sharded_bwd(static, axes, like, res, args[-1])
      return grads(dx, dw, db, dweight)

    return mesh, lower_fn, results, operands + stats[:4] + stats[:1]

  w_dims = "v d" if static.vocab_first else "d v"
  ops = ["n d", w_dims] + (["v"] if has_bias else []) + ["n"] + (["v"] if has_weight else [])
  outs = ["n d", w_dims] + (["v"] if has_bias else []) + (["v"] if has_weight else [])
  forward.def_partition(forward_partition,
                        infer_sharding_from_operands=lambda m, a, r: layout(m, a)[2],
                        sharding_rule=", ".join(ops) + " -> " + ", ".join(["n"] * 5))
  backward.def_partition(backward_partition,
                         infer_sharding_from_operands=lambda m, a, r: layout(m, a)[3],
                         sharding_rule=", ".join(ops + ["n"] * 5) + " -> " + ", ".join(outs))
  return forward, backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lce_auto_none(x, w, b, labels, weight, static):
  return _lce_auto_none_fwd(x, w, b, labels, weight, static)[0]


def _lce_auto_none_fwd(x, w, b, labels, weight, static):
  key = ("none", static, b is not None, weight is not None)
  if key not in _AUTO_FUSED:
    _AUTO_FUSED[key] = _auto_none(*key[1:])
  args = (x, w) + (() if b is None else (b,)) + (labels,) + (() if weight is None else (weight,))
  losses, *stats = _AUTO_FUSED[key][0](*args)
  return losses, ((x, w, b, labels, weight), tuple(stats))


def _lce_auto_none_bwd(static, res, g):
  (x, w, b, labels, weight), stats = res
  key = ("none", static, b is not None, weight is not None)
  args = (x, w) + (() if b is None else (b,)) + (labels,) + (() if weight is None else (weight,))
  out = list(_AUTO_FUSED[key][1](*args, *stats, g))
  dx, dw = out[0], out[1]
  db = out[2] if b is not None else None
  dweight = out[-1] if weight is not None else None
  return dx, dw, db, None, dweight


_lce_auto_none.defvjp(_lce_auto_none_fwd, _lce_auto_none_bwd)


@functools.partial(jax.jit, static_argnames=("static", "checked", "axes", "auto"))
def _linear_cross_entropy(x, w, labels, bias, weight, *, static, checked, axes=collectives.Axes(),
                          auto=False):
  if checked:
    checks.check_labels_traced(labels, axes.num_classes(w.shape[0 if static.vocab_first else 1]),
                               static.loss.ignore_index, "linear_cross_entropy")
  batch = labels.shape
  if auto:
    rule = _lce_auto_none if static.loss.reduction == "none" else _lce_auto
    out = rule(x.reshape(labels.size, x.shape[-1]), w, bias, labels.reshape(labels.size), weight,
               static)
    return out.reshape(batch) if static.loss.reduction == "none" else out
  if axes:
    x2, labels2 = x.reshape(labels.size, x.shape[-1]), labels.reshape(labels.size)
    like = tuple(None if a is None else collectives.varying(a)
                 for a in (x2, w, bias, labels2, weight))
    out = _lce_sharded(x2, w, bias, labels2, weight, static, axes, like)
    return out.reshape(batch) if static.loss.reduction == "none" else out
  out = _lce(x.reshape(labels.size, x.shape[-1]), w, bias, labels.reshape(labels.size), weight,
             static)
  return out.reshape(batch) if static.loss.reduction == "none" else out


def linear_cross_entropy(x: jax.typing.ArrayLike, w: jax.typing.ArrayLike,
                         labels: jax.typing.ArrayLike, *, bias: jax.typing.ArrayLike | None = None,
                         weight: jax.typing.ArrayLike | None = None,
                         ignore_index: int | None = None, label_smoothing: float = 0.0,
                         reduction: str = "mean", chunk_size: int | None = None,
                         checked: bool = False, implementation: str | None = None,
                         axis_name: str | tuple[str, ...] | None = None,
                         batch_axis_name: str | tuple[str, ...] | None = None,
                         num_classes: int | None = None) -> jax.Array:
  r"""``cross_entropy(x @ w + bias, labels, ...)`` without ever forming the (N, V) logits.

  .. math:: \ell_n = -\sum_c w^{cls}_c\, t_{n,c} \log\mathrm{softmax}(x_n W + b)_c

  Chunked over rows, with a custom VJP that forms the gradient in the forward pass; memory is
  O(chunk_size x V) instead of O(N x V) for the logits and again for their gradient.

  Args:
    x: ``[..., D]`` inputs (e.g. ``[batch, seq, D]`` hidden states).
    w: ``[D, V]`` kernel (Flax's ``nnx.Linear`` layout; torch's weight is its transpose).
    labels: integer class indices of shape ``x.shape[:-1]``.
    bias: optional ``[V]``.
    weight: optional ``[V]`` per-class rescaling weights, as :func:`jaxsoftmax.cross_entropy`.
    ignore_index: a label whose rows contribute nothing.
    label_smoothing: ``eps`` in [0, 1].
    reduction: ``"mean"`` (weighted mean over kept rows), ``"sum"`` or ``"none"``.
    chunk_size: rows per chunk; default :func:`default_chunk_size` (32 MiB of float32 logits;
      256 MiB on a GPU or TPU).
    checked: check traced labels with checkify, as :func:`jaxsoftmax.cross_entropy`.
    implementation: ``None``, ``"xla"`` or ``"pallas"``: the chunk step (statistics, losses and
      d loss / d logits of a chunk) through the Pallas cross-entropy row kernel (the default on
      GPU/TPU) or XLA; the matmuls stay XLA's. See :func:`jaxsoftmax.softmax`.
    axis_name: inside ``jax.shard_map``, the mesh axis (or axes) that ``w``'s V axis is split over
      in contiguous blocks (``bias`` and ``weight`` with it); labels stay global class ids. Each
      shard forms only its (chunk, V / P) block of logits; one all-gather of a few numbers per row
      combines them, ``dx`` is summed over these axes once at the end.
    batch_axis_name: inside ``jax.shard_map``, the mesh axes the rows of ``x`` are split over:
      ``"mean"`` and ``"sum"`` reduce over every shard (one all-reduce of two numbers), and ``dw``
      is summed over these axes once. Naming the class axes here too is sequence parallelism
      (Megatron's): the rows are split over them as well, each chunk of rows is gathered from the
      class shards as it is needed, and its ``dx`` is reduce-scattered back.
    num_classes: with ``axis_name``, the true vocabulary size when ``w``'s V axis (with ``bias``
      and ``weight``) was padded at the end to a multiple of the axis size (less than one block):
      padding classes never enter a max, a sum or a gradient (their columns get zero gradient).

  Returns:
    A scalar in ``x``'s dtype, or per-row losses of shape ``labels.shape`` for ``"none"``.

  Raises:
    DTypeError: non-floating ``x``/``w``/``bias``, differing dtypes, or non-integer labels.
    ArgumentError: mismatched shapes (each named with both shapes), bad bias or weight,
      label_smoothing outside [0, 1], chunk_size < 1.
    IndexError: a concrete label outside ``[0, V)`` that is not ``ignore_index``.
    ValueError: unknown reduction.

  Note:
    Under ``jit`` an out-of-range label gives NaN (loss and gradients), as :func:`cross_entropy`.

  Example:
    >>> x, w = jnp.ones((4, 3)), jnp.zeros((3, 5))
    >>> jaxsoftmax.linear_cross_entropy(x, w, jnp.array([0, 1, 2, 3])).round(4)
    Array(1.6094, dtype=float32)
  """
  return validated_call(
      "linear_cross_entropy", ArgNames("x", "w", "labels", "bias"), x, w, labels, bias=bias,
      weight=weight, options=LossOptions(ignore_index, label_smoothing, reduction),
      chunk_size=chunk_size, vocab_first=False, checked=checked, implementation=implementation,
      axis_name=axis_name, batch_axis_name=batch_axis_name, num_classes=num_classes)


class ArgNames(NamedTuple):
  """How a caller names the arguments in its error messages (the core's, or torch's)."""

  x: str
  w: str
  labels: str
  bias: str


def validated_call(op: str, names: ArgNames, x, w, labels, *, bias, weight, options: LossOptions,
                   chunk_size, vocab_first: bool, checked: bool = False, implementation=None,
                   axis_name=None, batch_axis_name=None, num_classes=None):
  """Validates and runs linear cross-entropy for the core API and torch's mirror (which names the
  arguments its way and passes torch's ``[V, D]`` weight with ``vocab_first=True``)."""
  x = checks.as_float_array(x, names.x, op)
  w = checks.as_float_array(w, names.w, op)
  if x.ndim < 1:
    raise ArgumentError(f"{op}: {names.x} must have a feature axis [..., D]; got a 0-d array.")
  layout = "[V, D]" if vocab_first else "[D, V]"
  if w.ndim != 2:
    raise ArgumentError(f"{op}: {names.w} must be a 2-d {layout} matrix; got shape {w.shape}.")
  if x.dtype != w.dtype:
    raise DTypeError(f"{op}: {names.x} and {names.w} must have the same dtype; got {names.x} "
                     f"{x.dtype} and {names.w} {w.dtype}.")
  d, v = (w.shape[1], w.shape[0]) if vocab_first else w.shape
  if x.shape[-1] != d:
    raise ArgumentError(f"{op}: {names.x}'s feature size {x.shape[-1]} ({names.x} of shape "
                        f"{x.shape}) must equal the D of {names.w} {layout} (shape {w.shape}).")
  if v == 0:
    raise IndexError(f"{op}: {names.w} of shape {w.shape} has no classes.")
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise DTypeError(f"{op}: {names.labels} must be integer class indices; got dtype "
                     f"{labels.dtype}.")
  if labels.shape != x.shape[:-1]:
    raise ArgumentError(f"{op}: {names.labels} must have {names.x}'s shape without the feature "
                        f"axis: expected {x.shape[:-1]}, got {labels.shape} ({names.x} of shape "
                        f"{x.shape}).")
  if bias is not None:
    bias = checks.as_float_array(bias, names.bias, op)
    if bias.shape != (v,):
      raise ArgumentError(f"{op}: {names.bias} must have shape ({v},) to match {names.w} of shape "
                          f"{w.shape}; got {bias.shape}.")
    if bias.dtype != x.dtype:
      raise DTypeError(f"{op}: {names.bias} must have {names.x}'s dtype {x.dtype}; got "
                       f"{bias.dtype}.")
  weight = checks.check_weight(weight, v, op)
  options = LossOptions(checks.check_ignore_index(options.ignore_index, op),
                        checks.check_label_smoothing(options.label_smoothing, op),
                        checks.check_reduction(options.reduction, op))
  axes = collectives.check_axes(collectives.axis_names(axis_name, "axis_name", op),
                                collectives.axis_names(batch_axis_name, "batch_axis_name", op), op,
                                sequence_ok=True)
  axes = collectives.Axes(axes.classes, axes.batch,
                          collectives.check_num_classes(num_classes, v, axes.classes, op))
  if axes and implementation == "pallas":
    raise ArgumentError(f"{op}: implementation='pallas' cannot take axis_name or batch_axis_name "
                        "(the sharded path is XLA's); use implementation=None or 'xla'.")
  checks.check_labels_in_range(labels, axes.num_classes(v), options.ignore_index,
                               op)
  n = labels.size
  dispatch.check(implementation, op)
  if chunk_size is None:  # sharded: the unsharded op's chunk rows, so memory falls as 1 / P
    chunk_size = default_chunk_size(n, v * collectives.size(axes.classes))
  elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ArgumentError(f"{op}: chunk_size must be a positive int; got {chunk_size!r}.")
  backend = dispatch.resolve(implementation, dispatch.KernelCall(
      op, x.dtype, last_axis=True, rows=min(chunk_size, n), n=v,  # the kernel sees one chunk
      empty=n == 0))
  layouts = (None, None) if axes or implementation == "pallas" else (
      collectives.explicit_layout(x), collectives.explicit_layout(w))
  if axes or layouts != (None, None):
    backend = dispatch.Backend.XLA
  static = _Static(options, max(1, min(chunk_size, max(n, 1))), vocab_first, backend)
  if layouts != (None, None):  # under jit over an Explicit mesh: the layout is in the types
    mesh = (layouts[0] or layouts[1])[0]
    x_spec = layouts[0][1] if layouts[0] else (None,) * x.ndim
    w_spec = layouts[1][1] if layouts[1] else (None, None)
    d_entry, v_entry = (w_spec[1], w_spec[0]) if vocab_first else w_spec
    if x_spec[-1] is not None or d_entry is not None:
      raise ArgumentError(
          f"{op}: the feature axis D is sharded ({names.x}: {x_spec[-1]!r}, {names.w}: "
          f"{d_entry!r}); the sharded path splits rows and classes only. Replicate D first, e.g. "
          f"jax.reshard({names.x}, P(..., None)).")
    row_spec = x_spec[:-1]
    axes = collectives.check_axes(
        collectives.entry_names(v_entry),
        tuple(a for e in row_spec for a in collectives.entry_names(e)), op, sequence_ok=True)

    def body(x, w, labels, bias, weight):
      return _linear_cross_entropy(x, w, labels, bias, weight, static=static, axes=axes,
                                   checked=False)

    return collectives.run_on_mesh(
        body, mesh, [x, w, labels, bias, weight],
        [x_spec, w_spec, row_spec, (v_entry,), (v_entry,)],
        row_spec if options.reduction == "none" else ())
  # Auto mesh axes: partitioned by our own rule (custom_partitioning) for the fused reductions.
  auto = (not axes and implementation != "pallas"
          and (collectives.auto_mesh(x) is not None or collectives.auto_mesh(w) is not None))
  if auto:
    static = _Static(options, static.chunk_size, vocab_first, dispatch.Backend.XLA)
  return _linear_cross_entropy(x, w, labels, bias, weight, static=static, axes=axes, auto=auto,
                               checked=bool(checked) and not checks.is_concrete(labels))
