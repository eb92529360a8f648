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

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoftmax._src import checks, kernels
from jaxsoftmax._src.errors import ArgumentError, DTypeError
from jaxsoftmax._src.losses import (_ce_row_kernel, _ce_row_losses, _denominator, _label_weights,
                                _per_class, _reduce)

__all__ = ["linear_cross_entropy", "default_chunk_size"]

# One chunk's float32 logits. Larger chunks keep the matmuls efficient: at N=8192, D=512, V=32768
# on 2 CPU cores, fwd+bwd took 6.9 s with 64 rows, 5.3 s with 256 and 4.8 s with 1024, while XLA's
# temporary memory grows by one logits row per chunk row (256 rows: 97 MiB in all).
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


def _mm(a, b, dims):
  """A matmul that accumulates in, and returns, the compute dtype (float32 for half inputs)."""
  ct = checks.compute_dtype(jnp.result_type(a.dtype, b.dtype))
  return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=ct)


def _chunks(x, labels, chunk):
  """(num_chunks, chunk, ...) views, padded with rows whose label is -1 (marked invalid)."""
  n = labels.shape[0]
  pad = -n % chunk
  valid = jnp.ones((n,), bool)
  if pad:
    x = jnp.pad(x, ((0, pad), (0, 0)))
    labels = jnp.pad(labels, (0, pad), constant_values=-1)
    valid = jnp.pad(valid, (0, pad))
  k = (n + pad) // chunk
  return x.reshape(k, chunk, x.shape[1]), labels.reshape(k, chunk), valid.reshape(k, chunk)


def _row_terms(labels, valid, weight, ignore_index, v, ct):
  """Per-row ``w_y`` (0 if ignored or padding, NaN if out of range) and the kept mask."""
  w_y, kept = _label_weights(labels, weight, ignore_index, v, ct)
  kept = kept & valid
  return jnp.where(valid, w_y, 0.0), kept


# The kernel may come as (D, V) (Flax, the core API) or as (V, D) (torch's Linear.weight, the
# mirror): ``vd`` picks the contraction, so no transposed copy of a large kernel is ever made.


def _logits(xc, w, b, vd):
  z = _mm(xc, w, ((1,), (1 if vd else 0,)))
  return z if b is None else z + b.astype(z.dtype)[None, :]


def _losses_from(z, m, log_s, labels, w_y, kept, weight, eps, v):
  """Per-row losses from a chunk's logits and their max ``m`` and ``log(sum(exp(z - m)))``."""
  rows = jnp.arange(labels.shape[0])
  z_y = z[rows, jnp.clip(labels, 0, v - 1)]
  losses = w_y * (log_s - (z_y - m))  # -w_y log p_y, without forming m + log_s (cancellation)
  if eps > 0.0:
    zc = z - m[:, None]
    if weight is None:
      smooth = v * log_s - jnp.sum(zc, axis=1)
    else:
      wf = weight.astype(z.dtype)
      smooth = jnp.sum(wf) * log_s - zc @ wf
    losses = (1.0 - eps) * losses + (eps / v) * smooth
  return jnp.where(kept, losses, 0.0)


def _dlogits(p, labels, w_y, r, weight, eps, v, total_w):
  """d loss / d z for a chunk, given softmax ``p`` and per-row scales ``r`` (0 where not kept)."""
  rows = jnp.arange(labels.shape[0])
  a = (1.0 - eps) * w_y + (eps / v) * total_w
  dz = (r * a)[:, None] * p
  if eps > 0.0:
    w_c = 1.0 if weight is None else weight.astype(p.dtype)[None, :]
    dz = dz - r[:, None] * ((eps / v) * w_c)
  return dz.at[rows, jnp.clip(labels, 0, v - 1)].add(-r * (1.0 - eps) * w_y)


def _dweight(z, m, log_s, labels, kept, r, eps, v):
  """The chunk's share of d loss / d weight (before the mean's denominator term)."""
  nll = jnp.where(kept, log_s - (z[jnp.arange(labels.shape[0]), jnp.clip(labels, 0, v - 1)] - m),
                  0.0)
  dw = _per_class(labels, (1.0 - eps) * r * nll, v)
  if eps > 0.0:
    rk = jnp.where(kept, r, 0.0)
    zc = jnp.where(kept[:, None], z - m[:, None], 0.0)  # an ignored row's inf must not become NaN
    dw = dw + (eps / v) * (jnp.sum(rk * log_s) - rk @ zc)
  return dw


