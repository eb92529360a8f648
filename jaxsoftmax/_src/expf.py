"""``exp`` of max-shifted float32 logits (``t <= 0``) for XLA:CPU's vector units: the ``exp`` a
16-bit backward pays when it rebuilds the forward's exponentials.

From :data:`checks.REBUILD_FROM` elements up a 16-bit backward rebuilds the forward's float32
``e = exp(x - m)`` from the kept 16-bit ``x`` (2 bytes per element, as the peer's residual), one
``exp`` per element that the peer's backward does not pay (docs/contract.md). This ``exp`` has
fewer operations than XLA:CPU's own. log_softmax's backward uses it: bfloat16 bwd, jax.nn /
jaxsoftmax, median of 7 interleaved rounds, (1024, 1024) 0.805 -> 0.847 and (64, 32768)
0.937 -> 0.965 (``benchmarks/rebuild_exp_ab.py``; benchmarks/NOTES.md, ninth pass).
cross_entropy's backward does not: the same probe measured no gain there (0.905 -> 0.898), and
softmax's doubled its temp memory (``family._exps``).

Range reduction and a polynomial, all elementwise operations XLA vectorises:

    t = k ln 2 + r,   k = round(t / ln 2),   |r| <= ln 2 / 2
    exp(t) = 2^k * p(r),   p(r) = 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3 + c6 r^4)

``k ln 2`` is subtracted in two parts (Cody and Waite): ``LN2_HI`` has 16 significant bits, so
``k * LN2_HI`` is exact for every ``|k| <= 128``. ``c2 .. c6`` are a minimax fit of
``(e^r - 1 - r) / r^2`` in relative error on ``[-ln 2 / 2, ln 2 / 2]`` (3e-9 for ``p``, under
float32's rounding; degree 5 measured 2.6 ulps); ``2^k`` is written into the exponent bits.
Measured against float64 on 2^24 points of ``[-87.33, 0]``: within 1.26 ulps, median 0.35
(XLA:CPU's ``jnp.exp``: 1.01); ``tests/core/test_expf.py`` holds it to 1.3 on 2^20 points.
``t`` below ``UNDERFLOW`` (where ``exp`` leaves float32's normal range, which XLA:CPU flushes to
zero) and ``-inf`` give 0, NaN gives NaN, and ``t > 0`` is clipped to 0 (a max-shifted logit is
never positive; masked entries are discarded).

On GPU and TPU ``exp`` is a hardware instruction, so there :func:`exp` is ``jnp.exp``; the choice
is made when the program is lowered (``lax.platform_dependent``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["exp"]

LOG2_E = 1.4426950408889634
LN2_HI = 0.693145751953125  # 16 significant bits: k * LN2_HI is exact for |k| <= 128
LN2_LO = 1.4286067653302e-06  # ln 2 - LN2_HI
#: c2 .. c6 of p(r) = 1 + r + r^2 (c2 + c3 r + ... + c6 r^4), fitted on |r| <= ln 2 / 2.
COEFFICIENTS = (0.4999999403953552, 0.1666652113199234, 0.04166838899254799,
                0.008368710055947304, 0.0013814610429108143)
#: exp(t) is below float32's smallest normal number for t < UNDERFLOW.
UNDERFLOW = -87.33654


def _polynomial_exp(t):
  """``exp(t)`` of a float32 ``t <= 0`` by range reduction and a polynomial (module docstring)."""
  tc = jnp.clip(t, UNDERFLOW, 0.0)  # NaN stays NaN
  k = jnp.round(tc * LOG2_E)  # in [-126, 0]
  r = (tc - k * LN2_HI) - k * LN2_LO
  q = COEFFICIENTS[-1]
  for c in COEFFICIENTS[-2::-1]:
    q = q * r + c
  p = 1.0 + r + (r * r) * q
  two_k = lax.bitcast_convert_type((k.astype(jnp.int32) + 127) << 23, jnp.float32)
  return jnp.where(t < UNDERFLOW, 0.0, p * two_k)


def exp(t):
  """``exp(t)`` of a float32 array of max-shifted logits (``t <= 0``): :func:`_polynomial_exp` on
  a CPU, ``jnp.exp`` elsewhere."""
  if t.dtype != jnp.float32:
    raise TypeError(f"expf.exp: t must be float32, got {t.dtype}")
  return lax.platform_dependent(t, cpu=_polynomial_exp, default=jnp.exp)
