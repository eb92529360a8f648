"""The online softmax statistics that every multi-block kernel folds its blocks into.

For a row seen block by block, the running maximum ``m`` and the sum ``s = sum exp(x - m)``
update as

.. math:: m' = \\max(m, \\max_j x_j), \\qquad s' = s\\,e^{m - m'} + \\textstyle\\sum_j e^{x_j - m'}

(Milakov and Gimelshein, 2018). While every entry so far is ``-inf``, ``m - m'`` is NaN; the sum is
then exactly 0, so both terms are forced to 0 there. Plain ``jnp`` on ``[rows, block]`` values, so
Triton and Mosaic kernels (and their interpreters) share it.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["NEG_INF", "update"]

NEG_INF = -jnp.inf


def update(m, s, xs):
  """``(m', s')`` after folding the block ``xs`` (``[rows, block]``, -inf where padded) into the
  running ``[rows, 1]`` maximum ``m`` and rescaled sum ``s``."""
  m_new = jnp.maximum(m, jnp.max(xs, axis=1, keepdims=True))
  finite = m_new > NEG_INF
  rescale = jnp.where(finite, jnp.exp(m - m_new), 0.0)
  block = jnp.where(finite, jnp.sum(jnp.exp(xs - m_new), axis=1, keepdims=True), 0.0)
  return m_new, s * rescale + block