def _kernel_chunk(z, lc, w_y, kept, weight, eps, v, total_w, r, m, log_s, mode):
  """The chunk step through cross_entropy's row kernel: statistics, losses and (when ``r`` is
  given) d loss / d z, in one read of the chunk's logits when a row fits on chip."""
  stats = () if m is None else (m[:, None], jnp.exp(log_s)[:, None])
  row_g = jnp.zeros_like(w_y) if r is None else r
  m2, s2, z_y, swz, dz = _ce_row_kernel(z, lc, weight, row_g, w_y, total_w, eps, stats,
                                        mode=mode, grad=r is not None)
  losses, _, log_s = _ce_row_losses(m2, s2, z_y, swz, w_y, kept, total_w, eps, v)
  return losses, m2[:, 0], log_s, dz


def _scan(x, w, b, labels, weight, *, ignore_index, eps, chunk, vd, row_scale=None, stats=None,
          mode="xla"):
  """One pass over the chunks.

  Returns per-row losses, the per-row max and log-sum-exp and, when ``row_scale`` (per-row
  d loss / d loss_n) is given, the gradients for those scales.
  ``stats`` (m, log_s) from an earlier pass skips the max and sum.
  """
  n, v = labels.shape[0], w.shape[0 if vd else 1]
  xs, ls, vs = _chunks(x, labels, chunk)
  ct = checks.compute_dtype(x.dtype)
  total_w = float(v) if weight is None else jnp.sum(weight.astype(ct))
  want_grad = row_scale is not None
  seq = [xs, ls, vs]
  if stats is not None:
    seq += [_chunks(jnp.stack(stats, 1), labels, chunk)[0]]
  if want_grad:
    seq += [_chunks(row_scale[:, None], labels, chunk)[0][..., 0]]

  def body(carry, inputs):
    xc, lc, vc = inputs[:3]
    z = _logits(xc, w, b, vd)
    w_y, kept = _row_terms(lc, vc, weight, ignore_index, v, ct)
    r = None if not want_grad else jnp.where(kept, inputs[-1], 0.0)
    if mode != "xla":
      given = (None, None) if stats is None else (inputs[3][:, 0], inputs[3][:, 1])
      losses, m, log_s, dz = _kernel_chunk(z, lc, w_y, kept, weight, eps, v, total_w, r, *given,
                                           mode)
    else:
      if stats is not None:
        m, log_s = inputs[3][:, 0], inputs[3][:, 1]
      else:
        m = jnp.max(z, axis=1)
        log_s = jnp.log(jnp.sum(jnp.exp(z - m[:, None]), axis=1))
      losses = _losses_from(z, m, log_s, lc, w_y, kept, weight, eps, v)
      if want_grad:
        dz = _dlogits(jnp.exp(z - (m + log_s)[:, None]), lc, w_y, r, weight, eps, v, total_w)
    out = {"losses": losses, "m": m, "log_s": log_s}
    if not want_grad:
      return carry, out
    # Half inputs: the gradient matmuls take dz in float32 (w and the chunk of x upcast). Rounding
    # dz to bfloat16 first was measured up to 100% off on small entries of d input, where the
    # sum over classes cancels; the forward matmul keeps the half operands.
    wc, xcc = (w, xc) if w.dtype == ct else (w.astype(ct), xc.astype(ct))
    out["dx"] = _mm(dz, wc, ((1,), (0 if vd else 1,)))  # dz w^T, in ct until the end
    dw, db, dweight = carry
    dw = dw + (_mm(dz, xcc, ((0,), (0,))) if vd else _mm(xcc, dz, ((0,), (0,))))  # x^T dz
    db = None if db is None else db + jnp.sum(dz, axis=0)
    if dweight is not None:
      dweight = dweight + _dweight(z, m, log_s, lc, kept, r, eps, v)
    return (dw, db, dweight), out

  init = None
  if want_grad:
    init = (jnp.zeros(w.shape, ct), None if b is None else jnp.zeros((v,), ct),
            None if weight is None else jnp.zeros((v,), ct))
  carry, out = lax.scan(body, init, seq)
  out = {k: val.reshape((val.shape[0] * val.shape[1],) + val.shape[2:])[:n]
         for k, val in out.items()}
  return carry, out


