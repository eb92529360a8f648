"""The softmax family: softmax, log_softmax, softmin, with temperature and masking.

Algorithm: max-subtraction ("stable softmax"). For a row ``x`` and ``m = max(x)``,

.. math:: \\mathrm{softmax}(x)_i = \\frac{e^{x_i - m}}{\\sum_j e^{x_j - m}},
          \\quad \\log\\mathrm{softmax}(x)_i = x_i - m - \\log \\sum_j e^{x_j - m}

which is exact in real arithmetic (the ``e^{-m}`` cancels) and never overflows: every exponent is
``<= 0``. float16/bfloat16 inputs are computed in float32 and rounded once, as torch does.

Derivatives are ``jax.custom_vjp`` rules that keep only the output ``y`` for the backward pass
(for float16/bfloat16 inputs, the float32 output before its final rounding: the gradient is then
also computed in float32 and rounded once. Keeping the half-precision output instead, as torch's
half kernels do, was measured to put the gradient up to 69 ulps (float16) and 6815 ulps
(bfloat16) away from the exact one; this way it is within half an ulp):

.. math:: \\bar x = y \\odot (\\bar y - \\langle \\bar y, y \\rangle) \\;\\text{(softmax)}, \\qquad
          \\bar x = \\bar y - e^{y} \\textstyle\\sum \\bar y \\;\\text{(log_softmax)}

the same formulas torch's ``_softmax_backward_data`` / ``_log_softmax_backward_data`` use, so NaN and
inf patterns agree as well as values. A ``custom_vjp`` function supports reverse mode (``grad``,
``vjp``, ``hessian`` via reverse-over-reverse) but not forward mode: ``jax.jvp`` and ``jax.jacfwd``
raise ``TypeError`` on it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsoftmax._src import checks, kernels

__all__ = ["softmax", "log_softmax", "softmin"]

_NEG_INF = -jnp.inf


# ----------------------------------------------------------------------------------------------
# custom_vjp kernels. ``axes`` and ``temperature`` are static (hashable) so they are
# nondiff_argnums; ``where`` is an optional boolean array that receives no cotangent.


def _max(xc, axes, where):
  # ``initial`` keeps empty reductions defined (-inf) instead of raising, as torch returns an
  # empty result for softmax over a zero-length axis.
  return jnp.max(xc, axis=axes, keepdims=True, initial=_NEG_INF, where=where)


def _scaled(x, temperature, negate=False):
  xc = x.astype(checks.compute_dtype(x.dtype))
  if negate:  # exact, so softmin(x) is softmax(-x) bit for bit
    xc = -xc
  # Divide (not multiply by 1/T) so the scaled logits equal torch's ``x / T`` bit for bit.
  return xc if temperature == 1.0 else xc / temperature


def _keep(where, v, fill=0.0):
  """``v`` where the mask keeps an entry, ``fill`` elsewhere (no-op without a mask)."""
  return v if where is None else jnp.where(where, v, fill)


def _input_grad(dx, where, temperature, negate, dtype):
  """Shared tail of both backward rules: masked entries get 0, then the 1/T of x / T (and the
  sign of softmin's -x)."""
  dx = _keep(where, dx)
  if temperature != 1.0:
    dx = dx / temperature
  if negate:
    dx = -dx
  return dx.astype(dtype), None  # None: the mask receives no cotangent


# The kernel path (``mode`` != "xla", see jaxsoftmax._src.kernels) works on [rows, n] views with the
# class axis last. Its residual is the output for float32 inputs; for half inputs it is the input
# itself plus the row max and sum, from which the backward kernel rebuilds the forward's float32
# output exactly as the forward built it (the same values the XLA path keeps, without writing a
# float32 copy: 2 bytes per element instead of 4).


def _kernel_fwd(x, log, negate, temperature, mode):
  x2 = x.reshape(-1, x.shape[-1])
  y, m, s = kernels.softmax_fwd(x2, mode=mode, log=log, negate=negate, temperature=temperature)
  recompute = x.dtype != jnp.float32
  return y.reshape(x.shape), ((x2 if recompute else y), m, s)


def _kernel_bwd(log, negate, temperature, mode, res, g):
  r, m, s = res
  dx = kernels.softmax_bwd(g.reshape(r.shape), r, m, s, mode=mode, log=log, negate=negate,
                            temperature=temperature, recompute=r.dtype != jnp.float32)
  return dx.reshape(g.shape), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _softmax(x, where, axes, temperature, negate, mode):
  return _softmax_fwd(x, where, axes, temperature, negate, mode)[0]


def _softmax_fwd(x, where, axes, temperature, negate, mode):
  if mode != "xla":
    return _kernel_fwd(x, False, negate, temperature, mode)
  xc = _scaled(x, temperature, negate)
  # Masked entries contribute nothing; a fully masked row gives zeros (jax.nn semantics).
  e = _keep(where, jnp.exp(xc - _max(xc, axes, where)))
  y = _keep(where, e / jnp.sum(e, axis=axes, keepdims=True))
  # Residual: the output only, at compute precision (see the module docstring). With a mask, the
  # mask is kept too: y == 0 at masked entries, but 0 * NaN would leak a NaN row's gradient.
  return y.astype(x.dtype), (y, where)


def _softmax_bwd(axes, temperature, negate, mode, res, g):
  if mode != "xla":
    return _kernel_bwd(False, negate, temperature, mode, res, g)
  y, where = res
  gc = _keep(where, g.astype(y.dtype))
  dx = y * (gc - jnp.sum(gc * y, axis=axes, keepdims=True))
  return _input_grad(dx, where, temperature, negate, g.dtype)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _log_softmax(x, where, axes, temperature, negate, mode):
  return _log_softmax_fwd(x, where, axes, temperature, negate, mode)[0]


def _log_softmax_fwd(x, where, axes, temperature, negate, mode):
  if mode != "xla":
    return _kernel_fwd(x, True, negate, temperature, mode)
  xc = _scaled(x, temperature, negate)
  shifted = xc - _max(xc, axes, where)
  e = _keep(where, jnp.exp(shifted))
  y = _keep(where, shifted - jnp.log(jnp.sum(e, axis=axes, keepdims=True)), _NEG_INF)
  # With a mask, a masked entry (-inf, zero gradient) must be told apart from a genuine -inf logit
  # (gradient = upstream gradient, as in torch), so the mask is kept beside the output.
  return y.astype(x.dtype), (y, where)


def _log_softmax_bwd(axes, temperature, negate, mode, res, g):
  if mode != "xla":
    return _kernel_bwd(True, negate, temperature, mode, res, g)
  y, where = res
  gc = _keep(where, g.astype(y.dtype))
  dx = gc - jnp.exp(y) * jnp.sum(gc, axis=axes, keepdims=True)
  return _input_grad(dx, where, temperature, negate, g.dtype)


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


@functools.partial(jax.jit, static_argnames=("axes", "temperature", "log", "negate", "mode"))
def _family(x, where, traced_temperature, *, axes, temperature, log, negate, mode="xla"):
  """One jitted entry for the whole family; ``traced_temperature`` is None or a scalar array."""
  kernel = _log_softmax if log else _softmax
  if where is not None:
    where = jnp.broadcast_to(where, x.shape)
  if traced_temperature is None:
    return kernel(x, where, axes, temperature, negate, mode)
  # A temperature array stays differentiable (temperature scaling fits it by gradient descent),
  # so it is applied outside the custom rule; the rule then sees float32 logits.
  xc = _scaled(x, 1.0) / traced_temperature.astype(checks.compute_dtype(x.dtype))
  return kernel(xc, where, axes, 1.0, negate, mode).astype(x.dtype)


def _prepare(x, axis, temperature, where, op: str):
  """Validation shared by the public functions (runs at trace time, never under jit)."""
  x = checks.as_float_array(x, "x", op)
  axes = checks.normalize_axes(axis, x.ndim)
  traced = None
  if temperature is None:
    raise TypeError(f"{op}: temperature must be a positive number or a scalar array; got None.")
  if isinstance(temperature, (jax.Array, jax.core.Tracer)) or hasattr(temperature, "__array__"):
    traced = checks.as_float_array(temperature, "temperature", op)
    if traced.ndim != 0:
      raise ValueError(f"{op}: temperature must be a scalar; got an array of shape {traced.shape}.")
    if checks.is_concrete(traced):
      checks.check_positive_finite(float(traced), "temperature")
    temperature = 1.0
  else:
    temperature = checks.check_positive_finite(temperature, "temperature")
  if where is not None:
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
      raise TypeError(f"{op}: where must be a boolean array; got dtype {where.dtype}.")
    try:
      jnp.broadcast_shapes(where.shape, x.shape)
    except ValueError:
      raise ValueError(
          f"{op}: where of shape {where.shape} does not broadcast to x of shape {x.shape}."
      ) from None
    if x.ndim == 0:
      where = where.reshape(1)
  return x, axes, temperature, traced, where


def _call(x, axis, temperature, where, implementation, *, op, log, negate):
  x, axes, temperature, traced, where = _prepare(x, axis, temperature, where, op)
  kernels.check(implementation, op)
  reshape_to = None
  if x.ndim == 0:  # torch treats a 0-d tensor as a one-element row
    x, axes, reshape_to = x.reshape(1), (0,), ()
  reason = kernels.unsupported(x.dtype, last_axis=axes == (x.ndim - 1,),
                                masked=where is not None, empty=x.size == 0)
  n = x.shape[-1] if x.ndim else 1
  mode = kernels.choose(implementation, op, reason, rows=x.size // max(n, 1), n=n)
  out = _family(x, where, traced, axes=axes, temperature=temperature, log=log, negate=negate,
                mode=mode)
  return out if reshape_to is None else out.reshape(reshape_to)


def softmax(x: jax.typing.ArrayLike, axis: int | tuple[int, ...] | None = -1, *,
            temperature: float | jax.typing.ArrayLike = 1.0,
            where: jax.typing.ArrayLike | None = None,
            implementation: str | None = None) -> jax.Array:
  r"""Softmax along ``axis``, optionally at a temperature and over a mask.

  .. math:: \mathrm{softmax}(x / T)_i = \frac{\exp((x_i - m) / T)}{\sum_j \exp((x_j - m) / T)},
            \quad m = \max_j x_j

  Args:
    x: floating-point logits, any shape (``[..., classes]`` with the default axis).
    axis: the axis (or axes, or None for all) that sums to one. Negative values count from the end.
    temperature: ``T > 0``. A Python number is static (part of the jit cache key) and costs
      nothing extra; a scalar array is traced and differentiable, for fitting ``T`` (calibration).
    where: optional boolean mask broadcastable to ``x``; ``False`` entries are excluded and get 0.
    implementation: ``None`` (Pallas kernels on GPU/TPU where they apply, else XLA), ``"xla"``
      or ``"pallas"`` (forced; Pallas' interpreter on CPU). See :mod:`jaxsoftmax._src.kernels`.

  Returns:
    An array of ``x``'s shape and dtype.

  Raises:
    DTypeError: (a ``TypeError``) for integer, bool or complex ``x``.
    IndexError: ``axis`` out of range.
    ValueError: ``temperature`` not finite and positive.

  Note:
    As in torch, a row whose entries are all ``-inf``, or that holds ``+inf`` or NaN, gives NaN.
    A row that ``where`` masks completely gives zeros (as ``jax.nn.softmax``), where torch's
    ``masked_fill(-inf)`` idiom gives NaN. Forward mode (``jax.jvp``) is not supported.

  Example:
    >>> import jaxsoftmax
    >>> jaxsoftmax.softmax(jnp.array([1.0, 2.0, 3.0])).round(4)
    Array([0.09  , 0.2447, 0.6652], dtype=float32)

  See also: :func:`log_softmax`, :func:`softmin`, :func:`jaxsoftmax.cross_entropy`.
  """
  return _call(x, axis, temperature, where, implementation, op="softmax", log=False, negate=False)


def log_softmax(x: jax.typing.ArrayLike, axis: int | tuple[int, ...] | None = -1, *,
                temperature: float | jax.typing.ArrayLike = 1.0,
                where: jax.typing.ArrayLike | None = None,
            implementation: str | None = None) -> jax.Array:
  r"""Log of the softmax along ``axis``, computed without forming ``log(softmax(x))``.

  .. math:: \log\mathrm{softmax}(x / T)_i = \frac{x_i - m}{T} - \log \sum_j \exp\frac{x_j - m}{T}

  ``log(softmax(x))`` underflows to ``-inf`` once a probability is below the dtype's smallest
  number; this form stays finite for every finite input.

  Args:
    x: floating-point logits.
    axis: as in :func:`softmax`.
    temperature: as in :func:`softmax`.
    where: optional boolean mask; ``False`` entries get ``-inf`` and zero gradient.
    implementation: as in :func:`softmax`.

  Returns:
    An array of ``x``'s shape and dtype.

  Note:
    NaN and ``+inf`` propagate to the whole row, as in torch. Forward mode is not supported.

  Example:
    >>> jaxsoftmax.log_softmax(jnp.array([0.0, 1000.0]))
    Array([-1000.,     0.], dtype=float32)

  See also: :func:`softmax`, :func:`jaxsoftmax.nll_loss`.
  """
  return _call(x, axis, temperature, where, implementation, op="log_softmax", log=True,
               negate=False)


def softmin(x: jax.typing.ArrayLike, axis: int | tuple[int, ...] | None = -1, *,
            where: jax.typing.ArrayLike | None = None,
            implementation: str | None = None) -> jax.Array:
  r"""Softmin: ``softmax(-x)``, weights that favour the smallest entries.

  .. math:: \mathrm{softmin}(x)_i = \frac{\exp(-x_i)}{\sum_j \exp(-x_j)}

  Args:
    x: floating-point input.
    axis: as in :func:`softmax`.
    where: as in :func:`softmax`.
    implementation: as in :func:`softmax`.

  Returns:
    An array of ``x``'s shape and dtype.

  Example:
    >>> jaxsoftmax.softmin(jnp.array([1.0, 2.0, 3.0])).round(4)
    Array([0.6652, 0.2447, 0.09  ], dtype=float32)

  See also: :func:`softmax`.
  """
  return _call(x, axis, 1.0, where, implementation, op="softmin", log=False, negate=True)
