"""Pallas kernels for TPUs, lowered through Mosaic (``pltpu.CompilerParams``).

Blocks are ``[br, n]`` row slabs that Pallas pipelines through VMEM (double-buffered DMA from HBM):
when ``br`` rows of the whole row fit in ``VMEM_BUDGET`` the kernel reads each element once and
writes it once. Longer rows are cut into ``[br, BLOCK_N]`` blocks over a second grid axis, in two
``pallas_call``\\ s: the first walks the column blocks in order (``"arbitrary"``), keeping the online
maximum and rescaled sum in its resident ``[br, 1]`` output blocks; the second writes the outputs.
Partial blocks at the array's edge are padded by Pallas: padded rows are computed and discarded,
padded columns are masked before any reduction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxsoftmax._src.kernels import online
from jaxsoftmax._src.kernels.reference import F32, scaled

VMEM_BUDGET = 8 * 2**20  # bytes per grid step, in and out double-buffered plus f32 temporaries
BLOCK_N = 8192  # lanes per column block of the two-pass kernels (a multiple of 128)
MAX_ROWS = 512


def plan(rows: int, n: int, itemsize: int, one_pass_max: int | None = None):
  """``(br, bn, blocks)``: rows per block (a multiple of the sublane tile, or all rows), columns per
  block, and the number of column blocks (1: one pass)."""
  granule = 8 if itemsize >= 4 else 16
  per_row = n * (4 * itemsize + 16)
  fit = VMEM_BUDGET // max(per_row, 1)
  one_pass = fit >= granule if one_pass_max is None else n <= one_pass_max
  if one_pass:
    br = min(MAX_ROWS, max(granule, fit // granule * granule))
    return (rows if br >= rows else br), n, 1
  bn = BLOCK_N if one_pass_max is None else max(128, one_pass_max // 128 * 128)
  br = rows if rows <= 4 * granule else 4 * granule
  return br, bn, pl.cdiv(n, bn)


def _params(*semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def _interp(interpret):
  return pltpu.InterpretParams() if interpret else False


def _specs(br, bn, two_d):
  """BlockSpecs for a [rows, n] tile, a [rows, 1] statistic and the [1, n] class weights."""
  if two_d:
    return (pl.BlockSpec((br, bn), lambda i, j: (i, j)), pl.BlockSpec((br, 1), lambda i, j: (i, 0)),
            pl.BlockSpec((1, bn), lambda i, j: (0, j)))
  return (pl.BlockSpec((br, bn), lambda i: (i, 0)), pl.BlockSpec((br, 1), lambda i: (i, 0)),
          pl.BlockSpec((1, bn), lambda i: (0, 0)))


def _col_mask(shape, n, bn, blocks):
  """True on real columns of this block (all of them in a one-pass block)."""
  if blocks == 1:
    return None
  cols = pl.program_id(1) * bn + lax.broadcasted_iota(jnp.int32, shape, 1)
  return cols < n


def _fill(mask, v, fill):
  return v if mask is None else jnp.where(mask, v, fill)


def _online_update(m_ref, s_ref, xs):
  """Folds one block into the resident (m, s) outputs: m' = max(m, max x), s' = s e^{m-m'} + ..."""
  m_ref[...], s_ref[...] = online.update(m_ref[...], s_ref[...], xs)


def _init_at_first_block(*refs_and_values):
  @pl.when(pl.program_id(1) == 0)
  def _():
    for ref, value in refs_and_values:
      ref[...] = jnp.full(ref.shape, value, ref.dtype)


# ----------------------------------------------------------------------------------------------
# softmax / log_softmax


def _stats_kernel(x_ref, m_ref, s_ref, *, n, bn, blocks, negate, temperature):
  _init_at_first_block((m_ref, online.NEG_INF), (s_ref, 0.0))
  xs = scaled(x_ref[...], negate, temperature)
  _online_update(m_ref, s_ref, _fill(_col_mask(xs.shape, n, bn, blocks), xs, online.NEG_INF))


def _out_kernel(x_ref, m_ref, s_ref, y_ref, *, log, negate, temperature):
  xs = scaled(x_ref[...], negate, temperature)
  m, s = m_ref[...], s_ref[...]
  y_ref[...] = ((xs - m) - jnp.log(s) if log else jnp.exp(xs - m) / s).astype(y_ref.dtype)


def _one_pass_fwd_kernel(x_ref, y_ref, m_ref, s_ref, *, log, negate, temperature):
  xs = scaled(x_ref[...], negate, temperature)
  m = jnp.max(xs, axis=1, keepdims=True)
  e = jnp.exp(xs - m)
  s = jnp.sum(e, axis=1, keepdims=True)
  y_ref[...] = ((xs - m) - jnp.log(s) if log else e / s).astype(y_ref.dtype)
  m_ref[...] = m
  s_ref[...] = s


def softmax_fwd(x, *, log, negate, temperature, interpret=False, one_pass_max=None):
  rows, n = x.shape
  br, bn, blocks = plan(rows, n, x.dtype.itemsize, one_pass_max)
  stat = jax.ShapeDtypeStruct((rows, 1), F32)
  y_shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
  opts = dict(log=log, negate=negate, temperature=temperature)
  if blocks == 1:
    tile, row, _ = _specs(br, n, False)
    return pl.pallas_call(
        functools.partial(_one_pass_fwd_kernel, **opts), out_shape=(y_shape, stat, stat),
        grid=(pl.cdiv(rows, br),), in_specs=[tile], out_specs=(tile, row, row),
        compiler_params=_params("parallel"), interpret=_interp(interpret))(x)
  tile, row, _ = _specs(br, bn, True)
  grid = (pl.cdiv(rows, br), blocks)
  m, s = pl.pallas_call(
      functools.partial(_stats_kernel, n=n, bn=bn, blocks=blocks, negate=negate,
                        temperature=temperature),
      out_shape=(stat, stat), grid=grid, in_specs=[tile], out_specs=(row, row),
      compiler_params=_params("parallel", "arbitrary"), interpret=_interp(interpret))(x)
  y = pl.pallas_call(
      functools.partial(_out_kernel, **opts), out_shape=y_shape, grid=grid,
      in_specs=[tile, row, row], out_specs=tile, compiler_params=_params("parallel", "parallel"),
      interpret=_interp(interpret))(x, m, s)
  return y, m, s


def _y(res_ref, m_ref, s_ref, *, log, negate, temperature, recompute):
  if not recompute:
    return res_ref[...].astype(F32)
  xs = scaled(res_ref[...], negate, temperature)
  m, s = m_ref[...], s_ref[...]
  return (xs - m) - jnp.log(s) if log else jnp.exp(xs - m) / s


def _dot(g, y, log, mask):
  return jnp.sum(_fill(mask, g if log else g * y, 0.0), axis=1, keepdims=True)


def _dx(g, y, dot, log, negate, temperature):
  dx = g - jnp.exp(y) * dot if log else y * (g - dot)
  if temperature != 1.0:
    dx = dx / temperature
  return -dx if negate else dx


def _one_pass_bwd_kernel(dy_ref, res_ref, m_ref, s_ref, dx_ref, **opts):
  g = dy_ref[...].astype(F32)
  y = _y(res_ref, m_ref, s_ref, **opts)
  dot = _dot(g, y, opts["log"], None)
  dx_ref[...] = _dx(g, y, dot, opts["log"], opts["negate"], opts["temperature"]).astype(
      dx_ref.dtype)


def _dot_kernel(dy_ref, res_ref, m_ref, s_ref, dot_ref, *, n, bn, blocks, **opts):
  _init_at_first_block((dot_ref, 0.0))
  g = dy_ref[...].astype(F32)
  y = _y(res_ref, m_ref, s_ref, **opts)
  dot_ref[...] += _dot(g, y, opts["log"], _col_mask(g.shape, n, bn, blocks))


def _dx_kernel(dy_ref, res_ref, m_ref, s_ref, dot_ref, dx_ref, **opts):
  g = dy_ref[...].astype(F32)
  y = _y(res_ref, m_ref, s_ref, **opts)
  dx_ref[...] = _dx(g, y, dot_ref[...], opts["log"], opts["negate"], opts["temperature"]).astype(
      dx_ref.dtype)


def softmax_bwd(dy, res, m, s, *, log, negate, temperature, recompute, interpret=False,
                one_pass_max=None):
  rows, n = dy.shape
  itemsize = max(dy.dtype.itemsize, res.dtype.itemsize)
  br, bn, blocks = plan(rows, n, itemsize, one_pass_max)
  opts = dict(log=log, negate=negate, temperature=temperature, recompute=recompute)
  dx_shape = jax.ShapeDtypeStruct(dy.shape, dy.dtype)
  if blocks == 1:
    tile, row, _ = _specs(br, n, False)
    return pl.pallas_call(
        functools.partial(_one_pass_bwd_kernel, **opts), out_shape=dx_shape,
        grid=(pl.cdiv(rows, br),), in_specs=[tile, tile, row, row], out_specs=tile,
        compiler_params=_params("parallel"), interpret=_interp(interpret))(dy, res, m, s)
  tile, row, _ = _specs(br, bn, True)
  grid = (pl.cdiv(rows, br), blocks)
  dot = pl.pallas_call(
      functools.partial(_dot_kernel, n=n, bn=bn, blocks=blocks, **opts),
      out_shape=jax.ShapeDtypeStruct((rows, 1), F32), grid=grid,
      in_specs=[tile, tile, row, row], out_specs=row,
      compiler_params=_params("parallel", "arbitrary"), interpret=_interp(interpret))(dy, res, m, s)
  return pl.pallas_call(
      functools.partial(_dx_kernel, **opts), out_shape=dx_shape, grid=grid,
      in_specs=[tile, tile, row, row, row], out_specs=tile,
      compiler_params=_params("parallel", "parallel"), interpret=_interp(interpret))(
          dy, res, m, s, dot)


# ----------------------------------------------------------------------------------------------
# cross-entropy


def _label_logit(xf, labels, cols):
  return jnp.sum(jnp.where(cols == labels, xf, 0.0), axis=1, keepdims=True)


def _ce_grad(xf, m, s, a, b, c, w, labels, cols, smooth):
  dx = a * (jnp.exp(xf - m) / s)
  if smooth:
    dx = dx - b * (1.0 if w is None else w)
  return dx - jnp.where(cols == labels, c, 0.0)


def _unpack(refs, weighted, have_stats):
  refs = list(refs)
  x, lab, a, b, c = refs[:5]
  pos = 5
  w = refs[pos] if weighted else None
  pos += weighted
  stats = refs[pos:pos + 2] if have_stats else None
  pos += 2 if have_stats else 0
  return x, lab, a, b, c, w, stats, refs[pos:]


def _ce_one_pass_kernel(*refs, grad, smooth, weighted, have_stats):
  x_ref, lab_ref, a_ref, b_ref, c_ref, w_ref, stats, outs = _unpack(refs, weighted, have_stats)
  m_ref, s_ref, xy_ref, smooth_sum_ref = outs[:4]
  xf = x_ref[...].astype(F32)
  labels = lab_ref[...]
  cols = lax.broadcasted_iota(jnp.int32, xf.shape, 1)
  if have_stats:
    m, s = stats[0][...], stats[1][...]
  else:
    m = jnp.max(xf, axis=1, keepdims=True)
    s = jnp.sum(jnp.exp(xf - m), axis=1, keepdims=True)
  w = w_ref[...] if weighted else None
  m_ref[...], s_ref[...] = m, s
  xy_ref[...] = _label_logit(xf, labels, cols)
  smooth_sum = jnp.zeros_like(m)
  if smooth:
    smooth_sum = jnp.sum((xf - m) if w is None else w * (xf - m), axis=1, keepdims=True)
  smooth_sum_ref[...] = smooth_sum
  if grad:
    outs[4][...] = _ce_grad(xf, m, s, a_ref[...], b_ref[...], c_ref[...], w, labels, cols,
                            smooth).astype(outs[4].dtype)


def _ce_stats_kernel(x_ref, lab_ref, *refs, n, bn, blocks, have_stats):
  """Pass 1: (m, s) online (unless given) and x[label], over the column blocks in order."""
  outs = refs[2:] if have_stats else refs
  m_ref, s_ref, xy_ref = outs
  _init_at_first_block((m_ref, online.NEG_INF), (s_ref, 0.0), (xy_ref, 0.0))
  xf = x_ref[...].astype(F32)
  mask = _col_mask(xf.shape, n, bn, blocks)
  cols = pl.program_id(1) * bn + lax.broadcasted_iota(jnp.int32, xf.shape, 1)
  if have_stats:
    m_ref[...], s_ref[...] = refs[0][...], refs[1][...]
  else:
    _online_update(m_ref, s_ref, _fill(mask, xf, online.NEG_INF))
  xy_ref[...] += _label_logit(xf, lab_ref[...], cols)


def _ce_finish_kernel(*refs, n, bn, blocks, grad, smooth, weighted):
  """Pass 2: the smoothing sum and the gradient, block by block."""
  x_ref, lab_ref, a_ref, b_ref, c_ref, w_ref, (m_ref, s_ref), outs = _unpack(refs, weighted, True)
  smooth_sum_ref = outs[0]
  _init_at_first_block((smooth_sum_ref, 0.0))
  xf = x_ref[...].astype(F32)
  mask = _col_mask(xf.shape, n, bn, blocks)
  cols = pl.program_id(1) * bn + lax.broadcasted_iota(jnp.int32, xf.shape, 1)
  m, s = m_ref[...], s_ref[...]
  w = w_ref[...] if weighted else None
  if smooth:
    xm = (xf - m) if w is None else w * (xf - m)
    smooth_sum_ref[...] += jnp.sum(_fill(mask, xm, 0.0), axis=1, keepdims=True)
  if grad:
    outs[1][...] = _ce_grad(xf, m, s, a_ref[...], b_ref[...], c_ref[...], w, lab_ref[...], cols,
                            smooth).astype(outs[1].dtype)


def ce(x, labels, alpha, beta, gamma, w, m=None, s=None, *, grad, smooth, dx_dtype=None,
       interpret=False, one_pass_max=None):
  rows, n = x.shape
  br, bn, blocks = plan(rows, n, x.dtype.itemsize, one_pass_max)
  weighted, have_stats = w is not None, m is not None
  stat = jax.ShapeDtypeStruct((rows, 1), F32)
  dx_shape = [jax.ShapeDtypeStruct(x.shape, dx_dtype or x.dtype)] if grad else []
  coefs = [alpha, beta, gamma] + ([w] if weighted else [])
  if blocks == 1:
    tile, row, wspec = _specs(br, n, False)
    in_specs = [tile, row, row, row, row] + [wspec] * weighted + [row, row] * have_stats
    out = pl.pallas_call(
        functools.partial(_ce_one_pass_kernel, grad=grad, smooth=smooth, weighted=weighted,
                          have_stats=have_stats),
        out_shape=tuple([stat] * 4 + dx_shape), grid=(pl.cdiv(rows, br),), in_specs=in_specs,
        out_specs=tuple([row] * 4 + [tile] * grad), compiler_params=_params("parallel"),
        interpret=_interp(interpret))(x, labels, *coefs, *([m, s] if have_stats else []))
    return (*out[:4], out[4] if grad else None)
  tile, row, wspec = _specs(br, bn, True)
  grid = (pl.cdiv(rows, br), blocks)
  m, s, x_y = pl.pallas_call(
      functools.partial(_ce_stats_kernel, n=n, bn=bn, blocks=blocks, have_stats=have_stats),
      out_shape=(stat, stat, stat), grid=grid,
      in_specs=[tile, row] + [row, row] * have_stats, out_specs=(row, row, row),
      compiler_params=_params("parallel", "arbitrary"), interpret=_interp(interpret))(
          x, labels, *([m, s] if have_stats else []))
  if not (grad or smooth):
    return m, s, x_y, jnp.zeros_like(m), None
  out = pl.pallas_call(
      functools.partial(_ce_finish_kernel, n=n, bn=bn, blocks=blocks, grad=grad, smooth=smooth,
                        weighted=weighted),
      out_shape=tuple([stat] + dx_shape), grid=grid,
      in_specs=[tile, row, row, row, row] + [wspec] * weighted + [row, row],
      out_specs=tuple([row] + [tile] * grad), compiler_params=_params("parallel", "arbitrary"),
      interpret=_interp(interpret))(x, labels, *coefs, m, s)
  return m, s, x_y, out[0], out[1] if grad else None
