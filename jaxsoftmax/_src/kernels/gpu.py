"""Pallas kernels for GPUs, lowered through Triton (``pltriton.CompilerParams``).

Each program owns ``br`` rows. A row of up to ``ONE_PASS_MAX`` columns is loaded once into
registers as one power-of-two block (masked past ``n``: Triton blocks are powers of two): one read
and one write per element, the minimum. Longer rows go in ``BLOCK_N``-column blocks, in two
passes: the first keeps an online maximum and rescaled sum,

.. math:: m' = \\max(m, \\max_j x_j),\\qquad s' = s\\,e^{m - m'} + \\textstyle\\sum_j e^{x_j - m'}

and the second writes the outputs (two reads, one write). Arrays stay in HBM (``pl.ANY``); loads
and stores address them with ``pl.ds`` tiles and masks, as the Triton tutorial's softmax does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxsoftmax._src.kernels import online
from jaxsoftmax._src.kernels.reference import F32, scaled

# Columns held in registers at once. Liger-Kernel fuses rows up to 65536 columns with 32 warps
# (1024 threads, 64 float32 values each at the limit); beyond that a row no longer fits an SM's
# 256 KiB register file with room to spare, and the two-pass kernel takes over.
ONE_PASS_MAX = 65536
BLOCK_N = 4096  # column block of the two-pass kernels


def plan(n: int, one_pass_max: int | None = None) -> tuple[int, int, int, int]:
  """``(br, bn, blocks, num_warps)`` for rows of ``n`` columns."""
  limit = ONE_PASS_MAX if one_pass_max is None else one_pass_max
  if n <= limit:
    bn = pl.next_power_of_2(n)
    blocks = 1
  else:
    bn = min(BLOCK_N, pl.next_power_of_2(limit))
    blocks = pl.cdiv(n, bn)
  br = max(1, 2048 // bn) if blocks == 1 else 1  # short rows: several per program, 2048 values
  elems = br * bn
  # Liger-Kernel's calculate_settings thresholds (the Triton tutorial's, extended to 32 warps).
  num_warps = 32 if elems >= 32768 else 16 if elems >= 8192 else 8 if elems >= 2048 else 4
  return br, bn, blocks, num_warps


class _Tiles:
  """Row/column masks and tile addressing for program ``program_id(0)``."""

  def __init__(self, rows, n, br, bn):
    self.i = pl.program_id(0)
    self.n, self.br, self.bn = n, br, bn
    self.row_mask = (self.i * br + lax.broadcasted_iota(jnp.int32, (br, 1), 0)) < rows

  def cols(self, j):
    return j * self.bn + lax.broadcasted_iota(jnp.int32, (1, self.bn), 1)

  def mask(self, j):
    return self.row_mask & (self.cols(j) < self.n)

  def load(self, ref, j, other=0.0):
    tile = ref.at[pl.ds(self.i * self.br, self.br), pl.ds(j * self.bn, self.bn)]
    return pltriton.load(tile, mask=self.mask(j), other=other)

  def store(self, ref, j, value):
    tile = ref.at[pl.ds(self.i * self.br, self.br), pl.ds(j * self.bn, self.bn)]
    pltriton.store(tile, value.astype(ref.dtype), mask=self.mask(j))

  def load_row(self, ref, other=0.0):  # a [rows, 1] statistic
    return pltriton.load(ref.at[pl.ds(self.i * self.br, self.br), pl.ds(0, 1)],
                         mask=self.row_mask, other=other)

  def store_row(self, ref, value):
    pltriton.store(ref.at[pl.ds(self.i * self.br, self.br), pl.ds(0, 1)],
                   value.astype(ref.dtype), mask=self.row_mask)

  def load_w(self, ref, j):  # class weights [1, n]
    return pltriton.load(ref.at[pl.ds(0, 1), pl.ds(j * self.bn, self.bn)],
                         mask=self.cols(j) < self.n, other=0.0)


def _masked_scaled(t, x, j, negate, temperature):
  """Scaled logits of a tile, -inf outside the array (so they add nothing to max or sum)."""
  return jnp.where(t.mask(j), scaled(x, negate, temperature), online.NEG_INF)


def _online_stats(t, load_scaled, blocks):
  """``(m, s)`` over the row's blocks in one read (the rescaled running sum)."""
  if blocks == 1:
    xs = load_scaled(0)
    m = jnp.max(xs, axis=1, keepdims=True)
    return m, jnp.sum(jnp.exp(xs - m), axis=1, keepdims=True)

  def body(j, carry):
    return online.update(*carry, load_scaled(j))

  init = (jnp.full((t.br, 1), online.NEG_INF, F32), jnp.zeros((t.br, 1), F32))
  return lax.fori_loop(0, blocks, body, init)


