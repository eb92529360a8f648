"""The row-kernel contract in plain XLA: what every Pallas kernel in this folder must compute.

All functions take 2-d ``[rows, n]`` arrays and reduce along the last axis in float32; row
statistics are ``[rows, 1]`` float32 arrays. With ``xs`` the scaled logits (``x``, negated when
``negate``, divided by ``temperature``), ``m = max(xs)`` and ``s = sum(exp(xs - m))``:

.. math:: \\mathrm{softmax} = e^{xs - m} / s, \\qquad \\log\\mathrm{softmax} = (xs - m) - \\log s

and the cross-entropy kernel, given per-row coefficients ``alpha, beta, gamma`` and class weights
``w`` (ones when absent), returns ``m, s``, ``x_y = x[label]``, ``smooth_sum = sum_c w_c (x_c - m)`` and

.. math:: \\bar x_{c} = \\alpha\\, e^{x_c - m} / s - \\beta\\, w_c - \\gamma\\,[c = y]

which is cross_entropy's gradient for any weight / ignore_index / label_smoothing once the caller
has folded those options into the coefficients. Used as the CPU branch of an automatically chosen
kernel (so a program traced for a GPU still runs on the CPU) and as the oracle in the kernel tests.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxsoftmax._src.checks import compute_dtype

F32 = jnp.float32


def scaled(x, negate: bool, temperature: float):
  """Upcast (half to float32), negate (exact, so softmin(x) is softmax(-x) bit for bit) and divide
  by T (divide, so the scaled logits equal torch's ``x / T`` bit for bit, not multiply by 1/T)."""
  xs = x.astype(compute_dtype(x.dtype))
  if negate:
    xs = -xs
  return xs if temperature == 1.0 else xs / temperature


def _stats(xs):
  m = jnp.max(xs, axis=1, keepdims=True)
  return m, jnp.sum(jnp.exp(xs - m), axis=1, keepdims=True)


def _from_stats(xs, m, s, log):
  return (xs - m) - jnp.log(s) if log else jnp.exp(xs - m) / s


def softmax_fwd(x, *, log, negate, temperature):
  """Returns ``(y in x.dtype, m, s)``."""
  xs = scaled(x, negate, temperature)
  m, s = _stats(xs)
  return _from_stats(xs, m, s, log).astype(x.dtype), m, s


def softmax_bwd(dy, res, m, s, *, log, negate, temperature, recompute):
  """``dx`` from ``res``: the float32 output ``y``, or (``recompute``) the input ``x``, whose output
  is rebuilt from ``m`` and ``s`` exactly as the forward pass built it."""
  y = _from_stats(scaled(res, negate, temperature), m, s, log) if recompute else res.astype(F32)
  g = dy.astype(F32)
  if log:
    dx = g - jnp.exp(y) * jnp.sum(g, axis=1, keepdims=True)
  else:
    dx = y * (g - jnp.sum(g * y, axis=1, keepdims=True))
  if temperature != 1.0:
    dx = dx / temperature
  return (-dx if negate else dx).astype(dy.dtype)


def ce(x, labels, alpha, beta, gamma, w, m=None, s=None, *, grad, smooth, dx_dtype=None):
  """Cross-entropy row kernel. ``labels`` [rows, 1] int32 in range; ``w`` [1, n] or None;
  ``m, s`` from an earlier call skip the statistics. Returns ``(m, s, x_y, smooth_sum, dx | None)``,
  ``smooth_sum`` zeros unless ``smooth``; ``dx`` in ``dx_dtype`` (default ``x.dtype``)."""
  xf = x.astype(F32)
  if m is None:
    m, s = _stats(xf)
  cols = lax.broadcasted_iota(jnp.int32, xf.shape, 1)
  at_label = cols == labels
  x_y = jnp.sum(jnp.where(at_label, xf, 0.0), axis=1, keepdims=True)
  smooth_sum = jnp.zeros_like(m)
  if smooth:
    smooth_sum = jnp.sum((xf - m) if w is None else w * (xf - m), axis=1, keepdims=True)
  dx = None
  if grad:
    dx = alpha * (jnp.exp(xf - m) / s)
    if smooth:
      dx = dx - beta * (1.0 if w is None else w)
    dx = (dx - jnp.where(at_label, gamma, 0.0)).astype(dx_dtype or x.dtype)
  return m, s, x_y, smooth_sum, dx
