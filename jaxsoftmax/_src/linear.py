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
from jaxsoftmax._src.losses import LossOptions, aux_specs, ce_row_kernel, loss_aux
from jaxsoftmax._src.rows import row_max, row_sum

__all__ = ["linear_cross_entropy", "default_chunk_size", "ArgNames", "validated_call", "LossAux"]

LossAux = xent.LossAux

# One chunk's float32 logits. Larger chunks keep the matmuls efficient (measurements:
# benchmarks/NOTES.md), while XLA's temporary memory grows by one logits row per chunk row.
_CHUNK_BYTES = 32 * 2**20
MIN_CHUNK_ROWS = 128


# On a GPU or TPU: 256 MiB, so that a chunk has enough rows to fill the device (at V = 131072,
# 512 rows: the Pallas row kernel's default minimum for rows longer than one pass).
_CHUNK_BYTES_ACCELERATOR = 256 * 2**20


def default_chunk_size(n: int, v: int, accelerator: bool | None = None) -> int:
  """Rows per chunk: a power of two whose (rows, V) float32 logits fit in 32 MiB (256 MiB on a GPU
  or TPU, by default when JAX's default backend is one), but at least :data:`MIN_CHUNK_ROWS`, and
  no more than the rows there are.

  The floor: every chunk reads all of ``w``, so a chunk of a few rows makes the matmuls stream
  ``w`` at a few FLOPs per element. At (64, 256, 262144) 32-row chunks ran 0.6x of the unchunked
  ``x @ w`` + optax on this CPU. With the floor, a batch under 128 rows is one chunk (the logits
  the naive path holds, never more), and larger batches still hold a fraction of them.
  """
  if accelerator is None:
    accelerator = jax.default_backend() in ("gpu", "tpu")
  budget = _CHUNK_BYTES_ACCELERATOR if accelerator else _CHUNK_BYTES
  rows = max(MIN_CHUNK_ROWS, 2 ** int(math.log2(max(budget // (4 * max(v, 1)), 1))))
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
  filter_eps: float | None = None
  accumulation: str = "compute"


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
  ignored or padding, NaN if out of range), kept mask, row cotangents (None: no gradient), the
  row statistics ``(m, log_s)`` of an earlier pass (None: compute them), and the lse terms: the
  z-loss's row cotangents ``z_g`` and a cotangent ``lse_g`` on the returned lse (None: absent)."""

  labels: jax.Array
  w_y: jax.Array
  kept: jax.Array
  row_g: jax.Array | None
  stats: tuple[jax.Array, jax.Array] | None
  z_g: jax.Array | None = None
  lse_g: jax.Array | None = None


def _xla_chunk_step(z, t, weight, eps, total_w, z_loss=0.0):
  """``(losses, m, log_s, dz | None)`` of one chunk, in XLA."""
  v = z.shape[1]
  if t.stats is None:
    m = row_max(z, 1)[:, 0]
    e = jnp.exp(z - m[:, None])
    s = row_sum(e, 1, into_reduction=True, stats=True)[:, 0]
    log_s = jnp.log(s)
  else:
    m, log_s = t.stats
    e = s = None
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
  extra = xent.lse_terms(m + log_s, t.kept, z_loss, t.z_g, t.lse_g)
  alpha = alpha if extra is None else alpha + extra
  if e is None:  # the statistics of an earlier pass: p = exp(z - lse)
    dz = alpha[:, None] * jnp.exp(z - (m + log_s)[:, None])
  else:  # p = e / s with this pass's exponentials: one exp per logit, not two (0.8x of optax)
    dz = e * (alpha / s)[:, None]
  if eps > 0.0:
    dz = dz - beta[:, None] * (1.0 if weight is None else weight.astype(z.dtype)[None, :])
  return losses, m, log_s, xent.scatter_add(dz, t.labels, -gamma, v, 1)


def _kernel_chunk_step(z, t, weight, eps, total_w, z_loss=0.0, *, interpret):
  """As :func:`_xla_chunk_step`, through cross_entropy's row kernel: statistics, losses and
  d loss / d z in one read of the chunk's logits when a row fits on chip (two with a z-loss, whose
  coefficient needs the row's lse first)."""
  stats = () if t.stats is None else (t.stats[0][:, None], jnp.exp(t.stats[1])[:, None])
  row_g = jnp.zeros_like(t.w_y) if t.row_g is None else t.row_g
  needs_lse = t.row_g is not None and (t.lse_g is not None or (t.z_g is not None and z_loss))
  if needs_lse and not stats:
    m, s = ce_row_kernel(z, t.labels, weight, row_g, t.w_y, total_w, eps, interpret=interpret,
                         grad=False)[:2]
    stats = (m, s)
  extra = None
  if needs_lse:
    extra = xent.lse_terms(stats[0][:, 0] + jnp.log(stats[1][:, 0]), t.kept, z_loss, t.z_g,
                           t.lse_g)
  m, s, z_y, smooth_sum, dz = ce_row_kernel(z, t.labels, weight, row_g, t.w_y, total_w, eps,
                                            stats, interpret=interpret,
                                            grad=t.row_g is not None, extra_alpha=extra)
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


_FILTER_BLOCK = 1024  # vocabulary columns per block that filter_eps may skip (measured: README)


def _capped(z, cap):
  """``(c tanh(z / c), d/dz)`` for float32 chunk logits (``(z, None)`` without a cap)."""
  if cap is None:
    return z, None
  t = jnp.tanh(z / cap)
  return cap * t, 1.0 - jnp.square(t)


def _accumulator_dtype(static, ct):
  """The dtype of the cross-chunk gradient sums: float32 (the compute dtype) unless the caller
  asked for the inputs' own (torch's ``acc_dtype`` equal to the input dtype)."""
  return ct if static.accumulation == "compute" else jnp.dtype(static.accumulation)


def _chunk_grads(dz, r, x_ct, w_ct, dw, static):
  """``(dz w^T, dw + x^T dz)`` for one chunk, in the compute dtype (``dw`` keeps its own).

  With ``static.filter_eps``: the vocabulary is walked in blocks of ``_FILTER_BLOCK`` columns and
  a block whose every ``|dz_{n,c}| <= eps |r_n|`` (``r_n`` the row's loss cotangent, so the test
  reads ``|softmax - onehot|``) skips both of its matmuls (Cut Cross-Entropy's filtering). The last
  block is shifted back to end at V, its columns already seen masked out.
  """
  vf = static.vocab_first
  if static.filter_eps is None:
    dx = _mm(dz, w_ct, ((1,), (0 if vf else 1,)))
    part = _mm(dz, x_ct, ((0,), (0,))) if vf else _mm(x_ct, dz, ((0,), (0,)))
    return dx, dw + part.astype(dw.dtype)
  c, v = dz.shape
  block = min(_FILTER_BLOCK, v)
  v_axis = 0 if vf else 1
  threshold = static.filter_eps * jnp.abs(r)[:, None]

  def body(i, carry):
    start = jnp.minimum(i * block, v - block)
    dz_i = lax.dynamic_slice_in_dim(dz, start, block, 1)
    dz_i = jnp.where((start + jnp.arange(block))[None, :] >= i * block, dz_i, 0.0)

    def work(carry):
      dx, dw = carry
      w_i = lax.dynamic_slice_in_dim(w_ct, start, block, v_axis)
      dx = dx + _mm(dz_i, w_i, ((1,), (v_axis,)))
      part = _mm(dz_i, x_ct, ((0,), (0,))) if vf else _mm(x_ct, dz_i, ((0,), (0,)))
      old = lax.dynamic_slice_in_dim(dw, start, block, v_axis)
      return dx, lax.dynamic_update_slice_in_dim(dw, old + part.astype(dw.dtype), start, v_axis)

    return lax.cond(jnp.any(jnp.abs(dz_i) > threshold), work, lambda carry: carry, carry)

  dx = jnp.zeros((c, x_ct.shape[1]), dz.dtype)
  return lax.fori_loop(0, -(-v // block), body, (dx, dw))


def _scan(x, w, b, labels, weight, static, *, row_scale=None, stats=None, z_scale=None,
          lse_g=None):
  """One pass over the chunks.

  Returns the gradient sums ``(dw, db, dweight)`` (None without ``row_scale``) and per-row
  ``losses`` (cross-entropy only), ``m``, ``log_s``, ``lse``, ``argmax`` (and ``dx`` with
  ``row_scale``, per-row d loss / d loss_n). ``stats`` (m, log_s) from an earlier pass skips the
  max and sum; ``z_scale`` are the z-loss's row cotangents and ``lse_g`` a cotangent on the lse.
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
    if z_scale is not None:
      seq["z_scale"] = _chunked(z_scale, labels, chunk)
    if lse_g is not None:
      seq["lse_g"] = _chunked(lse_g, labels, chunk)
  w_ct = w if w.dtype == ct else w.astype(ct)

  def body(carry, inputs):
    x_chunk, chunk_labels, valid = inputs["x"], inputs["labels"], inputs["valid"]
    z, cap_grad = _capped(_logits(x_chunk, w, b, static.vocab_first), static.loss.softcap)
    w_y, kept = xent.label_weights(chunk_labels, weight, static.loss.ignore_index, v, ct)
    kept = kept & valid
    w_y = jnp.where(valid, w_y, 0.0)
    given = None if stats is None else (inputs["stats"][:, 0], inputs["stats"][:, 1])
    row_g = jnp.where(kept, inputs["row_scale"], 0.0) if want_grad else None
    terms = _ChunkTerms(chunk_labels, w_y, kept, row_g, given, inputs.get("z_scale"),
                        None if "lse_g" not in inputs else jnp.where(valid, inputs["lse_g"], 0.0))
    losses, m, log_s, dz = step(z, terms, weight, eps, total_w, static.loss.z_loss)
    out = {"losses": losses, "m": m, "log_s": log_s, "lse": m + log_s,
           "argmax": jnp.argmax(z, axis=1).astype(jnp.int32)}
    if not want_grad:
      return carry, out
    # Half inputs: the gradient matmuls take dz in float32 (w and the chunk of x upcast). Rounding
    # dz to bfloat16 first was measured up to 100% off on small entries of d input, where the
    # sum over classes cancels; the forward matmul keeps the half operands.
    if cap_grad is not None:
      dz = dz * cap_grad
    x_ct = x_chunk if x_chunk.dtype == ct else x_chunk.astype(ct)
    dw, db, dweight = carry
    out["dx"], dw = _chunk_grads(dz, row_g, x_ct, w_ct, dw, static)
    db = None if db is None else db + jnp.sum(dz, axis=0).astype(db.dtype)
    if dweight is not None:
      dweight = dweight + _chunk_dweight(z, m, log_s, terms, eps)
    return (dw, db, dweight), out

  init = None
  if want_grad:
    acc = _accumulator_dtype(static, ct)
    init = (jnp.zeros(w.shape, acc), None if b is None else jnp.zeros((v,), acc),
            None if weight is None else jnp.zeros((v,), ct))
  carry, out = lax.scan(body, init, seq)
  out = {k: val.reshape((val.shape[0] * val.shape[1],) + val.shape[2:])[:n]
         for k, val in out.items()}
  return carry, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lce(x, w, b, labels, weight, static):
  """``(loss, (lse, argmax))``; the loss includes the z-loss."""
  return _lce_fwd(x, w, b, labels, weight, static)[0]


def _lce_fwd(x, w, b, labels, weight, static):
  v = w.shape[0 if static.vocab_first else 1]
  ct = checks.compute_dtype(x.dtype)
  reduction, z_loss = static.loss.reduction, static.loss.z_loss
  w_y, kept = xent.label_weights(labels, weight, static.loss.ignore_index, v, ct)
  denominator = xent.denominator(w_y, weight, static.loss.ignore_index)
  count = jnp.sum(kept.astype(ct))
  if reduction == "none":  # per-row cotangents: the backward recomputes from (m, log_s)
    grads, out = None, _scan(x, w, b, labels, weight, static)[1]
  else:  # the gradient for a unit cotangent, formed in this pass; the backward scales it
    scale = jnp.full(labels.shape, 1.0 if reduction == "sum" else 1.0 / denominator, ct)
    z_scale = None
    if z_loss:
      z_scale = jnp.full(labels.shape, 1.0 if reduction == "sum" else 1.0 / count, ct)
    grads, out = _scan(x, w, b, labels, weight, static, row_scale=scale, z_scale=z_scale)
  lse = out["lse"]
  loss = xent.reduce_with_z(out["losses"], xent.z_rows(lse, kept, z_loss), denominator, count,
                            reduction).astype(x.dtype)
  ce = xent.reduce(out["losses"], denominator, reduction).astype(x.dtype)
  # The inputs are kept for "none"'s recomputation and for a returned lse's cotangent only.
  keep = reduction == "none" or static.loss.lse
  res = ((x, w, b) if keep else (None, None, None)) + (
      labels, weight, out["m"], out["log_s"], denominator, ce, count, out.get("dx"), grads)
  return (loss, (lse, out["argmax"])), res


def _lce_bwd(static, res, g):
  x, w, b, labels, weight, m, log_s, denominator, ce, count, dx, grads = res
  g, g_lse = xent.dense(g[0]), xent.given(g[1][0])
  ct = m.dtype
  if static.loss.reduction == "none":
    g_rows = g.astype(ct)
    (dw, db, dweight), out = _scan(x, w, b, labels, weight, static, row_scale=g_rows,
                                   stats=(m, log_s),
                                   z_scale=g_rows if static.loss.z_loss else None, lse_g=g_lse)
    dweight = None if weight is None else dweight.astype(weight.dtype)
    return (out["dx"].astype(x.dtype), dw.astype(w.dtype),
            None if b is None else db.astype(b.dtype), None, dweight)
  dw, db, dweight = grads
  dtype = g.dtype  # x, w and bias share the loss's dtype
  g_ct = g.astype(ct)
  dx, dw = g_ct * dx, g_ct * dw.astype(ct)
  db = None if db is None else g_ct * db.astype(ct)
  if g_lse is not None:  # a cotangent on the returned lse: its gradient g_n p_n needs a pass
    lse_only = dataclasses.replace(static, loss=dataclasses.replace(
        static.loss, label_smoothing=0.0, z_loss=0.0))
    (dw_l, db_l, _), out = _scan(x, w, b, labels, None, lse_only,
                                 row_scale=jnp.zeros(labels.shape, ct), stats=(m, log_s),
                                 lse_g=g_lse.astype(ct))
    dx, dw = dx + out["dx"], dw + dw_l.astype(ct)
    db = None if db is None else db + db_l.astype(ct)
  if dweight is not None:
    kept = xent.label_weights(labels, weight, static.loss.ignore_index, dweight.shape[0],
                              dweight.dtype)[1]
    dweight = xent.finish_class_weight_grad(g_ct * dweight, g_ct, ce, denominator, labels, kept,
                                            static.loss.reduction, weight.dtype)
  return (dx.astype(dtype), dw.astype(dtype), None if db is None else db.astype(dtype), None,
          dweight)


xent.defvjp(_lce, _lce_fwd, _lce_bwd)


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


def _sharded_chunk_step(z, labels, kept, valid, row_g, weight, eps, axes, given, lse_terms=None,
                        z_loss=0.0, want_argmax=False):
  """``(losses, stats, dz | None, dweight | None, argmax | None)`` of one chunk of block logits
  ``z`` [rows, V / P]; ``lse_terms``: the z-loss's row cotangents and the lse's (either None)."""
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
    if want_argmax:
      columns.append(collectives.block_argmax(z, names))
    stats = collectives.gather_stats(columns, names)
    big, total, _ = collectives.combine_max_sum(stats[:, 0], stats[:, 1])
    argmax = collectives.combine_argmax(stats[:, 0], stats[:, -1], big) if want_argmax else None
    log_s = jnp.log(total)
    in_range = xent.in_range(labels, num_classes)
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
    losses, saved, argmax = None, given, None
  if row_g is None:
    return losses, saved, None, None, argmax
  big, log_s, w_y, total_w = saved
  alpha, beta, gamma = xent.smoothing_coefficients(row_g, w_y, total_w, eps, num_classes)
  if lse_terms is not None:
    extra = xent.lse_terms(big + log_s, kept, z_loss, *lse_terms)
    alpha = alpha if extra is None else alpha + extra
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
  return losses, saved, dz, dweight, argmax


def _sharded_scan(x, w, b, labels, weight, static, axes, *, row_scale=None, given=None,
                  sequence=False, z_scale=None, lse_g=None):
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
    if z_scale is not None:
      seq["z_scale"] = _chunked(z_scale, labels, chunk)
    if lse_g is not None:
      seq["lse_g"] = _chunked(lse_g, labels, chunk)
  w_ct = w if w.dtype == ct else w.astype(ct)

  def rows_of_all(a):  # this chunk's rows from every class shard, in shard order
    return lax.all_gather(a, names, axis=0, tiled=True) if sequence else a

  def own_rows(a):  # back to this shard's rows
    if not sequence:
      return a
    return lax.dynamic_slice_in_dim(a, collectives.index(names) * chunk, chunk, 0)

  def body(carry, inputs):
    inputs = jax.tree.map(rows_of_all, inputs)
    x_chunk, chunk_labels, valid = inputs["x"], inputs["labels"], inputs["valid"] > 0
    z, cap_grad = _capped(_logits(x_chunk, w, b, static.vocab_first), static.loss.softcap)
    kept = valid if static.loss.ignore_index is None else valid & (
        chunk_labels != static.loss.ignore_index)
    row_g = jnp.where(kept, inputs["row_scale"], 0.0) if want_grad else None
    lse_terms = None
    if want_grad and ("z_scale" in inputs or "lse_g" in inputs):
      lse_terms = (inputs.get("z_scale"),
                   None if "lse_g" not in inputs else jnp.where(valid, inputs["lse_g"], 0.0))
    losses, saved, dz, dweight_chunk, argmax = _sharded_chunk_step(
        z, chunk_labels, kept, valid, row_g, weight, eps, axes, inputs.get("given"), lse_terms,
        static.loss.z_loss, static.loss.argmax)
    out = {k: own_rows(v) for k, v in saved._asdict().items()}
    if losses is not None:
      out["losses"] = own_rows(losses)
    if argmax is not None:
      out["argmax"] = own_rows(argmax)
    if not want_grad:
      return carry, out
    if cap_grad is not None:
      dz = dz * cap_grad
    x_ct = x_chunk if x_chunk.dtype == ct else x_chunk.astype(ct)
    dw, db, dweight = carry
    dx, dw = _chunk_grads(dz, row_g, x_ct, w_ct, dw, static)
    out["dx"] = lax.psum_scatter(dx, names, scatter_dimension=0, tiled=True) if sequence else dx
    db = None if db is None else db + jnp.sum(dz, axis=0).astype(db.dtype)
    dweight = None if dweight is None else dweight + dweight_chunk
    return (dw, db, dweight), out

  init = None
  if want_grad:
    block = w.shape[0 if static.vocab_first else 1]
    acc = _accumulator_dtype(static, ct)

    def zeros(shape, dtype=acc):
      return collectives.vary_like(jnp.zeros(shape, dtype), x, w, labels, b, weight)
    init = (zeros(w.shape), None if b is None else zeros((block,)),
            None if weight is None else zeros((block,), ct))
  carry, out = lax.scan(body, init, seq)
  out = {k: val.reshape((val.shape[0] * val.shape[1],) + val.shape[2:])[:n]
         for k, val in out.items()}
  return carry, out


def _sequence(axes) -> bool:
  """Sequence parallelism: the rows are split over the class axes as well."""
  return bool(set(axes.classes) & set(axes.batch))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _lce_sharded(x, w, b, labels, weight, static, axes, like):
  """``(loss, (lse, argmax))`` of this shard's rows; the loss includes the z-loss."""
  return _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like)[0]


def _fused_sharded(static, weight) -> bool:
  """Whether the forward forms the gradient: not for "none" (a cotangent per row), nor for a
  class-weighted mean with a z-loss, whose two global divisors (the kept rows' weight and their
  number) are known only after the pass, so the backward recomputes."""
  reduction = static.loss.reduction
  return reduction != "none" and not (static.loss.z_loss and reduction == "mean"
                                      and weight is not None)


def _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like):
  ct = checks.compute_dtype(x.dtype)
  reduction, z_loss = static.loss.reduction, static.loss.z_loss
  fused = _fused_sharded(static, weight)
  ones = jnp.ones(labels.shape, ct)
  grads, out = _sharded_scan(x, w, b, labels, weight, static, axes,
                             row_scale=ones if fused else None,
                             z_scale=ones if fused and z_loss else None,
                             sequence=_sequence(axes))
  w_y = out["w_y"]
  kept = jnp.ones(labels.shape, bool) if static.loss.ignore_index is None else (
      labels != static.loss.ignore_index)
  lse = out["m"] + out["log_s"]
  red = collectives.reduce_rows(out["losses"], xent.denominator(w_y, weight,
                                                                static.loss.ignore_index),
                                reduction, axes.batch, xent.z_rows(lse, kept, z_loss), kept)
  stats = _ShardedStats(out["m"], out["log_s"], w_y, out["total_w"])
  # mean: the unit row scale of the pass becomes 1 / denominator (and 1 / count for the z-loss,
  # equal to it without class weights) here.
  scale = 1.0 if reduction == "sum" else 1.0 / red.denominator
  keep = not fused or static.loss.lse  # for the recomputation, or a returned lse's cotangent
  res = ((x, w, b) if keep else (None, None, None)) + (
      labels, weight, stats, out.get("dx"), grads, red.denominator, red.ce.astype(x.dtype), scale,
      red.count)
  return (red.out.astype(x.dtype), (lse, out.get("argmax"))), res


def _finish_sharded_dweight(dweight, g, ce, denominator, labels, weight, static, axes):
  """The mean's denominator term of d loss / d weight on this shard's block."""
  block = dweight.shape[0]
  if _sequence(axes):  # dweight holds every row of the class group: count them all
    labels = lax.all_gather(labels, axes.classes, axis=0, tiled=True)
  local, owns = collectives.block_labels(labels, axes.classes, block)
  kept = owns if static.loss.ignore_index is None else owns & (labels != static.loss.ignore_index)
  return xent.finish_class_weight_grad(dweight, g, ce, denominator, local, kept,
                                       static.loss.reduction, weight.dtype)


def _lce_sharded_bwd(static, axes, like, res, g):
  x, w, b, labels, weight, stats, dx, grads, denominator, ce, scale, count = res
  g, g_lse = xent.dense(g[0]), xent.given(g[1][0])
  reduction, ct = static.loss.reduction, stats.m.dtype
  dtype, g_ct = g.dtype, g.astype(ct)
  if grads is None:  # recompute with the row cotangents now known
    row_g = xent.row_cotangent(g_ct, labels.shape, denominator, reduction)
    z_g = xent.row_cotangent(g_ct, labels.shape, count, reduction) if static.loss.z_loss else None
    (dw, db, dweight), out = _sharded_scan(x, w, b, labels, weight, static, axes, row_scale=row_g,
                                           given=stats, sequence=_sequence(axes), z_scale=z_g,
                                           lse_g=g_lse)
    dx, dw, db = out["dx"], dw.astype(ct), None if db is None else db.astype(ct)
    if dweight is not None:
      dweight = (_finish_sharded_dweight(dweight, g_ct, ce, denominator, labels, weight, static,
                                         axes) if reduction == "mean"
                 else dweight.astype(weight.dtype))
  else:
    dw, db, dweight = grads
    gs = g_ct * scale
    dx, dw, db = gs * dx, gs * dw.astype(ct), None if db is None else gs * db.astype(ct)
    if dweight is not None:
      dweight = _finish_sharded_dweight(gs * dweight, g_ct, ce, denominator, labels, weight,
                                        static, axes)
    if g_lse is not None:  # a cotangent on the returned lse: its gradient g_n p_n needs a pass
      lse_only = dataclasses.replace(static, loss=dataclasses.replace(
          static.loss, label_smoothing=0.0, z_loss=0.0))
      (dw_l, db_l, _), out = _sharded_scan(x, w, b, labels, None, lse_only, axes,
                                           row_scale=jnp.zeros(labels.shape, ct), given=stats,
                                           sequence=_sequence(axes), lse_g=g_lse.astype(ct))
      dx, dw = dx + out["dx"], dw + dw_l.astype(ct)
      db = None if db is None else db + db_l.astype(ct)
  grads = [dx.astype(dtype), dw.astype(dtype), None if db is None else db.astype(dtype), dweight]
  dx, dw, db, dweight = collectives.reduce_like(grads, [like[0], like[1], like[2], like[4]])
  return dx, dw, db, None, dweight


xent.defvjp(_lce_sharded, _lce_sharded_fwd, _lce_sharded_bwd)


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
    loss, vjp = jax.vjp(lambda x, w, b, weight: _lce(x, w, b, labels, weight, static)[0],
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
        (loss, _), res = _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like)
        dx, dw, db, _, dweight = _lce_sharded_bwd(static, axes, like, res,
                                                  (jnp.ones_like(loss), (None, None)))
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
    w_y, kept = xent.label_weights(labels, weight, static.loss.ignore_index,
                                   w.shape[0 if static.vocab_first else 1], out["m"].dtype)
    losses = xent.reduce_with_z(out["losses"], xent.z_rows(out["lse"], kept, static.loss.z_loss),
                                None, None, "none")
    return (losses.astype(x.dtype), out["m"], out["log_s"], w_y, jnp.zeros_like(out["m"]))

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
        (loss, _), res = _lce_sharded_fwd(x, w, b, labels, weight, static, axes, like)
      return (loss,) + tuple(res[5])

    return mesh, lower_fn, stats, operands

  def backward_partition(mesh, arg_shapes, result_shape):
    axes, operands, stats, results = layout(mesh, arg_shapes)
    like, every = like_of(axes)

    def lower_fn(*args):
      x, w, b, labels, weight = split(args)
      saved = _ShardedStats(*args[n_operands:n_operands + 4])
      res = (x, w, b, labels, weight, saved) + (None,) * 6
      with collectives.untyped(every):
        dx, dw, db, _, dweight = _lce_sharded_bwd(static, axes, like, res, (args[-1], (None, None)))
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


@functools.partial(jax.jit, static_argnames=("static", "checked", "axes", "auto", "outputs"))
def _linear_cross_entropy(x, w, labels, bias, weight, *, static, checked, axes=collectives.Axes(),
                          auto=False, outputs=xent.Outputs()):
  if checked:
    checks.check_labels_traced(labels, axes.num_classes(w.shape[0 if static.vocab_first else 1]),
                               static.loss.ignore_index, "linear_cross_entropy")
  batch = labels.shape
  none = static.loss.reduction == "none"
  x2, labels2 = x.reshape(labels.size, x.shape[-1]), labels.reshape(labels.size)
  if auto:  # no in-pass outputs here (see linear_cross_entropy)
    out = (_lce_auto_none if none else _lce_auto)(x2, w, bias, labels2, weight, static)
    return out.reshape(batch) if none else out
  if axes:
    like = tuple(None if a is None else collectives.varying(a)
                 for a in (x2, w, bias, labels2, weight))
    loss, (lse, argmax) = _lce_sharded(x2, w, bias, labels2, weight, static, axes, like)
  else:
    loss, (lse, argmax) = _lce(x2, w, bias, labels2, weight, static)
  loss = loss.reshape(batch) if none else loss
  if not outputs:
    return loss
  kept = jnp.ones(batch, bool) if static.loss.ignore_index is None else (
      labels != static.loss.ignore_index)
  argmax = None if argmax is None else argmax.reshape(batch)
  return loss, loss_aux(outputs, lse.reshape(batch), argmax, labels, kept,
                        static.loss.z_loss, static.loss.reduction, axes.batch, x.dtype)


def linear_cross_entropy(x: jax.typing.ArrayLike, w: jax.typing.ArrayLike,
                         labels: jax.typing.ArrayLike, *, bias: jax.typing.ArrayLike | None = None,
                         weight: jax.typing.ArrayLike | None = None,
                         ignore_index: int | None = None, label_smoothing: float = 0.0,
                         reduction: str = "mean", chunk_size: int | None = None,
                         checked: bool = False, implementation: str | None = None,
                         axis_name: str | tuple[str, ...] | None = None,
                         batch_axis_name: str | tuple[str, ...] | None = None,
                         num_classes: int | None = None, z_loss: float = 0.0,
                         logit_softcap: float | None = None, return_lse: bool = False,
                         return_argmax: bool = False, return_accuracy: bool = False,
                         return_z_loss: bool = False, filter_eps: float | str | None = None,
                         accumulation_dtype=None) -> jax.Array | tuple[jax.Array, LossAux]:
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
    z_loss: ``s >= 0``: adds ``s lse_n^2`` per kept row, as :func:`jaxsoftmax.cross_entropy`; its
      gradient joins the one formed in the pass (no extra matmul).
    logit_softcap: ``c > 0``: each chunk's logits become ``c tanh(z / c)`` (Gemma-2), the gradient
      through it; the (N, V) logits are still never formed.
    return_lse, return_argmax, return_accuracy, return_z_loss: also return a :class:`LossAux` of
      per-row lse (differentiable; a cotangent on it costs the backward one more pass over the
      chunks), per-row argmax, accuracy over kept rows and the z-loss term, as
      :func:`jaxsoftmax.cross_entropy`, all from the loss's own pass.
    filter_eps: the backward skips the ``dx`` and ``dw`` matmuls of each block of 1024 vocabulary
      columns whose every ``|softmax - onehot|`` is at most ``filter_eps`` (Cut Cross-Entropy's
      gradient filtering); ``"auto"``: ``finfo(x.dtype).eps / 32``. Default None: exact. It pays
      when the predictions are peaked (see the README's measurements).
    accumulation_dtype: the dtype ``dw`` and ``db`` are summed in across chunks: float32 by default
      (for half inputs too: bfloat16 sums over many chunks lose precision), or ``x``'s own dtype
      to mirror torch's ``acc_dtype`` equal to the input dtype. ``dx`` is per row, never summed
      across chunks.

  Returns:
    A scalar in ``x``'s dtype, or per-row losses of shape ``labels.shape`` for ``"none"``; with any
    ``return_*``, ``(loss, aux)``.

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
  op = "linear_cross_entropy"
  checks.check_flags(op, return_lse=return_lse, return_argmax=return_argmax,
                     return_accuracy=return_accuracy, return_z_loss=return_z_loss)
  return validated_call(
      op, ArgNames("x", "w", "labels", "bias"), x, w, labels, bias=bias,
      weight=weight, options=LossOptions(ignore_index, label_smoothing, reduction, z_loss,
                                         logit_softcap),
      chunk_size=chunk_size, vocab_first=False, checked=checked, implementation=implementation,
      axis_name=axis_name, batch_axis_name=batch_axis_name, num_classes=num_classes,
      outputs=xent.Outputs(return_lse, return_argmax, return_accuracy, return_z_loss),
      filter_eps=filter_eps, accumulation_dtype=accumulation_dtype)


class ArgNames(NamedTuple):
  """How a caller names the arguments in its error messages (the core's, or torch's)."""

  x: str
  w: str
  labels: str
  bias: str


def validated_call(op: str, names: ArgNames, x, w, labels, *, bias, weight, options: LossOptions,
                   chunk_size, vocab_first: bool, checked: bool = False, implementation=None,
                   axis_name=None, batch_axis_name=None, num_classes=None,
                   outputs: xent.Outputs = xent.Outputs(), filter_eps=None,
                   accumulation_dtype=None):
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
                        checks.check_reduction(options.reduction, op),
                        checks.check_z_loss(options.z_loss, op),
                        checks.check_softcap(options.softcap, op))
  filter_eps = _check_filter_eps(filter_eps, x.dtype, op)
  accumulation = _check_accumulation(accumulation_dtype, x.dtype, op)
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
  options = dataclasses.replace(options, argmax=outputs.argmax or outputs.accuracy,
                                lse=outputs.lse or outputs.z_loss)
  static = _Static(options, max(1, min(chunk_size, max(n, 1))), vocab_first, backend, filter_eps,
                   accumulation)
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
                                   checked=False, outputs=outputs)

    out_spec = row_spec if options.reduction == "none" else ()
    return collectives.run_on_mesh(
        body, mesh, [x, w, labels, bias, weight],
        [x_spec, w_spec, row_spec, (v_entry,), (v_entry,)],
        aux_specs(outputs, out_spec, row_spec))
  # Auto mesh axes: partitioned by our own rule (custom_partitioning) for the fused reductions.
  # In-pass outputs take GSPMD's partitioning of the unsharded op instead (correct, not minimal).
  auto = (not axes and implementation != "pallas" and not outputs
          and (collectives.auto_mesh(x) is not None or collectives.auto_mesh(w) is not None))
  if auto:
    static = dataclasses.replace(static, backend=dispatch.Backend.XLA)
  return _linear_cross_entropy(x, w, labels, bias, weight, static=static, axes=axes, auto=auto,
                               checked=bool(checked) and not checks.is_concrete(labels),
                               outputs=outputs)


def _check_filter_eps(filter_eps, dtype, op) -> float | None:
  """None (exact), ``"auto"`` (``eps(dtype) / 32``, Cut Cross-Entropy's) or a finite float >= 0."""
  if filter_eps is None:
    return None
  if isinstance(filter_eps, str):
    if filter_eps != "auto":
      raise ArgumentError(f"{op}: filter_eps must be None, 'auto' or a float >= 0; got "
                          f"{filter_eps!r}.")
    return float(jnp.finfo(dtype).eps) / 32.0
  if isinstance(filter_eps, bool) or not isinstance(filter_eps, (int, float)):
    raise TypeError(f"{op}: filter_eps must be None, 'auto' or a float >= 0; got {filter_eps!r} "
                    f"of type {type(filter_eps).__name__}.")
  value = float(filter_eps)
  if not (math.isfinite(value) and value >= 0.0):
    raise ArgumentError(f"{op}: filter_eps must be a finite float >= 0; got {value!r}.")
  return value


def _check_accumulation(accumulation_dtype, dtype, op) -> str:
  """``"float32"`` (the default) or the name of ``x``'s own half dtype."""
  if accumulation_dtype is None:
    return "compute"
  try:
    acc = jnp.dtype(getattr(accumulation_dtype, "dtype", accumulation_dtype))
  except TypeError as e:
    raise TypeError(f"{op}: accumulation_dtype must be a dtype; got {accumulation_dtype!r}.") from e
  ct = checks.compute_dtype(dtype)
  if acc == ct:
    return "compute"
  if acc == jnp.dtype(dtype):
    return str(acc)
  raise ArgumentError(f"{op}: accumulation_dtype must be float32 (the default) or x's dtype "
                      f"{jnp.dtype(dtype)}; got {acc}.")