def _mean_denominator(labels, weight, ignore_index, v, ct):
  """cross_entropy's divisor for ``reduction="mean"`` (N, or the kept rows' summed weights)."""
  return _denominator(_label_weights(labels, weight, ignore_index, v, ct)[0], weight, ignore_index)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10))
def _lce(x, w, b, labels, weight, ignore_index, eps, reduction, chunk, vd, mode):
  _, out = _scan(x, w, b, labels, weight, ignore_index=ignore_index, eps=eps, chunk=chunk, vd=vd,
                 mode=mode)
  v = w.shape[0 if vd else 1]
  return _reduce(out["losses"], _mean_denominator(labels, weight, ignore_index, v,
                                                  checks.compute_dtype(x.dtype)),
                 reduction).astype(x.dtype)


def _lce_fwd(x, w, b, labels, weight, ignore_index, eps, reduction, chunk, vd, mode):
  v = w.shape[0 if vd else 1]
  ct = checks.compute_dtype(x.dtype)
  denominator = _mean_denominator(labels, weight, ignore_index, v, ct)
  if reduction == "none":  # per-row cotangents: the backward recomputes from (m, log_s)
    _, out = _scan(x, w, b, labels, weight, ignore_index=ignore_index, eps=eps, chunk=chunk,
                   vd=vd, mode=mode)
    loss = out["losses"].astype(x.dtype)
    return loss, (x, w, b, labels, weight, out["m"], out["log_s"], denominator, loss)
  scale = jnp.full(labels.shape, 1.0, ct) if reduction == "sum" else jnp.full(
      labels.shape, 1.0 / denominator, ct)
  grads, out = _scan(x, w, b, labels, weight, ignore_index=ignore_index, eps=eps, chunk=chunk,
                     vd=vd, row_scale=scale, mode=mode)
  loss = _reduce(out["losses"], denominator, reduction).astype(x.dtype)
  return loss, (out["dx"], grads, labels, weight, denominator, loss)


def _weight_grad_finish(dweight, g, labels, weight, ignore_index, denominator, loss, reduction, v):
  if reduction == "mean":  # the denominator sum_n w[y_n] depends on the weight too
    ct = dweight.dtype
    _, kept = _label_weights(labels, weight, ignore_index, v, ct)
    counts = _per_class(labels, kept.astype(ct), v)
    dweight = dweight - (g * loss.astype(ct) / denominator) * counts
  return dweight.astype(weight.dtype)


def _lce_bwd(ignore_index, eps, reduction, chunk, vd, mode, res, g):
  if reduction == "none":
    x, w, b, labels, weight, m, log_s, denominator, loss = res
    (dw, db, dweight), out = _scan(
        x, w, b, labels, weight, ignore_index=ignore_index, eps=eps, chunk=chunk, vd=vd,
        row_scale=g.astype(m.dtype), stats=(m, log_s), mode=mode)
    dweight = None if weight is None else dweight.astype(weight.dtype)
    return (out["dx"].astype(x.dtype), dw.astype(w.dtype),
            None if b is None else db.astype(b.dtype), None, dweight)
  dx, (dw, db, dweight), labels, weight, denominator, loss = res
  dtype = g.dtype  # x, w and bias share the loss's dtype
  g32 = g.astype(dw.dtype)  # the compute dtype
  v = dw.shape[0 if vd else 1]
  if dweight is not None:
    dweight = _weight_grad_finish(g32 * dweight, g32, labels, weight, ignore_index, denominator,
                                  loss, reduction, v)
  return ((g32 * dx).astype(dtype), (g32 * dw).astype(dtype),
          None if db is None else (g32 * db).astype(dtype), None, dweight)


_lce.defvjp(_lce_fwd, _lce_bwd)


@functools.partial(jax.jit, static_argnames=("ignore_index", "label_smoothing", "reduction",
                                             "chunk_size", "vd", "checked", "mode"))
def _linear_cross_entropy(x, w, labels, bias, weight, *, ignore_index, label_smoothing, reduction,
                          chunk_size, vd=False, checked=False, mode="xla"):
  if checked:
    checks.check_labels_traced(labels, w.shape[0 if vd else 1], ignore_index,
                                "linear_cross_entropy")
  batch = labels.shape
  out = _lce(x.reshape(labels.size, x.shape[-1]), w, bias, labels.reshape(labels.size), weight,
             ignore_index, label_smoothing, reduction, chunk_size, vd, mode)
  return out.reshape(batch) if reduction == "none" else out


