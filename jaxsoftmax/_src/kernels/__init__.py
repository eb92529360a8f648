"""Row kernels behind the public ops, and the choice between them.

Layout: ``reference.py`` states the contract in plain XLA; ``gpu.py`` (Pallas → Triton) and
``tpu.py`` (Pallas → Mosaic TPU) implement it. The public functions take
``implementation=None | "xla" | "pallas"``:

* ``None`` picks Pallas when the default backend is a GPU or TPU and the call is one the kernels
  cover (float16/bfloat16/float32, one class axis that is the last, no ``where`` mask, non-empty
  rows, and not fewer than ``AUTO_MIN_ROWS_TWO_PASS`` rows too long for one pass), XLA otherwise;
* ``"xla"`` always uses the XLA formulation (the fallback on every platform);
* ``"pallas"`` forces the kernels and says why when it cannot. On a CPU they run in Pallas'
  interpreter (slow, exact; that is how CI tests them).

The kernel for the platform is chosen when the program is lowered (``lax.platform_dependent``), so
a function traced once lowers to Triton on ``cuda``/``rocm`` and to Mosaic on ``tpu``. An
automatically chosen kernel lowered for the CPU falls back to the reference formulation of the same
contract.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoftmax._src.kernels import gpu, reference, tpu

__all__ = ["IMPLEMENTATIONS", "choose", "prefer", "softmax_fwd", "softmax_bwd", "ce"]

IMPLEMENTATIONS = (None, "xla", "pallas")
_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)


_PREFERRED = contextvars.ContextVar("jaxsoftmax_preferred_implementation", default=None)


@contextlib.contextmanager
def prefer(implementation):
  """Within the block, ``implementation=None`` means ``implementation`` wherever the kernels
  apply (calls they cannot take still use XLA). The parity grid runs through the kernels this way:
  ``jaxsoftmax parity --implementation pallas``."""
  token = _PREFERRED.set(check(implementation, "prefer"))
  try:
    yield
  finally:
    _PREFERRED.reset(token)


def check(implementation, op: str):
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"{op}: implementation must be None, 'xla' or 'pallas'; got "
                     f"{implementation!r}.")
  return implementation


def unsupported(dtype, *, last_axis: bool, masked: bool = False, empty: bool = False):
  """Why the kernels cannot take a call (None when they can)."""
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _DTYPES]:
    return f"covers float16, bfloat16 and float32; got {jnp.dtype(dtype)}"
  if not last_axis:
    return "reduces over the last axis only (move the class axis last, or use 'xla')"
  if masked:
    return "does not take a where= mask"
  if empty:
    return "needs non-empty rows"
  return None


# The default leaves long rows to XLA when there are few of them: a two-pass kernel gives each
# row one program, so a handful of very long rows would stream through a handful of SMs, where
# XLA splits the reduction itself. (A prediction, to be timed on a GPU: benchmarks/NOTES.md.)
AUTO_MIN_ROWS_TWO_PASS = 512


def choose(implementation, op: str, reason: str | None, rows: int = 0, n: int = 0) -> str:
  """The static mode: ``"xla"``, ``"auto"`` (kernels, reference on CPU) or ``"pallas"``
  (kernels, interpreter on CPU). ``rows`` and ``n`` (the row length) inform the default only."""
  if implementation == "xla":
    return "xla"
  if reason is not None:
    if implementation == "pallas":
      raise ValueError(f"{op}: implementation='pallas' {reason}.")
    return "xla"
  if implementation == "pallas":
    return "pallas"
  preferred = _PREFERRED.get()
  if preferred is not None:
    return preferred
  if n > gpu.ONE_PASS_MAX and rows < AUTO_MIN_ROWS_TWO_PASS:
    return "xla"
  return "auto" if jax.default_backend() in ("gpu", "tpu") else "xla"


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


def _dispatch(name, mode, args, **kw):
  g = functools.partial(getattr(gpu, name), **kw)
  t = functools.partial(getattr(tpu, name), **kw)
  if mode == "pallas":
    default = functools.partial(getattr(gpu, name), interpret=True, **kw)
  else:
    default = functools.partial(getattr(reference, name), **kw)
  kernel = lambda *a: lax.platform_dependent(*a, cuda=g, rocm=g, tpu=t, default=default)
  return _differentiable(kernel, functools.partial(getattr(reference, name), **kw), *args)


def softmax_fwd(x, *, mode, log, negate, temperature):
  """``(y, m, s)`` for 2-d ``x``; see :mod:`jaxsoftmax._src.kernels.reference`."""
  return _dispatch("softmax_fwd", mode, (x,), log=log, negate=negate, temperature=temperature)


def softmax_bwd(dy, res, m, s, *, mode, log, negate, temperature, recompute):
  return _dispatch("softmax_bwd", mode, (dy, res, m, s), log=log, negate=negate,
                   temperature=temperature, recompute=recompute)


def ce(x, labels, alpha, beta, gamma, w=None, m=None, s=None, *, mode, grad, smooth,
       dx_dtype=None):
  """``(m, s, x_y, swx, dx | None)``; ``w`` and ``m``/``s`` are optional (a ``None`` is an empty
  pytree, so its absence is static in every branch)."""
  return _dispatch("ce", mode, (x, labels, alpha, beta, gamma, w, m, s), grad=grad, smooth=smooth,
                   dx_dtype=dx_dtype)
