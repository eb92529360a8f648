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
  """How ``actual`` differs from ``expected``; ``ok`` is the verdict.

  ``first`` holds the first mismatching entries in index order and ``worst`` the ones furthest
  beyond tolerance, each as ``(index, actual, expected)``. With a float64 anchor (see
  :func:`jaxsoftmax.parity.compare_functions`), ``anchor_error`` and ``reference_anchor_error``
  are the largest distances of the two sides from the float64 answer.
  """

  name: str
  ok: bool
  max_abs: float = 0.0
  max_rel: float = 0.0
  mismatches: int = 0
  nan_mismatches: int = 0
  inf_mismatches: int = 0
  first: list = dataclasses.field(default_factory=list)
  problem: str = ""
  kind: str = ""
  dtype: str = ""
  rtol: float | None = None
  atol: float | None = None
  size: int = 0
  worst: list = dataclasses.field(default_factory=list)
  anchor_error: float | None = None
  reference_anchor_error: float | None = None
  note: str = ""

  @property
  def label(self) -> str:
    return f"{self.kind} {self.name}" if self.kind else self.name

  def report(self) -> str:
    if self.problem:
      return f"{self.label}: {self.problem}"
    tol = (f" (dtype {self.dtype}: rtol={self.rtol:g}, atol={self.atol:g})"
           if self.rtol is not None else "")
    lines = [f"{self.label}: {self.mismatches} of {self.size} values, {self.nan_mismatches} NaN "
             f"and {self.inf_mismatches} inf mismatches; max abs err {self.max_abs:.3g}, "
             f"max rel err {self.max_rel:.3g}{tol}"]
    if self.anchor_error is not None:
      lines.append(f"  float64 anchor: this side is {self.anchor_error:.3g} from the float64 "
                   f"answer, the reference {self.reference_anchor_error:.3g}")
    if self.note:
      lines.append(f"  {self.note}")
    shown = self.worst or self.first
    lines += [f"  at {idx}: actual {a!r}, expected {e!r}" for idx, a, e in shown]
    return "\n".join(lines)

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["first"] = [[list(i), a, e] for i, a, e in self.first]
    out["worst"] = [[list(i), a, e] for i, a, e in self.worst]
    return out


def compare(actual, expected, dtype, name: str = "value", max_shown: int = 5, *,
            tol: Tolerance | None = None, kind: str = "") -> Comparison:
  """Compares two arrays with the tolerance of ``dtype`` (or ``tol``), after upcasting both to
  float64: ``|actual - expected| <= atol + rtol |expected|`` where both are finite, and the same
  NaN and +/-inf entries."""
  tol = tol or tolerance(dtype)
  dtype = dtype if isinstance(dtype, str) else np.dtype(dtype).name
  a = np.asarray(actual)
  e = np.asarray(expected)
  if a.shape != e.shape:
    return Comparison(name, False, problem=f"shape {a.shape} != expected {e.shape}", kind=kind,
                      dtype=dtype, rtol=tol.rtol, atol=tol.atol)
  a = a.astype(np.float64)
  e = e.astype(np.float64)
  a_nan, e_nan = np.isnan(a), np.isnan(e)
  nan_bad = a_nan != e_nan
  a_inf, e_inf = np.isinf(a), np.isinf(e)
  inf_bad = (a_inf != e_inf) | (a_inf & e_inf & (np.sign(a) != np.sign(e)))
  finite = np.isfinite(a) & np.isfinite(e)
  diff = np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0))
  allowed = tol.atol + tol.rtol * np.abs(np.where(finite, e, 0.0))
  value_bad = finite & (diff > allowed)
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(finite & (e != 0), diff / np.abs(e), 0.0)
  bad = value_bad | nan_bad | inf_bad

  def entry(idx):
    idx = tuple(int(i) for i in idx)
    return idx, a[idx].item(), e[idx].item()

  first = [entry(idx) for idx in np.argwhere(bad)[:max_shown]]
  worst = []
  if bad.any():  # NaN/inf mismatches first, then the largest excess over tolerance
    excess = np.where(nan_bad | inf_bad, np.inf, np.where(value_bad, diff - allowed, -np.inf))
    order = np.argsort(-excess, axis=None, kind="stable")[:min(max_shown, int(bad.sum()))]
    worst = [entry(np.unravel_index(i, a.shape)) for i in order]
  return Comparison(
      name, not bad.any(), max_abs=float(diff.max(initial=0.0)), max_rel=float(rel.max(initial=0.0)),
      mismatches=int(value_bad.sum()), nan_mismatches=int(nan_bad.sum()),
      inf_mismatches=int(inf_bad.sum()), first=first, kind=kind, dtype=dtype, rtol=tol.rtol,
      atol=tol.atol, size=int(a.size), worst=worst)


def assert_close(actual, expected, dtype, name: str = "value") -> None:
  """Raises AssertionError with a mismatch report when the arrays differ beyond tolerance."""
  result = compare(actual, expected, dtype, name)
  if not result.ok:
    raise AssertionError(result.report())
