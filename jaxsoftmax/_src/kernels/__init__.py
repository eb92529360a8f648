"""Row kernels behind the public ops: one entry per kernel, lowered for the platform.

Layout: ``reference.py`` states the contract in plain XLA; ``gpu.py`` (Pallas -> Triton) and
``tpu.py`` (Pallas -> Mosaic TPU) implement it; ``online.py`` holds the online max/sum update
both use. Which ops take the kernels is decided in :mod:`jaxsoftmax._src.dispatch`.

The kernel for the platform is chosen when the program is lowered (``lax.platform_dependent``), so
a function traced once lowers to Triton on ``cuda``/``rocm`` and to Mosaic on ``tpu``. Lowered for
the CPU, an entry runs the reference formulation of the same contract, or Pallas' interpreter
when ``interpret=True`` (how CI tests the kernels).
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from jaxsoftmax._src.kernels import gpu, reference, tpu

__all__ = ["softmax_fwd", "softmax_bwd", "ce"]


def _differentiable(kernel, ref, *args):
  """``kernel(*args)``, differentiable through the reference formulation of the same contract.

  First derivatives of the public ops never differentiate a kernel (they run inside the ops'
  ``custom_vjp`` rules); second derivatives (``jax.hessian``, grad of grad) differentiate those
  rules themselves, and a ``pallas_call`` has no transpose. The kernels' own VJP is therefore the
  autodiff of :mod:`jaxsoftmax._src.kernels.reference`, which computes the same values.
  """
  @jax.custom_vjp
  def op(*a):
    return kernel(*a)

  def fwd(*a):
    return kernel(*a), a

  def bwd(a, ct):
    return jax.vjp(ref, *a)[1](ct)

  op.defvjp(fwd, bwd)
  return op(*args)


def _dispatch(name, interpret, args, **kw):
  g = functools.partial(getattr(gpu, name), **kw)
  t = functools.partial(getattr(tpu, name), **kw)
  if interpret:
    default = functools.partial(getattr(gpu, name), interpret=True, **kw)
  else:
    default = functools.partial(getattr(reference, name), **kw)
  kernel = lambda *a: lax.platform_dependent(*a, cuda=g, rocm=g, tpu=t, default=default)
  return _differentiable(kernel, functools.partial(getattr(reference, name), **kw), *args)


def softmax_fwd(x, *, interpret, log, negate, temperature):
  """``(y, m, s)`` for 2-d ``x``; see :mod:`jaxsoftmax._src.kernels.reference`."""
  return _dispatch("softmax_fwd", interpret, (x,), log=log, negate=negate, temperature=temperature)


def softmax_bwd(dy, res, m, s, *, interpret, log, negate, temperature, recompute):
  return _dispatch("softmax_bwd", interpret, (dy, res, m, s), log=log, negate=negate,
                   temperature=temperature, recompute=recompute)


def ce(x, labels, alpha, beta, gamma, w=None, m=None, s=None, *, interpret, grad, smooth,
       dx_dtype=None):
  """``(m, s, x_y, smooth_sum, dx | None)``; ``w`` and ``m``/``s`` are optional (a ``None`` is an empty
  pytree, so its absence is static in every branch)."""
  return _dispatch("ce", interpret, (x, labels, alpha, beta, gamma, w, m, s), grad=grad, smooth=smooth,
                   dx_dtype=dx_dtype)
