"""Which implementation runs an op: resolved once per call, before any custom VJP.

Users pass ``implementation=None | "xla" | "pallas"``; :func:`resolve` turns that, the call's
static facts (:class:`KernelCall`) and the platform rules into a :class:`Backend`. Each op then
takes the ``custom_vjp`` written for that backend, so no gradient rule or scan body ever branches
on the backend, and each rule keeps one residual structure.

* ``None`` takes the Pallas kernels only where the kernel default table
  (:mod:`jaxsoftmax._src.kernels.defaults`) has an entry for this device kind, JAX version, op,
  dtype and row length, recorded from a run on that hardware, and the kernels cover the call
  (:func:`unsupported` is None) and the platform's rule agrees; XLA otherwise (always on a CPU);
* ``"xla"``: the XLA formulation, on every platform;
* ``"pallas"``: the kernels, or a ``ValueError`` saying why they cannot take the call. On a CPU
  they run in Pallas' interpreter (slow, exact: that is how CI tests them).

:func:`prefer` changes what ``None`` means within a block (``jaxsoftmax parity --implementation``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
from typing import Literal

import jax
import jax.numpy as jnp

from jaxsoftmax._src.kernels import defaults, gpu

__all__ = ["Backend", "Implementation", "IMPLEMENTATIONS", "KernelCall", "check", "prefer",
           "resolve", "unsupported", "GPU_MIN_ROWS_TWO_PASS"]

Implementation = Literal["xla", "pallas"] | None
IMPLEMENTATIONS = (None, "xla", "pallas")
KERNEL_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))


class Backend(enum.Enum):
  """What an op runs, once resolved."""

  XLA = "xla"
  #: The kernels of the platform the program is lowered for (Triton on cuda/rocm, Mosaic on tpu);
  #: lowered for a CPU, the XLA reference formulation of the same kernel contract.
  PALLAS = "pallas"
  #: As PALLAS, but on a CPU through Pallas' interpreter: ``implementation="pallas"`` forced there.
  PALLAS_INTERPRET = "pallas-interpret"

  @property
  def is_kernel(self) -> bool:
    return self is not Backend.XLA


@dataclasses.dataclass(frozen=True)
class KernelCall:
  """The static facts about one call that decide whether the kernels can take it.

  Attributes:
    op: the op's name, for messages.
    dtype: the input's dtype.
    last_axis: the reduction runs over the last axis only.
    masked: a ``where=`` mask is given.
    empty: the rows have no elements.
    rows: the number of rows the kernel would see at once.
    n: the row length (classes).
    other: any further reason the kernels cannot take it (e.g. probability targets), or None.
  """

  op: str
  dtype: jnp.dtype
  last_axis: bool
  rows: int
  n: int
  masked: bool = False
  empty: bool = False
  other: str | None = None


_PREFERRED: contextvars.ContextVar[Implementation] = contextvars.ContextVar(
    "jaxsoftmax_preferred_implementation", default=None)


def check(implementation, op: str) -> Implementation:
  """``implementation`` itself, or a ValueError naming the op and the accepted values."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"{op}: implementation must be None, 'xla' or 'pallas'; got "
                     f"{implementation!r}.")
  return implementation


@contextlib.contextmanager
def prefer(implementation: Implementation):
  """Within the block, ``implementation=None`` means ``implementation`` wherever the kernels
  apply (calls they cannot take still use XLA)."""
  token = _PREFERRED.set(check(implementation, "prefer"))
  try:
    yield
  finally:
    _PREFERRED.reset(token)


def unsupported(call: KernelCall) -> str | None:
  """Why the kernels cannot take ``call`` (None when they can)."""
  if jnp.dtype(call.dtype) not in KERNEL_DTYPES:
    return f"covers float16, bfloat16 and float32; got {jnp.dtype(call.dtype)}"
  if not call.last_axis:
    return "reduces over the last axis only (move the class axis last, or use 'xla')"
  if call.masked:
    return "does not take a where= mask"
  if call.empty:
    return "needs non-empty rows"
  return call.other


# On a GPU, the default leaves long rows to XLA when there are few of them: the two-pass kernel
# gives each row one program, so a handful of very long rows would stream through a handful of
# SMs, where XLA splits the reduction itself (a prediction, to be timed on a GPU:
# benchmarks/NOTES.md). A TPU core walks its grid in sequence, so the rule has no reason there.
GPU_MIN_ROWS_TWO_PASS = 512


def _platform_prefers_kernels(platform: str, call: KernelCall) -> bool:
  if platform == "gpu":
    return call.n <= gpu.ONE_PASS_MAX or call.rows >= GPU_MIN_ROWS_TWO_PASS
  return platform == "tpu"


def _device_kind() -> str:
  """The default backend's device kind (e.g. ``NVIDIA H200``), the table's first key."""
  return jax.devices()[0].device_kind


def _measured_faster(call: KernelCall) -> bool:
  """The kernel default table says the kernels win for this call on this device."""
  return defaults.prefers_kernels(_device_kind(), jax.__version__, call.op, call.dtype, call.n)


def resolve(implementation: Implementation, call: KernelCall) -> Backend:
  """The backend for ``call``; raises ValueError when ``"pallas"`` is forced on a call the
  kernels cannot take."""
  check(implementation, call.op)
  if implementation == "xla":
    return Backend.XLA
  reason = unsupported(call)
  if implementation == "pallas":
    if reason is not None:
      raise ValueError(f"{call.op}: implementation='pallas' {reason}.")
    return Backend.PALLAS_INTERPRET
  if reason is not None:
    return Backend.XLA
  preferred = _PREFERRED.get()
  if preferred is not None:
    return Backend.XLA if preferred == "xla" else Backend.PALLAS_INTERPRET
  platform = jax.default_backend()
  if platform != "cpu" and _platform_prefers_kernels(platform, call) and _measured_faster(call):
    return Backend.PALLAS
  return Backend.XLA
