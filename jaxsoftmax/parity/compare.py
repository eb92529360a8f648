"""Comparing two arrays as ``torch.testing.assert_close`` does, with a report worth reading.

One tolerance table keyed by dtype (torch.testing's defaults): ``|a - e| <= atol + rtol |e|``,
after upcasting both sides to float64. NaN and +/-inf patterns must match exactly and are counted
apart from finite mismatches; a report names the first mismatching indices. NumPy-level: no torch
and no JAX needed (any array-like converts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = ["Tolerance", "TOLERANCES", "tolerance", "Comparison", "compare", "assert_close"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
  """``|actual - expected| <= atol + rtol * |expected|``."""

  rtol: float
  atol: float


# torch.testing.assert_close defaults; the only tolerance table in the project.
TOLERANCES: Mapping[str, Tolerance] = {
    "float16": Tolerance(rtol=1e-3, atol=1e-5),
    "bfloat16": Tolerance(rtol=1.6e-2, atol=1e-5),
    "float32": Tolerance(rtol=1.3e-6, atol=1e-5),
    "float64": Tolerance(rtol=1e-7, atol=1e-7),
}

def tolerance(dtype) -> Tolerance:
  """The tolerance for a dtype (its name, or a NumPy/JAX dtype)."""
  name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
  if name not in TOLERANCES:
    raise ValueError(f"tolerance: no tolerance for dtype {name!r}; known: {sorted(TOLERANCES)}")
  return TOLERANCES[name]


@dataclasses.dataclass
class Comparison:
  """How ``actual`` differs from ``expected``; ``ok`` is the verdict."""

  name: str
  ok: bool
  max_abs: float = 0.0
  max_rel: float = 0.0
  mismatches: int = 0
  nan_mismatches: int = 0
  inf_mismatches: int = 0
  first: list = dataclasses.field(default_factory=list)  # [(index, actual, expected)]
  problem: str = ""

  def report(self) -> str:
    if self.problem:
      return f"{self.name}: {self.problem}"
    lines = [f"{self.name}: {self.mismatches} value, {self.nan_mismatches} NaN and "
             f"{self.inf_mismatches} inf mismatches; max abs err {self.max_abs:.3g}, "
             f"max rel err {self.max_rel:.3g}"]
    lines += [f"  at {idx}: actual {a!r}, expected {e!r}" for idx, a, e in self.first]
    return "\n".join(lines)


def compare(actual, expected, dtype, name: str = "value", max_shown: int = 5) -> Comparison:
  """Compares two arrays with the tolerance of ``dtype``, after upcasting both to float64."""
  tol = tolerance(dtype)
  a = np.asarray(actual)
  e = np.asarray(expected)
  if a.shape != e.shape:
    return Comparison(name, False, problem=f"shape {a.shape} != expected {e.shape}")
  a = a.astype(np.float64)
  e = e.astype(np.float64)
  a_nan, e_nan = np.isnan(a), np.isnan(e)
  nan_bad = a_nan != e_nan
  a_inf, e_inf = np.isinf(a), np.isinf(e)
  inf_bad = (a_inf != e_inf) | (a_inf & e_inf & (np.sign(a) != np.sign(e)))
  finite = np.isfinite(a) & np.isfinite(e)
  diff = np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0))
  value_bad = finite & (diff > tol.atol + tol.rtol * np.abs(e))
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(finite & (e != 0), diff / np.abs(e), 0.0)
  bad = value_bad | nan_bad | inf_bad
  first = [(tuple(int(i) for i in idx), a[tuple(idx)].item(), e[tuple(idx)].item())
           for idx in np.argwhere(bad)[:max_shown]]
  return Comparison(
      name, not bad.any(), max_abs=float(diff.max(initial=0.0)), max_rel=float(rel.max(initial=0.0)),
      mismatches=int(value_bad.sum()), nan_mismatches=int(nan_bad.sum()),
      inf_mismatches=int(inf_bad.sum()), first=first)


def assert_close(actual, expected, dtype, name: str = "value") -> None:
  """Raises AssertionError with a mismatch report when the arrays differ beyond tolerance."""
  result = compare(actual, expected, dtype, name)
  if not result.ok:
    raise AssertionError(result.report())