def _call(kernel, out_shape, rows, br, num_warps, interpret, *args):
  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=(pl.cdiv(rows, br),),
      in_specs=[any_spec] * len(args), out_specs=jax.tree.map(lambda _: any_spec, out_shape),
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1 if br > 1 else 2),
      interpret=interpret)(*args)


# ----------------------------------------------------------------------------------------------
# softmax / log_softmax


def _softmax_fwd_kernel(x_ref, y_ref, m_ref, s_ref, *, rows, n, br, bn, blocks, log, negate,
                        temperature):
  t = _Tiles(rows, n, br, bn)
  load_scaled = lambda j: _masked_scaled(t, t.load(x_ref, j), j, negate, temperature)
  if blocks == 1:  # one read: the row stays in registers between the reductions and the store
    xs = load_scaled(0)
    m = jnp.max(xs, axis=1, keepdims=True)
    e = jnp.exp(xs - m)
    s = jnp.sum(e, axis=1, keepdims=True)
    t.store(y_ref, 0, (xs - m) - jnp.log(s) if log else e / s)
  else:
    m, s = _online_stats(t, load_scaled, blocks)

    @pl.loop(0, blocks)
    def _(j):
      xs = load_scaled(j)
      t.store(y_ref, j, (xs - m) - jnp.log(s) if log else jnp.exp(xs - m) / s)

  t.store_row(m_ref, m)
  t.store_row(s_ref, s)


def softmax_fwd(x, *, log, negate, temperature, interpret=False, one_pass_max=None):
  rows, n = x.shape
  br, bn, blocks, warps = plan(n, one_pass_max)
  kernel = functools.partial(_softmax_fwd_kernel, rows=rows, n=n, br=br, bn=bn, blocks=blocks,
                             log=log, negate=negate, temperature=temperature)
  stat = jax.ShapeDtypeStruct((rows, 1), F32)
  return _call(kernel, (jax.ShapeDtypeStruct(x.shape, x.dtype), stat, stat), rows, br, warps,
               interpret, x)


def _softmax_bwd_kernel(dy_ref, res_ref, m_ref, s_ref, dx_ref, *, rows, n, br, bn, blocks, log,
                        negate, temperature, recompute):
  t = _Tiles(rows, n, br, bn)
  if recompute:
    m, s = t.load_row(m_ref), t.load_row(s_ref, 1.0)

  def load(j):
    """The block's upstream gradient and forward output, float32 (each loaded once)."""
    g, r = t.load(dy_ref, j).astype(F32), t.load(res_ref, j)
    if not recompute:
      return g, r.astype(F32)
    xs = scaled(r, negate, temperature)
    return g, ((xs - m) - jnp.log(s) if log else jnp.exp(xs - m) / s)

  def dot_of(j, g, y):  # the row reduction the gradient needs; masked entries add 0
    return jnp.sum(g if log else jnp.where(t.mask(j), g * y, 0.0), axis=1, keepdims=True)

  def dx_of(g, y, dot):
    dx = g - jnp.exp(y) * dot if log else y * (g - dot)
    if temperature != 1.0:
      dx = dx / temperature
    return -dx if negate else dx

  if blocks == 1:  # one read of dy and of the residual, one write of dx
    g, y = load(0)
    t.store(dx_ref, 0, dx_of(g, y, dot_of(0, g, y)))
  else:
    dot = lax.fori_loop(0, blocks, lambda j, acc: acc + dot_of(j, *load(j)),
                        jnp.zeros((br, 1), F32))

    @pl.loop(0, blocks)
    def _(j):
      t.store(dx_ref, j, dx_of(*load(j), dot))


def softmax_bwd(dy, res, m, s, *, log, negate, temperature, recompute, interpret=False,
                one_pass_max=None):
  rows, n = dy.shape
  br, bn, blocks, warps = plan(n, one_pass_max)
  kernel = functools.partial(_softmax_bwd_kernel, rows=rows, n=n, br=br, bn=bn, blocks=blocks,
                             log=log, negate=negate, temperature=temperature, recompute=recompute)
  return _call(kernel, jax.ShapeDtypeStruct(dy.shape, dy.dtype), rows, br, warps, interpret,
               dy, res, m, s)


