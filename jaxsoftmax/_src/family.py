"""The softmax family: softmax, log_softmax, softmin, with temperature and masking.

Algorithm: max-subtraction ("stable softmax"). For a row ``x`` and ``m = max(x)``,

.. math:: \\mathrm{softmax}(x)_i = \\frac{e^{x_i - m}}{\\sum_j e^{x_j - m}},
          \\quad \\log\\mathrm{softmax}(x)_i = x_i - m - \\log \\sum_j e^{x_j - m}

which is exact in real arithmetic (the ``e^{-m}`` cancels) and never overflows: every exponent is
``<= 0``. float16/bfloat16 inputs are computed in float32 and rounded once, as torch does.

Derivatives are ``jax.custom_vjp`` rules. For float32 (and float64) inputs softmax keeps its
output ``y``; log_softmax keeps the exponentials ``e = exp(x - m)`` and their row sums ``s``
(``e^y = e / s``, so its backward needs no ``exp``). Either way the gradient is computed in float32
and, for float16/bfloat16 inputs, rounded once: within half an ulp of the exact one, where keeping
the half-precision output, as torch's half kernels and jax.nn do, is not (benchmarks/NOTES.md).
A 16-bit input of at least ``2^20`` elements keeps ``x`` itself and the row statistics ``m`` (and
``s``) instead, and the backward rebuilds the forward's float32 ``y`` or ``e`` from them by the
same operations (in another fusion, so up to float32 rounding: rare one-ulp flips in the 16-bit
gradient), at 2 bytes per element, the peer's, not a float32 copy's 4, for one more ``exp`` per
element (``checks.REBUILD_FROM`` says why not below; for softmax in one fwd+bwd program, ``_apart``
says how XLA is kept from writing the float32 copy anyway):

.. math:: \\bar x = y \\odot (\\bar y - \\langle \\bar y, y \\rangle) \\;\\text{(softmax)}, \\qquad
          \\bar x = \\bar y - \\frac{e}{s} \\textstyle\\sum \\bar y \\;\\text{(log_softmax)}

the same formulas torch's ``_softmax_backward_data`` / ``_log_softmax_backward_data`` use, so NaN and
inf patterns agree as well as values. A ``custom_vjp`` function supports reverse mode (``grad``,
``vjp``, ``hessian`` via reverse-over-reverse) but not forward mode: ``jax.jvp`` and ``jax.jacfwd``
raise ``TypeError`` on it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsoftmax._src import checks, collectives, dispatch, kernels
from jaxsoftmax._src.rows import (CPU_LOOP_BELOW_ROWS, GPU_APART_FROM, TINY, max_once,
                                 rebuilt_apart, rebuilt_output_loop, round_once, row_max,
                                 row_max_of, row_sum)
from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax._src.kernels.online import NEG_INF
from jaxsoftmax._src.kernels.reference import scaled

__all__ = ["softmax", "log_softmax", "softmin"]


# ----------------------------------------------------------------------------------------------
# The rules, one custom_vjp per backend. ``axes`` and ``temperature`` are static (hashable) so they
# are nondiff_argnums; ``where`` is an optional boolean array that receives no cotangent.


def _max(x, xc, axes, where, temperature, negate):
  """The row max of the scaled logits ``xc``. -inf for an empty row keeps empty reductions
  defined instead of raising, as torch returns an empty result for softmax over a zero-length
  axis. Short rows are unrolled only without a temperature (rows.row_max says why). Without a
  temperature or negation it is taken on ``x`` in its own dtype (rows.row_max_of says why)."""
  if temperature != 1.0:
    return row_max(xc, axes, where, unroll=False)
  if negate:  # a 16-bit -x is itself a float32 round trip on XLA:CPU, materialised for the max
    return row_max(xc, axes, where)  # (softmin bf16 fwd+bwd (64, 262144): 0.78x that way)
  return row_max_of(x, xc.dtype, axes, where)


def _keep(where, v, fill=0.0):
  """``v`` where the mask keeps an entry, ``fill`` elsewhere (no-op without a mask)."""
  return v if where is None else jnp.where(where, v, fill)


def _input_grad(dx, where, temperature, negate, dtype, own_loop=False):
  """Shared tail of both backward rules: masked entries get 0, then the 1/T of x / T (and the
  sign of softmin's -x), rounded into ``dtype`` (``own_loop``: rows.round_once)."""
  dx = _keep(where, dx)
  if temperature != 1.0:
    dx = dx / temperature
  if negate:
    dx = -dx
  return round_once(dx, dtype, own_loop=own_loop), None  # None: the mask receives no cotangent


# XLA backend: softmax keeps its output ``y``, log_softmax the exponentials and their row sums
# (and either keeps the mask, when given).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _softmax_xla(x, where, axes, temperature, negate):
  return _softmax_xla_fwd(x, where, axes, temperature, negate)[0]


def _exps(x, where, temperature, negate, m):
  """``e = exp(x' - m)`` of the scaled logits ``x'``, 0 where masked: the forward's, and the
  backward's from the kept ``x`` and ``m`` by the same operations (the same values up to how
  XLA rounds a float32 step in another fusion)."""
  return _keep(where, jnp.exp(scaled(x, negate, temperature) - m))


#: softmax's rebuilt residual is fenced off (_apart) on a CPU below this many rows, on a GPU from
#: rows.GPU_APART_FROM classes; log_softmax's (_log_apart) on a CUDA GPU below that many.
CPU_APART_BELOW_ROWS = CPU_LOOP_BELOW_ROWS


def _apart(kept, axes):
  """softmax's rebuilt residual ``(x, m, s)`` as the backward receives it, behind
  ``lax.optimization_barrier`` where XLA would otherwise merge the backward's rebuilt float32 ``y``
  with the forward's in a fwd+bwd program and write one float32 copy that both passes read
  (4 bytes per element written, read twice): twice jax.nn's temp memory, 0.92x of its time at
  bfloat16 (1024, 8192) on this CPU, 0.74x at (4096, 32768) on an H200. Fenced, the backward
  recomputes ``exp`` from the 16-bit ``x`` as jax.nn does: 1.2x and 0.88x there, the peer's
  memory. In the backward, not the forward, so the residual stays ``x`` itself (a fenced forward
  output would be a copy where the two passes are separate programs).

  Where XLA does not merge, the fence only costs: XLA:CPU merged below 4096 rows and never from
  there (measured at 1-32768 classes: (4095, 1024) merges, (4096, 1024) does not), where
  unfenced was 1.2-1.3x faster ((4096, 1024), (16384, 128)); XLA:GPU fits rows of up to 8192
  classes in one Triton fusion per pass, which the fence split (0.75x at (4096, 1024)), and
  merged from 16384. log_softmax has its own rule (_log_apart). TPU: unmeasured,
  unfenced. Chosen when the program is lowered (benchmarks/NOTES.md, 2026-11-26, third GPU
  session)."""
  fenced = lambda *k: lax.optimization_barrier(k)
  plain = lambda *k: k
  x = kept[0]
  classes = math.prod(x.shape[a] for a in axes)
  cpu = fenced if x.size < CPU_APART_BELOW_ROWS * classes else plain
  gpu = fenced if classes >= GPU_APART_FROM else plain
  return lax.platform_dependent(*kept, cpu=cpu, cuda=gpu, rocm=gpu, default=plain)


def _log_apart(kept, where, axes, temperature, negate):
  """log_softmax's rebuilt residual ``(x, m, s)`` as the backward receives it: on a CUDA GPU
  below ``GPU_APART_FROM`` classes ``m`` and ``s`` are rebuilt from a fenced ``x``, so the
  forward's ``s`` is not shared (rows.rebuilt_apart says why and where)."""
  def stats(x):
    m = _max(x, scaled(x, negate, temperature), axes, where, temperature, negate)
    return m, row_sum(_exps(x, where, temperature, negate, m), axes, stats=True)

  return rebuilt_apart(kept, math.prod(kept[0].shape[a] for a in axes), stats)


def _softmax_xla_fwd(x, where, axes, temperature, negate):
  xc = scaled(x, negate, temperature)
  m = _max(x, xc, axes, where, temperature, negate)
  # Masked entries contribute nothing; a fully masked row gives zeros (jax.nn semantics).
  e = _keep(where, jnp.exp(xc - m))
  s = row_sum(e, axes, stats=True)
  y = _keep(where, e / s)
  # Residual (see the module docstring): float32 y, or for a large 16-bit x, x and the row
  # statistics (m, s), from which the backward rebuilds the float32 y (checks.REBUILD_FROM). With
  # a mask, the mask is kept too: y == 0 at masked entries, but 0 * NaN would leak a NaN row's
  # gradient.
  kept = (x, m, s) if checks.rebuilds_from_input(x) else (y, None, None)
  return y.astype(x.dtype), (kept, where)


def _softmax_xla_bwd(axes, temperature, negate, res, g):
  (y, m, s), where = res
  if m is not None:  # a large 16-bit x: y = e / s again, in float32
    y, m, s = _apart((y, m, s), axes)
    y = _keep(where, _exps(y, where, temperature, negate, m) / s)
  gc = _keep(where, g.astype(y.dtype))
  if negate:
    # softmin: -(y (g - sum g y)) as y (sum g y - g), the same values with one operation less
    # per element in the backward's YNNPACK fusion (fwd+bwd float32 (64, 128) 0.97x of jax.nn
    # with the negation, 0.98-1.00x without; benchmarks/NOTES.md, nineteenth pass).
    dx = y * (row_sum(gc * y, axes) - gc)
  else:
    dx = y * (gc - row_sum(gc * y, axes))
  return _input_grad(dx, where, temperature, False, g.dtype)


_softmax_xla.defvjp(_softmax_xla_fwd, _softmax_xla_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _log_softmax_xla(x, where, axes, temperature, negate):
  return _log_softmax_xla_fwd(x, where, axes, temperature, negate)[0]


def _log_softmax_xla_fwd(x, where, axes, temperature, negate):
  xc = scaled(x, negate, temperature)
  m = _max(x, xc, axes, where, temperature, negate)
  shifted = xc - m
  e = _keep(where, jnp.exp(shifted))
  # The sum feeds the forward's log and the backward's division. Unrolled, XLA copies it into both;
  # for a tiny input that copy is what counts (rows.TINY), and XLA's reduction is computed once.
  s = jnp.sum(e, axis=axes, keepdims=True) if x.size <= TINY else row_sum(e, axes, stats=True)
  log_s = jnp.log(s)
  y = _keep(where, (xc - max_once(m, log_s, xc, axes)) - log_s, NEG_INF)
  # Residual: the exponentials e = exp(x - m) and their row sums s, so the backward is
  # g - e (sum g) / s with no exp of its own (e^y = e / s). Keeping y instead made the backward
  # recompute e^y: 0.6-0.8x of jax.nn's backward on XLA:CPU, which keeps e too (benchmarks/
  # NOTES.md, 2026-11-26). For a large 16-bit x, x and m instead of e (checks.REBUILD_FROM): the
  # backward rebuilds the same float32 e with one exp per element, and the residual is 2 bytes per
  # element, as the peer's.
  # The forward alone never builds any of them (XLA drops unused residuals). With a mask, a
  # masked entry (-inf, zero gradient) must be told apart from a genuine -inf logit (gradient =
  # upstream gradient, as in torch): e is 0 there either way, so the mask is kept.
  kept = (x, m) if checks.rebuilds_from_input(x) else (e, None)
  return y.astype(x.dtype), (kept, s, where)


def _log_softmax_xla_bwd(axes, temperature, negate, res, g):
  (e, m), s, where = res
  own_loop = False
  if m is not None:  # a large 16-bit x: e = exp(x - m) again, in float32
    e, m, s = _log_apart((e, m, s), where, axes, temperature, negate)
    e = _exps(e, where, temperature, negate, m)
    own_loop = rebuilt_output_loop(e, axes)
  gc = _keep(where, g.astype(e.dtype))
  # gc - e * (sum / s) has the same bits as gc + e * (-sum / s) and one negation per row fewer,
  # which on a TINY input keeps a fwd+bwd program under XLA:CPU's 1000 flops (1024 -> 960 at
  # (64, 2)). Not on larger ones: the float32 backward at (4096, 128) and (4096, 1024) ran
  # 0.82-0.85x of jax.nn that way, 0.99-1.01x this way (benchmarks/NOTES.md, sixteenth pass).
  if g.size <= TINY:
    dx = gc - e * (row_sum(gc, axes) / s)
  else:
    dx = gc + e * (-row_sum(gc, axes) / s)
  return _input_grad(dx, where, temperature, negate, g.dtype, own_loop)


_log_softmax_xla.defvjp(_log_softmax_xla_fwd, _log_softmax_xla_bwd)


# Kernel backend: [rows, n] views with the class axis last, no mask. The residual is the output
# for float32 inputs; for half inputs it is the input itself plus the row max and sum, from which
# the backward kernel rebuilds the forward's float32 output exactly as the forward built it (the
# same values the XLA backend keeps, without writing a float32 copy: 2 bytes per element, not 4).


@dataclasses.dataclass(frozen=True)
class _KernelOptions:
  log: bool
  negate: bool
  temperature: float
  interpret: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _family_kernel(x, opts):
  return _family_kernel_fwd(x, opts)[0]


def _family_kernel_fwd(x, opts):
  x2 = x.reshape(-1, x.shape[-1])
  y, m, s = kernels.softmax_fwd(x2, interpret=opts.interpret, log=opts.log, negate=opts.negate,
                                temperature=opts.temperature)
  recompute = x.dtype != jnp.float32
  return y.reshape(x.shape), ((x2 if recompute else y), m, s)


def _family_kernel_bwd(opts, res, g):
  r, m, s = res
  dx = kernels.softmax_bwd(g.reshape(r.shape), r, m, s, interpret=opts.interpret, log=opts.log,
                           negate=opts.negate, temperature=opts.temperature,
                           recompute=r.dtype != jnp.float32)
  return (dx.reshape(g.shape),)


_family_kernel.defvjp(_family_kernel_fwd, _family_kernel_bwd)


# Sharded backend (``axis_name=``): the class axis is split over the mesh axes ``names`` inside
# ``shard_map`` (see :mod:`jaxsoftmax._src.collectives`). Forward: local row max and sum, one
# all-gather of those O(rows) values, the online-softmax combine. Backward: one O(rows) all-reduce
# of the row sum the rule needs. Residual: this shard's block of ``y`` (and the mask).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _family_sharded(x, where, axis, temperature, negate, log, names, total):
  return _family_sharded_fwd(x, where, axis, temperature, negate, log, names, total)[0]


def _family_sharded_fwd(x, where, axis, temperature, negate, log, names, total):
  mask = collectives.class_mask(names, x.shape[axis], total)
  if mask is not None:  # padding classes past ``total``: masked out, as where=False entries
    shape = [1] * x.ndim
    shape[axis] = -1
    mask = jnp.broadcast_to(mask.reshape(shape), x.shape)
    where = mask if where is None else where & mask
  xc = scaled(x, negate, temperature)
  m = _max(x, xc, (axis,), where, temperature, negate)
  # A block whose row is empty, masked or all -inf has m = -inf: shift by 0 there, so its
  # exponentials are 0 (not exp(-inf + inf) = NaN) and the combine gives it weight 0.
  m_safe = jnp.where(m == NEG_INF, 0.0, m)
  e = _keep(where, jnp.exp(xc - m_safe))
  s = jnp.sum(e, axis=axis, keepdims=True)
  stats = collectives.gather_stats([jnp.squeeze(m, axis), jnp.squeeze(s, axis)], names)
  big, total, _ = collectives.combine_max_sum(stats[:, 0], stats[:, 1])
  big, total = jnp.expand_dims(big, axis), jnp.expand_dims(total, axis)
  if log:
    y = _keep(where, (xc - big) - jnp.log(total), NEG_INF)
  else:  # e^{x - m_p} e^{m_p - M} / S: this block's exponentials, rescaled to the global max
    factor = jnp.where(m == NEG_INF, 0.0, jnp.exp(m_safe - big)) / total
    y = _keep(where, e * factor)
  return y.astype(x.dtype), (y, where)


def _family_sharded_bwd(axis, temperature, negate, log, names, total, res, g):
  y, where = res
  gc = _keep(where, g.astype(y.dtype))
  if log:  # dx = g - e^y sum(g): the row sum spans every block
    dx = gc - jnp.exp(y) * collectives.batch_sum(jnp.sum(gc, axis=axis, keepdims=True), names)
  else:  # dx = y (g - <g, y>)
    dot = collectives.batch_sum(jnp.sum(gc * y, axis=axis, keepdims=True), names)
    dx = y * (gc - dot)
  return _input_grad(dx, where, temperature, negate, g.dtype)


_family_sharded.defvjp(_family_sharded_fwd, _family_sharded_bwd)


# Auto meshes: the forward and the backward each a ``custom_partitioning`` op that runs the
# sharded rule above on every shard of ``[N, C]`` input, classes over the axes of its second
# dimension (rows over the first need nothing).


def _auto_ops(temperature, negate, log):
  """``(forward, backward)``: ``x -> y`` and ``(y, g) -> dx``, partitioned by our rule."""
  from jax.experimental.custom_partitioning import custom_partitioning  # noqa: PLC0415

  xla = _log_softmax_xla if log else _softmax_xla

  def forward_plain(x):
    return xla(x, None, (1,), temperature, negate)

  def backward_plain(y, g):
    yc = y.astype(checks.compute_dtype(y.dtype))
    if log:  # the XLA rule's residual from y: e = e^y, with row sums of 1
      res = ((jnp.exp(yc), None), jnp.ones(yc.shape[:-1] + (1,), yc.dtype), None)
      return _log_softmax_xla_bwd((1,), temperature, negate, res, g)[0]
    return _softmax_xla_bwd((1,), temperature, negate, ((yc, None, None), None), g)[0]

  forward = custom_partitioning(forward_plain)
  backward = custom_partitioning(backward_plain)

  def layout(mesh, shape):
    spec = collectives.spec_of(shape, 2)
    batch = collectives.entry_names(spec[0])
    classes = tuple(a for a in collectives.entry_names(spec[1]) if a not in batch)
    return classes, NamedSharding(mesh, P(batch or None, classes or None))

  def forward_partition(mesh, arg_shapes, result_shape):
    classes, sharding = layout(mesh, arg_shapes[0])

    def lower_fn(x):
      with collectives.untyped(classes):
        return _family_sharded_fwd(x, None, 1, temperature, negate, log, classes, None)[0]

    return mesh, lower_fn, sharding, (sharding,)

  def backward_partition(mesh, arg_shapes, result_shape):
    classes, sharding = layout(mesh, arg_shapes[0])

    def lower_fn(y, g):
      with collectives.untyped(classes):
        # The residual is the output in its own dtype here (the forward's rounding is kept).
        return _family_sharded_bwd(1, temperature, negate, log, classes, None,
                                   (y.astype(checks.compute_dtype(y.dtype)), None), g)[0]

    return mesh, lower_fn, sharding, (sharding, sharding)

  forward.def_partition(forward_partition,
                        infer_sharding_from_operands=lambda m, a, r: layout(m, a[0])[1],
                        sharding_rule="n c -> n c")
  backward.def_partition(backward_partition,
                         infer_sharding_from_operands=lambda m, a, r: layout(m, a[0])[1],
                         sharding_rule="n c, n c -> n c")
  return forward, backward


_AUTO_OPS = {}  # (forward, backward) custom_partitioning ops per (temperature, negate, log)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _family_auto(x, key):
  return _family_auto_fwd(x, key)[0]


def _family_auto_fwd(x, key):
  if key not in _AUTO_OPS:
    _AUTO_OPS[key] = _auto_ops(*key)
  y = _AUTO_OPS[key][0](x)
  return y, y


def _family_auto_bwd(key, y, g):
  return (_AUTO_OPS[key][1](y, g),)


_family_auto.defvjp(_family_auto_fwd, _family_auto_bwd)


@functools.partial(jax.jit, static_argnames=("key",))
def _family_auto_jit(x, *, key):
  return _family_auto(x, key)


def _rule(backend, log, where, axes, temperature, negate, names=(), total=None):
  """The custom-VJP function of ``backend`` (or of the sharded path), as ``x -> y``."""
  if names:
    return lambda x: _family_sharded(x, where, axes[0], temperature, negate, log, names, total)
  if backend is dispatch.Backend.XLA:
    xla = _log_softmax_xla if log else _softmax_xla
    return lambda x: xla(x, where, axes, temperature, negate)
  opts = _KernelOptions(log, negate, temperature, backend is dispatch.Backend.PALLAS_INTERPRET)
  return lambda x: _family_kernel(x, opts)


@functools.partial(jax.jit, static_argnames=("axes", "temperature", "log", "negate", "backend",
                                             "names", "total"))
def _family(x, where, traced_temperature, *, axes, temperature, log, negate, backend, names=(),
            total=None):
  """One jitted entry for the whole family; ``traced_temperature`` is None or a scalar array."""
  if where is not None:
    where = jnp.broadcast_to(where, x.shape)
  if traced_temperature is None:
    return _rule(backend, log, where, axes, temperature, negate, names, total)(x)
  # A temperature array stays differentiable (temperature scaling fits it by gradient descent),
  # so it is applied outside the custom rule; the rule then sees float32 logits.
  xc = scaled(x, False, 1.0) / traced_temperature.astype(checks.compute_dtype(x.dtype))
  return _rule(backend, log, where, axes, 1.0, negate, names, total)(xc).astype(x.dtype)


def _prepare(x, axis, temperature, where, op: str):
  """Validation shared by the public functions (runs at trace time, never under jit)."""
  x = checks.as_float_array(x, "x", op)
  axes = checks.normalize_axes(axis, x.ndim, op)
  traced = None
  if temperature is None:
    raise TypeError(f"{op}: temperature must be a positive number or a scalar array; got None.")
  if isinstance(temperature, (jax.Array, jax.core.Tracer)) or hasattr(temperature, "__array__"):
    traced = checks.as_float_array(temperature, "temperature", op)
    if traced.ndim != 0:
      raise ValueError(f"{op}: temperature must be a scalar; got an array of shape {traced.shape}.")
    if checks.is_concrete(traced):
      checks.check_positive_finite(float(traced), "temperature", op)
    temperature = 1.0
  else:
    temperature = checks.check_positive_finite(temperature, "temperature", op)
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


def _call(x, axis, temperature, where, implementation, axis_name, num_classes=None, *, op, log,
          negate):
  x, axes, temperature, traced, where = _prepare(x, axis, temperature, where, op)
  names = collectives.axis_names(axis_name, "axis_name", op)
  if num_classes is not None and not names:
    collectives.check_num_classes(num_classes, 1, names, op)  # raises: needs axis_name
  if names:
    if x.ndim == 0 or len(axes) != 1:
      raise ArgumentError(
          f"{op}: axis_name={axis_name!r} splits one class axis across shards; got axis={axis!r} "
          f"on an array of rank {x.ndim}. Pass a single axis.")
    if implementation == "pallas":
      raise ArgumentError(f"{op}: implementation='pallas' cannot take axis_name (the sharded path "
                          "is XLA's); use implementation=None or 'xla'.")
    dispatch.check(implementation, op)
    total = collectives.check_num_classes(num_classes, x.shape[axes[0]], names, op)
    return _family(x, where, traced, axes=axes, temperature=temperature, log=log, negate=negate,
                   backend=dispatch.Backend.XLA, names=names, total=total)
  layout = collectives.explicit_layout(x) if len(axes) == 1 else None
  if (layout is None and x.ndim == 2 and axes == (1,) and where is None and traced is None
      and implementation != "pallas" and collectives.auto_mesh(x) is not None):
    # Under jit over Auto axes: partitioned by our own rule (custom_partitioning).
    return _family_auto_jit(x, key=(temperature, negate, log))
  if layout is not None and implementation != "pallas":
    # Under jit over an Explicit mesh: the layout is in x's type, so take the sharded path.
    mesh, spec = layout
    classes = collectives.entry_names(spec[axes[0]])
    where = None if where is None else jnp.broadcast_to(where, x.shape)

    def body(x, where, traced):
      return _family(x, where, traced, axes=axes, temperature=temperature, log=log,
                     negate=negate, backend=dispatch.Backend.XLA, names=classes)

    return collectives.run_on_mesh(body, mesh, [x, where, traced], [spec, spec, ()], spec)
  reshape_to = None
  if x.ndim == 0:  # torch treats a 0-d tensor as a one-element row
    x, axes, reshape_to = x.reshape(1), (0,), ()
  n = x.shape[-1] if x.ndim else 1
  backend = dispatch.resolve(implementation, dispatch.KernelCall(
      op, x.dtype, last_axis=axes == (x.ndim - 1,), rows=x.size // max(n, 1), n=n,
      masked=where is not None, empty=x.size == 0))
  out = _family(x, where, traced, axes=axes, temperature=temperature, log=log, negate=negate,
                backend=backend)
  return out if reshape_to is None else out.reshape(reshape_to)


def softmax(x: jax.typing.ArrayLike, axis: int | tuple[int, ...] | None = -1, *,
            temperature: float | jax.typing.ArrayLike = 1.0,
            where: jax.typing.ArrayLike | None = None,
            implementation: str | None = None,
            axis_name: str | tuple[str, ...] | None = None,
            num_classes: int | None = None) -> jax.Array:
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
    axis_name: inside ``jax.shard_map``, the mesh axis (or tuple of axes) that ``axis`` is split
      over in contiguous blocks: ``x`` is this shard's block and the result is the same block of
      the softmax of the whole row, at the cost of one all-gather of two numbers per row (and one
      all-reduce of one per row in the backward). See :mod:`jaxsoftmax._src.collectives`.
    num_classes: with ``axis_name``, the true length of the class axis when it was padded at the
      end to a multiple of the axis size (padding less than one block): padded entries are masked
      out of every max, sum and gradient, and get 0 (``-inf`` for ``log_softmax``).

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
  return _call(x, axis, temperature, where, implementation, axis_name, num_classes, op="softmax",
               log=False, negate=False)


def log_softmax(x: jax.typing.ArrayLike, axis: int | tuple[int, ...] | None = -1, *,
                temperature: float | jax.typing.ArrayLike = 1.0,
                where: jax.typing.ArrayLike | None = None,
                implementation: str | None = None,
                axis_name: str | tuple[str, ...] | None = None,
                num_classes: int | None = None) -> jax.Array:
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
    axis_name: as in :func:`softmax`.
    num_classes: as in :func:`softmax`.

  Returns:
    An array of ``x``'s shape and dtype.

  Note:
    NaN and ``+inf`` propagate to the whole row, as in torch. Forward mode is not supported.

  Example:
    >>> jaxsoftmax.log_softmax(jnp.array([0.0, 1000.0]))
    Array([-1000.,     0.], dtype=float32)

  See also: :func:`softmax`, :func:`jaxsoftmax.nll_loss`.
  """
  return _call(x, axis, temperature, where, implementation, axis_name, num_classes,
               op="log_softmax", log=True, negate=False)


def softmin(x: jax.typing.ArrayLike, axis: int | tuple[int, ...] | None = -1, *,
            where: jax.typing.ArrayLike | None = None,
            implementation: str | None = None,
            axis_name: str | tuple[str, ...] | None = None,
            num_classes: int | None = None) -> jax.Array:
  r"""Softmin: ``softmax(-x)``, weights that favour the smallest entries.

  .. math:: \mathrm{softmin}(x)_i = \frac{\exp(-x_i)}{\sum_j \exp(-x_j)}

  Args:
    x: floating-point input.
    axis: as in :func:`softmax`.
    where: as in :func:`softmax`.
    implementation: as in :func:`softmax`.
    axis_name: as in :func:`softmax`.
    num_classes: as in :func:`softmax`.

  Returns:
    An array of ``x``'s shape and dtype.

  Example:
    >>> jaxsoftmax.softmin(jnp.array([1.0, 2.0, 3.0])).round(4)
    Array([0.6652, 0.2447, 0.09  ], dtype=float32)

  See also: :func:`softmax`.
  """
  return _call(x, axis, 1.0, where, implementation, axis_name, num_classes, op="softmin",
               log=False, negate=True)