def linear_cross_entropy(x: jax.typing.ArrayLike, w: jax.typing.ArrayLike,
                         labels: jax.typing.ArrayLike, *, bias: jax.typing.ArrayLike | None = None,
                         weight: jax.typing.ArrayLike | None = None,
                         ignore_index: int | None = None, label_smoothing: float = 0.0,
                         reduction: str = "mean", chunk_size: int | None = None,
                         checked: bool = False, implementation: str | None = None) -> jax.Array:
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
  return _validated_call("linear_cross_entropy", ("x", "w", "labels", "bias"), x, w, labels, bias,
                         weight, ignore_index, label_smoothing, reduction, chunk_size, vd=False,
                         checked=checked, implementation=implementation)


def _validated_call(op, names, x, w, labels, bias, weight, ignore_index, label_smoothing, reduction,
                    chunk_size, *, vd, checked=False, implementation=None):
  """Validation shared by the core API and torch's mirror (which names the arguments its way and
  passes torch's (V, D) weight with ``vd=True``)."""
  xn, wn, ln, bn = names
  x = checks.as_float_array(x, xn, op)
  w = checks.as_float_array(w, wn, op)
  if x.ndim < 1:
    raise ArgumentError(f"{op}: {xn} must have a feature axis [..., D]; got a 0-d array.")
  layout = "[V, D]" if vd else "[D, V]"
  if w.ndim != 2:
    raise ArgumentError(f"{op}: {wn} must be a 2-d {layout} matrix; got shape {w.shape}.")
  if x.dtype != w.dtype:
    raise DTypeError(f"{op}: {xn} and {wn} must have the same dtype; got {xn} {x.dtype} and {wn} "
                     f"{w.dtype}.")
  d, v = (w.shape[1], w.shape[0]) if vd else w.shape
  if x.shape[-1] != d:
    raise ArgumentError(f"{op}: {xn}'s feature size {x.shape[-1]} ({xn} of shape {x.shape}) must "
                        f"equal the D of {wn} {layout} (shape {w.shape}).")
  if v == 0:
    raise IndexError(f"{op}: {wn} of shape {w.shape} has no classes.")
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise DTypeError(f"{op}: {ln} must be integer class indices; got dtype {labels.dtype}.")
  if labels.shape != x.shape[:-1]:
    raise ArgumentError(f"{op}: {ln} must have {xn}'s shape without the feature axis: expected "
                        f"{x.shape[:-1]}, got {labels.shape} ({xn} of shape {x.shape}).")
  if bias is not None:
    bias = checks.as_float_array(bias, bn, op)
    if bias.shape != (v,):
      raise ArgumentError(f"{op}: {bn} must have shape ({v},) to match {wn} of shape {w.shape}; "
                          f"got {bias.shape}.")
    if bias.dtype != x.dtype:
      raise DTypeError(f"{op}: {bn} must have {xn}'s dtype {x.dtype}; got {bias.dtype}.")
  weight = checks.check_weight(weight, v, op)
  reduction = checks.check_reduction(reduction)
  ignore_index = checks.check_ignore_index(ignore_index)
  label_smoothing = checks.check_label_smoothing(label_smoothing)
  checks.check_labels_in_range(labels, v, ignore_index, op)
  n = labels.size
  kernels.check(implementation, op)
  if chunk_size is None:
    chunk_size = default_chunk_size(n, v)
  elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ArgumentError(f"{op}: chunk_size must be a positive int; got {chunk_size!r}.")
  mode = kernels.choose(implementation, op, kernels.unsupported(x.dtype, last_axis=True,
                                                                  empty=n == 0),
                         rows=min(chunk_size, n), n=v)  # the kernel sees one chunk at a time
  return _linear_cross_entropy(x, w, labels, bias, weight, ignore_index=ignore_index,
                               label_smoothing=label_smoothing, reduction=reduction,
                               chunk_size=max(1, min(chunk_size, max(n, 1))), vd=vd,
                               checked=bool(checked) and not checks.is_concrete(labels),
                               mode=mode)
