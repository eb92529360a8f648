"""Row reductions over the class axis for the XLA formulations: max and sum, ``keepdims``.

On XLA:CPU (jax 0.10) a float32 row reduction becomes a YNNPACK fusion (``ynn_fusion``). For
rows of 2 to 10 classes that fusion is 3-20x slower than an unrolled chain of elementwise
max / add over the classes, which XLA fuses into one vectorised, multi-threaded loop over the
rows (softmax fwd+bwd at (65536, 2): 0.43 ms against 3-4 ms; benchmarks/NOTES.md, 2026-11-26).
A sum that feeds a further reduction is a matrix-vector product instead (:func:`row_sum`).
So when the program is lowered for a CPU and the reduction is over one axis of at most
:data:`SHORT_ROW` classes, it is unrolled; otherwise (longer rows, several axes, GPU and TPU) it
is ``jnp.max`` / ``jnp.sum``. ``lax.platform_dependent`` makes the choice when the program is
lowered, not when it is traced, so one traced function is right on every platform.

The unrolled sum adds the classes left to right: at most 9 additions, within the float32
rounding of the tree XLA uses. The unrolled max propagates NaN as ``jnp.max`` does.

Also here, as the same kind of XLA:CPU lowering choice: :func:`round_once`, the rounding of a
float32 result into a bfloat16 output, written so that LLVM vectorises its loop twice as wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

__all__ = ["CPU_LOOP_BELOW_ROWS", "FENCE_FROM_BYTES", "GPU_APART_FROM", "LONG_ROW",
           "NARROW_DOT_FROM", "ROUND_BITS_FROM", "SHORT_ROW", "SHORT_STATS", "TINY",
           "fenced_on_cpu", "max_once", "rebuilt_apart", "rebuilt_output_loop", "round_once",
           "row_max", "row_max_of", "row_sum", "total_sum"]

#: The longest row (in classes) whose sums of gradient terms are unrolled on a CPU. Measured:
#: rows of 2, 4 and 10 win 1.2-20x; rows of 16 and more lose to the YNNPACK reduction.
SHORT_ROW = 10

#: The longest row whose forward statistics (the row max, the sum of exponentials, a loss's row sum)
#: are unrolled on a CPU. On the AVX-512 host of 2026-11-27 (benchmarks/NOTES.md, thirteenth pass)
#: the forwards of softmax, log_softmax and cross_entropy at 10 classes ran 0.59-0.77x of jax.nn /
#: optax unrolled (float32; bfloat16 0.76-1.08) and 0.95-1.02x with ``jnp.max`` / ``jnp.sum``, the
#: peer's own kernels. Unrolled, fwd and fwd+bwd ran 1.25-4.01x of the peer at 4 classes and
#: 0.86-2.33x at 8, where only log_softmax's float32 forward (0.98, 0.86) was under 1.
#: Backward sums keep :data:`SHORT_ROW`.
SHORT_STATS = 8


def _axis(x, axes: int | Sequence[int], stats: bool = False) -> int | None:
  """The one reduced axis (non-negative) when it is short enough to unroll, else None: at most
  :data:`SHORT_STATS` classes for a forward statistic, :data:`SHORT_ROW` for other sums."""
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  if len(axes) != 1:
    return None
  axis = axes[0] % x.ndim
  return axis if 0 < x.shape[axis] <= (SHORT_STATS if stats else SHORT_ROW) else None


#: A single row at least this long is summed as a dot product on a CPU: as one YNNPACK fusion
#: with its elementwise consumer, softmax's backward at (1, 262144) ran on one thread, 0.43x of
#: jax.nn's (whose consumer is a separate, two-thread loop).
LONG_ROW = 65536


def _one_long_row(x, axes) -> int | None:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  if len(axes) != 1:
    return None
  axis = axes[0] % x.ndim
  return axis if x.shape[axis] >= LONG_ROW and x.size == x.shape[axis] else None


#: From this many elements a row sum of exponentials of a 16-bit input that feeds a reduction (a
#: loss's forward) is a dot on a CPU, for rows longer than :data:`SHORT_ROW`. As a sum, XLA:CPU
#: hands the exponentials, the row sums and the batch sum to one YNNPACK fusion but leaves the
#: conversion out of it: a pass of its own that writes the whole input again in float32 for the
#: fusion to read. As a dot, the conversion and the exponentials are one loop that writes the
#: float32 array and the dot reads it: one pass fewer, and the temporary memory of optax's
#: program plus one row vector and the dot's column of ones (16.5 KiB over 2 MiB at (4096, 128)).
#: cross_entropy's bfloat16 forward, optax / jaxsoftmax in rounds of benchmarks/cell_rounds.py,
#: sum -> dot: (64, 128) 1.00 -> 1.12-1.14, (4096, 128) 0.87-1.01 -> 1.01-1.17, (1024, 1024)
#: 0.99-1.01 -> 1.28-1.32, (64, 32768) 0.99-1.01 -> 1.34-1.51, (65536, 128) 0.94-1.05 ->
#: 1.15-1.39, (1024, 32768) 0.90-1.05 -> 1.06-1.10. At 10 classes the dot lost ((65536, 10)
#: 1.03-1.10 -> 0.73-0.97), so short rows keep their sums; float32 inputs keep theirs too (their
#: YNNPACK fusion reads the input once; the dot ran 0.63-0.91x of optax). 4096 elements is where
#: XLA:CPU starts handing reductions to YNNPACK (benchmarks/NOTES.md, seventeenth pass).
NARROW_DOT_FROM = 4096


def _narrow_dot_axis(x, axes) -> int | None:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  if len(axes) != 1 or x.size < NARROW_DOT_FROM:
    return None
  axis = axes[0] % x.ndim
  return axis if x.shape[axis] > SHORT_ROW else None


#: On a CPU, a float32 array of this many bytes or more that several fusions compute from the same
#: input is formed by each of them from its own fenced copy of the operands (:func:`fenced_on_cpu`)
#: rather than written once to a temporary they all read. Soft-target cross_entropy float32
#: fwd+bwd, optax / jaxsoftmax in rounds of benchmarks/cell_rounds.py, shared -> fenced: (65536,
#: 128) (32 MiB) 0.78-1.32 (four processes) -> 1.26-1.50, (1024, 32768) 0.99-1.02 -> 1.24-1.32;
#: the forward alone at (1024, 32768) 1.00-1.04 -> 1.73-1.88. Below, recomputing cost more than
#: the temporary saved: (4096, 128) 0.96-0.99 -> 0.92-0.95, (256, 128) 1.00 -> 0.85, (65536, 10)
#: 1.08 -> 0.88; the forward alone at (64, 32768) (8 MiB) 0.98 -> 0.95 (benchmarks/NOTES.md,
#: eighteenth pass).
FENCE_FROM_BYTES = 32 << 20


def fenced_on_cpu(*values, nbytes: int):
  """``values`` behind ``lax.optimization_barrier`` on a CPU where the array computed from them
  holds ``nbytes >=`` :data:`FENCE_FROM_BYTES`; elsewhere as given.

  XLA merges equal expressions (``x - m``, ``exp(x - m)``) that a loss, a row sum and a backward
  each form, and XLA:CPU's YNNPACK fusions have one output each, so the merged value is written
  to a temporary that each fusion reads again. Behind a fence the expressions differ, and each
  fusion forms its own from ``x``: no temporary. Two fences over the same operands are merged
  too, so callers give each use its own operand list. Off a CPU, where XLA has multi-output
  fusions, nothing is fenced (GPU and TPU unmeasured)."""
  if nbytes < FENCE_FROM_BYTES:
    return values
  fenced = lambda *k: lax.optimization_barrier(k)
  return lax.platform_dependent(*values, cpu=fenced, default=lambda *k: k)


def _unrolled(x, axis: int, combine):
  acc = lax.slice_in_dim(x, 0, 1, axis=axis)
  for j in range(1, x.shape[axis]):
    acc = combine(acc, lax.slice_in_dim(x, j, j + 1, axis=axis))
  return acc


def _dot_sum(x, axis: int):
  """The row sum as a matrix-vector product with ones: XLA:CPU runs it with its own dot emitter
  (YNNPACK takes no matrix-vector dots) and never fuses it into a consumer."""
  moved = jnp.moveaxis(x, axis, -1)
  out = jnp.matmul(moved, jnp.ones((x.shape[axis], 1), x.dtype), precision=lax.Precision.HIGHEST)
  return jnp.moveaxis(out, -1, axis)


def row_max(x, axes: int | Sequence[int], where=None, *, unroll: bool = True):
  """``max`` over ``axes`` with ``keepdims``; ``-inf`` for an empty or fully masked row.

  ``unroll=False`` keeps ``jnp.max``. The softmax family passes it for a temperature other than 1:
  XLA turns ``x / T`` into ``x * (1/T)``, and an unrolled max lands in another fusion than the
  output's ``x * (1/T) - m``, which LLVM contracts into one FMA; the maximum's own entry of
  log_softmax then came out 7.6e-05, not torch's exact 0 (the grid's "large" case at T = 3).
  """
  axis = _axis(x, axes, stats=True) if unroll else None
  if where is not None:
    x = jnp.where(where, x, -jnp.inf)
  plain = lambda v: jnp.max(v, axis=axes, keepdims=True, initial=-jnp.inf)  # noqa: E731
  if axis is None:
    return plain(x)
  return lax.platform_dependent(x, cpu=lambda v: _unrolled(v, axis, jnp.maximum), default=plain)


def row_max_of(x, dtype, axes: int | Sequence[int], where=None, *, unroll: bool = True):
  """``row_max(x.astype(dtype), ...)``, taken on ``x`` in its own dtype and converted after: the
  same values (the maximum of values is one of them, and a widening conversion is exact and
  monotone), but XLA then reads a 16-bit ``x`` in each fusion that needs it instead of
  materialising its float32 copy for the max to read (log_softmax fwd+bwd, bfloat16, (1024, 8192):
  a 32 MiB float32 array written and read twice; 0.82x of jax.nn before, 1.2x after)."""
  if (jnp.dtype(x.dtype).itemsize >= jnp.dtype(dtype).itemsize
      or (unroll and _axis(x, axes, stats=True) is not None)):
    # Short rows unroll into float32 elementwise code anyway, where XLA:CPU's 16-bit max chain
    # was slower (log_softmax bfloat16 (1024, 10): 0.11 ms against 0.07 ms).
    return row_max(x.astype(dtype), axes, where, unroll=unroll)
  return row_max(x, axes, where, unroll=unroll).astype(dtype)


#: An input of at most this many elements is tiny: its whole program is a few hundred flops, and
#: XLA:CPU's PjRt client runs a program on the caller's thread only when HloCostAnalysis counts
#: fewer than 1000 flops in it; above, the call waits on a thread-pool handoff (about 10 us of a
#: 20 us call). There, what the short-row forms add in flops costs more than they save in time:
#: :func:`max_once`'s tie, a sum that XLA copies into two consumers, and :func:`row_sum`'s dot
#: (2 flops per element) into a reduction. log_softmax float32 fwd+bwd (64, 2): 1152 flops
#: (0.82-0.91x of jax.nn), 960 without the first two (1.00-1.02x), as jax.nn's; soft-target
#: cross_entropy's float32 forward (64, 2): 1024 flops (0.77-0.92x of optax), 832 without the dot
#: (1.19-1.21x) (benchmarks/NOTES.md, fifteenth and sixteenth passes).
TINY = 256


def max_once(m, log_sum, x, axes: int | Sequence[int]):
  """``m`` again, in value, but read by log_softmax's output loop as a row vector.

  On a CPU a short row's max is an unrolled chain of elementwise maxima, which XLA fuses into each
  consumer. In log_softmax's output ``(x - m) - log s`` that recomputes the chain for every
  element, and XLA:CPU's cost model then splits the loop over both threads; waking the second
  thread costs more than the loop. Returned as ``m + 0 * log s``, the max shares its consumer
  with the ``log``, which XLA does not duplicate, so the chain runs once in a kernel of its own
  and the output reads two row vectors. Measured at bfloat16 while 10 classes were still
  unrolled, median of four pairs with jax.nn in fresh instances: (1024, 10) 0.77x -> 0.89x,
  (4096, 10) 0.79x -> 0.89x, (65536, 10) 0.94x -> 1.11x (benchmarks/NOTES.md, thirteenth
  pass); not timed apart at the 8 classes and fewer where it now acts. The value is ``m``
  exactly wherever ``log s`` is finite; where it is not, the row's output is NaN or fully masked
  either way. Longer rows, :data:`TINY` inputs (whose output loop XLA never splits) and other
  platforms: ``m``.
  """
  if _axis(x, axes, stats=True) is None or x.size <= TINY:
    return m
  return lax.platform_dependent(m, log_sum, cpu=lambda m, ls: m + 0.0 * ls,
                                default=lambda m, ls: m)


def row_sum(x, axes: int | Sequence[int], *, into_reduction: bool = False, stats: bool = False,
            narrow: bool = False):
  """``sum`` over ``axes`` with ``keepdims``.

  ``narrow=True`` says that ``x`` is computed from a 16-bit input (its exponentials in float32);
  with ``into_reduction`` and rows longer than :data:`SHORT_ROW` that sum is a dot on a CPU too
  (:data:`NARROW_DOT_FROM` says why).

  Short rows on a CPU: an unrolled chain of adds, which XLA fuses into the elementwise consumers
  of the sum (softmax's division). Where the consumer is itself a reduction (a loss summed over
  the batch: ``into_reduction=True``), XLA would hand that reduction to YNNPACK, which swallows
  the adds and leaves every column's slice as a kernel of its own (cross_entropy's forward at
  (65536, 10): 3x slower than optax); there the sum is a matrix-vector product with ones, which
  XLA:CPU runs with its own dot emitter and fuses into nothing, except on a :data:`TINY` input,
  where the dot's 2 flops per element cost more (and the unrolled adds still keep the row sums
  apart from the batch sum: XLA's plain sum merges the two into one flat reduction).
  """
  axis = _axis(x, axes, stats)
  plain = lambda v: jnp.sum(v, axis=axes, keepdims=True)  # noqa: E731
  wide = _narrow_dot_axis(x, axes) if narrow and into_reduction else None
  if wide is not None:
    return lax.platform_dependent(x, cpu=lambda v: _dot_sum(v, wide), default=plain)
  one = _one_long_row(x, axes)
  if one is not None:
    return lax.platform_dependent(x, cpu=lambda v: _dot_sum(v, one), default=plain)
  if axis is None:
    return plain(x)
  # The dot counts 2 flops per element, which matters on a TINY input only.
  short = (lambda v: _dot_sum(v, axis)) if into_reduction and x.size > TINY else (
      lambda v: _unrolled(v, axis, jnp.add))
  return lax.platform_dependent(x, cpu=short, default=plain)


def total_sum(v):
  """The sum of every element of ``v`` (a loss's per-example terms).

  Off a CPU the terms are finished first: left to itself XLA merges a per-row class sum and the
  batch sum over it into one flat float32 reduction, whose order was once measured 19 ulps off on
  180 equal terms (``make fuzz``), so an optimisation barrier keeps them apart. On a CPU that
  barrier costs 5x: XLA:CPU drops it after its algebraic passes and hands the nested pair of
  reductions to one YNNPACK fusion that ran 5x slower than the flat sum (soft-target
  cross_entropy's forward at (65536, 128): 35 ms against optax's 7 ms), while YNNPACK's flat sum
  is accurate (that fuzz example: 1 ulp from torch; 3e-8 from float64 over 8M terms). So on a
  CPU the sum is left to XLA, as jax.nn and optax leave it.
  """
  barrier = lambda u: jnp.sum(lax.optimization_barrier(u))
  return lax.platform_dependent(v, cpu=jnp.sum, default=barrier)


#: Rows of fewer classes than this fit one XLA:GPU Triton fusion per pass of a softmax-shaped
#: program (measured on an H200, jax 0.11.2: 8192 did, 16384 and 32768 did not). Where a row fits,
#: each pass takes its own row statistics inside its one kernel.
GPU_APART_FROM = 16384


def rebuilt_apart(kept, classes: int, rebuild):
  """A 16-bit input and its row statistics ``(x, *stats)``, kept by a forward for a backward that
  rebuilds float32 values from them, as that backward receives them: on a CUDA GPU below
  :data:`GPU_APART_FROM` classes, ``stats`` recomputed by ``rebuild(x)`` from ``x`` behind
  ``lax.optimization_barrier``; elsewhere as kept.

  In a fwd+bwd program the forward's row sum then has one user. Used by both passes, XLA:GPU
  computed it in a kernel of its own that reads ``x`` once more, before the two one-block
  fusions (three kernels where jax.nn's and optax's programs are two): log_softmax bfloat16
  (4096, 8192) 0.82x of jax.nn, and rebuilt apart 0.97x; (16384, 4096) 0.75x, then 1.06x. From
  32768 classes XLA splits a row over several kernels and the fence cost (0.73-0.87x where the
  shared sum was at parity); at 16384 the two measured the same (0.77-0.81x). A CPU keeps the
  shared sums: XLA:CPU has no one-block fusion for the rebuilt sum to join, so it would be a
  further pass of ``exp``, the half of a rebuilt backward's time there (benchmarks/NOTES.md, ninth
  pass). ROCm and TPU are unmeasured. benchmarks/NOTES.md, fourth GPU session;
  ``benchmarks/log_softmax_apart_ab.py``, ``benchmarks/gpu_apart_ab.py``.
  """
  plain = lambda *k: k

  def fenced(x, *stats):
    (x,) = lax.optimization_barrier((x,))
    return (x, *rebuild(x))

  return lax.platform_dependent(*kept, cuda=fenced if classes < GPU_APART_FROM else plain,
                                default=plain)


#: Below this many rows XLA:CPU (jax 0.10) runs a rebuilt 16-bit backward's output (its ``exp``
#: and rounding) as a loop fusion of its own, after a YNNPACK row sum; from here on it fuses the
#: sum and the output into one YNNPACK fusion. Measured at 1024 classes: (4095, 1024) is a loop,
#: (4096, 1024) one fusion (``tests/core/test_rows.py`` checks both). The same boundary decides
#: where XLA merges softmax's rebuilt ``y`` with the forward's (family.CPU_APART_BELOW_ROWS).
CPU_LOOP_BELOW_ROWS = 4096


def rebuilt_output_loop(e, axes: int | Sequence[int]) -> bool:
  """Whether a rebuilt backward's output (``e``, of the input's shape) is a loop fusion of its own
  on a CPU, for :func:`round_once`: one class axis, the last, and fewer rows than
  :data:`CPU_LOOP_BELOW_ROWS`. Other layouts are unmeasured and keep XLA's own rounding."""
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return (len(axes) == 1 and axes[0] % e.ndim == e.ndim - 1 and e.shape[-1] > 0
          and e.size // e.shape[-1] < CPU_LOOP_BELOW_ROWS)


#: The smallest output that :func:`round_once`'s integer rounding is used for. Its loop has more
#: operations per element, and XLA:CPU splits it over both threads at smaller sizes, where the
#: second thread's wake-up costs more than the loop: cross_entropy's bfloat16 backward at
#: (64, 128) took 0.09 ms against 0.03 ms, (64, 1024) and (1, 32768) 0.8x of XLA's rounding.
#: From 2^17 elements it gained or tied, but for one cell: peer / ours, 3 rounds, nll_loss
#: (1024, 128) 2.35-2.37 against 1.92-1.99, (128, 1024) 1.95-2.18 against 1.38-1.90;
#: cross_entropy (128, 1024) 1.68-1.94 against 1.73-1.80, and (1024, 128) 1.62-1.72 against
#: 1.75-1.94 (1.88-2.23 against 1.77-1.92 in an earlier run). The same band as nll_loss's
#: scatter (losses._SCATTER_BAND).
ROUND_BITS_FROM = 2**17


def _bfloat16_bits(y):
  """float32 ``y`` rounded to bfloat16 to nearest even by integer arithmetic on its bits: the
  result of ``y.astype(bfloat16)`` bit for bit (a NaN keeps its sign and becomes XLA's quiet NaN).
  """
  b = lax.bitcast_convert_type(y, jnp.uint32)
  nearest = b + (jnp.uint32(0x7FFF) + ((b >> 16) & jnp.uint32(1)))
  quiet_nan = (b & jnp.uint32(0xFF800000)) | jnp.uint32(0x400000)
  b = jnp.where(jnp.isnan(y), quiet_nan, nearest)
  return lax.bitcast_convert_type((b >> 16).astype(jnp.uint16), jnp.bfloat16)


def round_once(y, dtype, *, own_loop: bool):
  """``y.astype(dtype)``: a float32 result rounded once into its output dtype.

  ``own_loop``: the caller knows that on a CPU the rounding lands in an XLA loop fusion, not a
  YNNPACK one. There, into bfloat16, the rounding is written as integer operations on the bits,
  with the same result. XLA:CPU's own conversion makes LLVM vectorise such a loop 8 wide; the
  integer form, 16 wide (AVX-512 host of 2026-11-27, jax 0.10.2: ``exp`` and rounding of
  (64, 32768) 1.1 ms -> 0.8 ms; cross_entropy's bfloat16 backward 2x faster;
  benchmarks/NOTES.md, fourteenth pass). Inside a YNNPACK fusion the integer operations are not
  taken, and split it in two (2x slower), so callers pass ``own_loop=False`` wherever XLA may
  form one. Other platforms, dtypes and ``own_loop=False``: ``astype``.
  """
  dtype = jnp.dtype(dtype)
  if not own_loop or dtype != jnp.bfloat16 or y.dtype != jnp.float32:
    return y.astype(dtype)
  return lax.platform_dependent(y, cpu=_bfloat16_bits, default=lambda v: v.astype(dtype))