# ----------------------------------------------------------------------------------------------
# cross-entropy: statistics, label logit, smoothing sum and (optionally) the gradient, one kernel


def _ce_kernel(*refs, rows, n, br, bn, blocks, grad, smooth, weighted, have_stats):
  refs = list(refs)
  x_ref, lab_ref, a_ref, b_ref, c_ref = refs[:5]
  pos = 5
  w_ref = refs[pos] if weighted else None
  pos += weighted
  if have_stats:
    m_in, s_in = refs[pos:pos + 2]
    pos += 2
  m_ref, s_ref, xy_ref, smooth_sum_ref = refs[pos:pos + 4]
  dx_ref = refs[pos + 4] if grad else None
  t = _Tiles(rows, n, br, bn)
  labels = t.load_row(lab_ref, 0)
  load_x = lambda j: jnp.where(t.mask(j), t.load(x_ref, j).astype(F32), online.NEG_INF)

  def label_sum(j, xf):  # x[label] lies in exactly one block
    return jnp.sum(jnp.where(t.cols(j) == labels, xf, 0.0), axis=1, keepdims=True)

  def finish(j, xf, m, s):
    """The block's share of smooth_sum, and its gradient."""
    part = jnp.zeros((br, 1), F32)
    w = t.load_w(w_ref, j) if weighted and smooth else 1.0
    if smooth:
      xm = jnp.where(t.mask(j), xf - m, 0.0)
      part = jnp.sum(xm * w, axis=1, keepdims=True)
    if grad:
      dx = t.load_row(a_ref) * (jnp.exp(xf - m) / s)
      if smooth:
        dx = dx - t.load_row(b_ref) * w
      dx = dx - jnp.where(t.cols(j) == labels, t.load_row(c_ref), 0.0)
      t.store(dx_ref, j, dx)
    return part

  if blocks == 1:  # one read of the row, one write of its gradient
    xf = load_x(0)
    if have_stats:
      m, s = t.load_row(m_in), t.load_row(s_in, 1.0)
    else:
      m = jnp.max(xf, axis=1, keepdims=True)
      s = jnp.sum(jnp.exp(xf - m), axis=1, keepdims=True)
    x_y = label_sum(0, xf)
    smooth_sum = finish(0, xf, m, s)
  else:
    if have_stats:
      m, s = t.load_row(m_in), t.load_row(s_in, 1.0)
      x_y = lax.fori_loop(0, blocks, lambda j, acc: acc + label_sum(j, load_x(j)),
                          jnp.zeros((br, 1), F32))
    else:
      def body(j, carry):
        m, s, x_y = carry
        xf = load_x(j)
        return *online.update(m, s, xf), x_y + label_sum(j, xf)

      zero = jnp.zeros((br, 1), F32)
      init = (jnp.full((br, 1), online.NEG_INF, F32), zero, zero)
      m, s, x_y = lax.fori_loop(0, blocks, body, init)
    if smooth or grad:
      smooth_sum = lax.fori_loop(0, blocks, lambda j, acc: acc + finish(j, load_x(j), m, s),
                          jnp.zeros((br, 1), F32))
    else:
      smooth_sum = jnp.zeros((br, 1), F32)
  t.store_row(m_ref, m)
  t.store_row(s_ref, s)
  t.store_row(xy_ref, x_y)
  t.store_row(smooth_sum_ref, smooth_sum)


def ce(x, labels, alpha, beta, gamma, w, m=None, s=None, *, grad, smooth, dx_dtype=None,
       interpret=False, one_pass_max=None):
  rows, n = x.shape
  br, bn, blocks, warps = plan(n, one_pass_max)
  have_stats = m is not None
  kernel = functools.partial(_ce_kernel, rows=rows, n=n, br=br, bn=bn, blocks=blocks, grad=grad,
                             smooth=smooth, weighted=w is not None, have_stats=have_stats)
  stat = jax.ShapeDtypeStruct((rows, 1), F32)
  out_shape = [stat] * 4 + (
      [jax.ShapeDtypeStruct(x.shape, dx_dtype or x.dtype)] if grad else [])
  args = [x, labels, alpha, beta, gamma] + ([w] if w is not None else []) + (
      [m, s] if have_stats else [])
  out = _call(kernel, tuple(out_shape), rows, br, warps, interpret, *args)
  return (*out[:4], out[4] if grad else None)
