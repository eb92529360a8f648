"""Parity harness: run a jaxsoftmax op and its torch counterpart on the same inputs and compare.

Forward values, and input gradients for the same random cotangent, are compared with ONE tolerance
table keyed by dtype (``torch.testing.assert_close``'s defaults). NaN and +/-inf patterns must match
exactly and are reported separately from finite mismatches. The same case list drives
``parity_tests/`` and ``jaxsoftmax parity``.

Reference policy: on the CPU platform, torch on CPU; on GPU/TPU, torch on CUDA where it exists,
otherwise torch on CPU in float64. float32/float64 cases run torch in the same dtype. float16 and
bfloat16 cases run torch in float32 on the same half-precision inputs and cotangents and round its
results once to the half dtype: that is what jaxsoftmax (and torch's kernels by their accumulate-in-
float32 design) promise, whereas torch's CPU half kernels round intermediates -- its float16
log_softmax was measured up to 185 ulps from the exact result (``parity_tests/test_half.py``).

torch is imported lazily: importing this module does not need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxsoftmax
from jaxsoftmax import functional as F
from jaxsoftmax import nn as jnn
from jaxsoftmax._src import torch_compat
from jaxsoftmax._src.copies import jax_copy, torch_copy

__all__ = [
    "TOLERANCES", "DTYPES", "Tolerance", "Comparison", "Case", "CaseResult", "OPS",
    "tolerance", "compare", "assert_close", "cases", "run_case", "platforms", "device_for",
]


@dataclasses.dataclass(frozen=True)
class Tolerance:
  rtol: float
  atol: float


# torch.testing.assert_close defaults; the only tolerance table in the project.
TOLERANCES: Mapping[str, Tolerance] = {
    "float16": Tolerance(rtol=1e-3, atol=1e-5),
    "bfloat16": Tolerance(rtol=1.6e-2, atol=1e-5),
    "float32": Tolerance(rtol=1.3e-6, atol=1e-5),
    "float64": Tolerance(rtol=1e-7, atol=1e-7),
}

# The dtype settings of the grid. "float64-x64off" passes float64 NumPy inputs with jax_enable_x64
# off: JAX computes (and returns) float32, so it is compared with torch float32.
DTYPES = ("float16", "bfloat16", "float32", "float64", "float64-x64off")


def _result_dtype(setting: str) -> str:
  return "float32" if setting == "float64-x64off" else setting


def tolerance(dtype) -> Tolerance:
  """The tolerance for a dtype (name, NumPy/JAX dtype) or a grid setting."""
  name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
  return TOLERANCES[_result_dtype(name)]


# ----------------------------------------------------------------------------------------------
# Comparison


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


# ----------------------------------------------------------------------------------------------
# Ops: each pairs a jaxsoftmax call with the torch call that defines the expected result.


@dataclasses.dataclass(frozen=True)
class Op:
  name: str
  jax_fn: Callable[[dict, dict], Any]
  torch_fn: Callable[[dict, dict], Any]
  diff: tuple[str, ...] = ("x",)  # inputs whose gradients are compared


def _torch():
  import torch  # noqa: PLC0415 - lazy on purpose: the package must import without torch
  return torch


def _tF():
  return _torch().nn.functional


def _masked_ref(x, mask, dim, log):
  """torch's masking idiom, ``masked_fill(~mask, -inf)``, with masked outputs held constant.

  jaxsoftmax's ``where`` makes masked outputs constants (0, or -inf for log_softmax) that pass no
  gradient, as jax.nn does; ``torch.where`` expresses exactly that on the torch side.
  """
  torch = _torch()
  filled = x.masked_fill(~mask, float("-inf"))
  out = filled.log_softmax(dim) if log else filled.softmax(dim)
  return torch.where(mask, out, float("-inf") if log else 0.0)


def _multiaxis_ref(x, axes, log):
  """torch has no multi-axis softmax: move the axes last, flatten them, softmax, undo."""
  torch = _torch()
  axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
  rest = [i for i in range(x.ndim) if i not in axes]
  perm = rest + list(axes)
  moved = x.permute(perm)
  flat = moved.reshape(*moved.shape[:len(rest)], -1)
  out = (torch.log_softmax if log else torch.softmax)(flat, -1).reshape(moved.shape)
  return out.permute([perm.index(i) for i in range(x.ndim)])


def _ce_kwargs(p):
  kw = {"reduction": p.get("reduction", "mean"), "label_smoothing": p.get("label_smoothing", 0.0)}
  if "ignore_index" in p:
    kw["ignore_index"] = p["ignore_index"]
  return kw


def _gumbel_torch(t, p):
  # torch.nn.functional.gumbel_softmax's algorithm, with the noise given instead of drawn.
  torch = _torch()
  y_soft = ((t["x"] + t["noise"]) / p["tau"]).softmax(p["dim"])
  if not p["hard"]:
    return y_soft
  index = y_soft.max(p["dim"], keepdim=True)[1]
  y_hard = torch.zeros_like(t["x"]).scatter_(p["dim"], index, 1.0)
  return y_hard - y_soft.detach() + y_soft


def _lce_kwargs(p):
  kw = _ce_kwargs(p)
  if "ignore_index" not in p and p.get("targets", "index") == "index":
    kw["ignore_index"] = None  # linear_cross_entropy's own default (-100 for indices)
  return kw


def _torch_lce(t, p):
  """torch's linear_cross_entropy; on torch older than 2.13, which lacks it, its documented
  equivalent ``cross_entropy(linear(input, W, b), target)``."""
  tF = _tF()
  kw = _lce_kwargs(p)
  fn = getattr(tF, "linear_cross_entropy", None)
  if fn is not None:
    return fn(t["x"], t["lw"], t["target"], linear_bias=t.get("bias"), weight=t.get("weight"), **kw)
  w = t["lw"]
  logits = t["x"] @ w.reshape(-1, w.shape[-1]).T
  if "bias" in t:
    logits = logits + t["bias"].reshape(-1)
  logits = logits.reshape(t["x"].shape[:-1] + w.shape[:-1])
  kw["ignore_index"] = -100 if kw.get("ignore_index") is None else kw["ignore_index"]
  return tF.cross_entropy(logits, t["target"], weight=t.get("weight"), **kw)


def _torch_lce_module(t, p):
  """torch.nn.LinearCrossEntropyLoss run with the case's weights (functional_call keeps them
  differentiable)."""
  torch = _torch()
  if not hasattr(torch.nn, "LinearCrossEntropyLoss"):  # torch < 2.13: the module's definition
    return _torch_lce(t, p)
  v, d = t["lw"].shape
  module = torch.nn.LinearCrossEntropyLoss(d, v, bias="bias" in t, weight=t.get("weight"),
                                           **_lce_kwargs(p)).to(t["lw"].device, t["lw"].dtype)
  params = {"linear.weight": t["lw"]} | ({"linear.bias": t["bias"]} if "bias" in t else {})
  return torch.func.functional_call(module, params, (t["x"], t["target"]))


def _jax_lce_module(a, p):
  v, d = a["lw"].shape
  module = jnn.LinearCrossEntropyLoss(d, v, bias="bias" in a, weight=a.get("weight"),
                                      rngs=nnx.Rngs(0), **_lce_kwargs(p))
  module.linear.kernel = nnx.Param(a["lw"].T)  # NNX kernel = torch's Linear.weight transposed
  if "bias" in a:
    module.linear.bias = nnx.Param(a["bias"])
  return module(a["x"], a["target"])


OPS: dict[str, Op] = {op.name: op for op in [
    Op("softmax", lambda a, p: F.softmax(a["x"], p["dim"]), lambda t, p: _tF().softmax(t["x"], p["dim"])),
    Op("log_softmax", lambda a, p: F.log_softmax(a["x"], p["dim"]),
       lambda t, p: _tF().log_softmax(t["x"], p["dim"])),
    Op("softmin", lambda a, p: F.softmin(a["x"], p["dim"]), lambda t, p: _tF().softmin(t["x"], p["dim"])),
    Op("softmax[temperature]",
       lambda a, p: jaxsoftmax.softmax(a["x"], p["dim"], temperature=(
           jnp.asarray(p["T"]) if p.get("traced") else p["T"])),
       lambda t, p: (t["x"] / p["T"]).softmax(p["dim"])),
    Op("log_softmax[temperature]",
       lambda a, p: jaxsoftmax.log_softmax(a["x"], p["dim"], temperature=(
           jnp.asarray(p["T"]) if p.get("traced") else p["T"])),
       lambda t, p: (t["x"] / p["T"]).log_softmax(p["dim"])),
    Op("softmax[where]", lambda a, p: jaxsoftmax.softmax(a["x"], p["dim"], where=a["mask"]),
       lambda t, p: _masked_ref(t["x"], t["mask"], p["dim"], log=False)),
    Op("log_softmax[where]", lambda a, p: jaxsoftmax.log_softmax(a["x"], p["dim"], where=a["mask"]),
       lambda t, p: _masked_ref(t["x"], t["mask"], p["dim"], log=True)),
    Op("softmin[where]", lambda a, p: jaxsoftmax.softmin(a["x"], p["dim"], where=a["mask"]),
       lambda t, p: _masked_ref(-t["x"], t["mask"], p["dim"], log=False)),
    Op("softmax[axes]", lambda a, p: jaxsoftmax.softmax(a["x"], p["axes"]),
       lambda t, p: _multiaxis_ref(t["x"], p["axes"], log=False)),
    Op("log_softmax[axes]", lambda a, p: jaxsoftmax.log_softmax(a["x"], p["axes"]),
       lambda t, p: _multiaxis_ref(t["x"], p["axes"], log=True)),
    Op("cross_entropy",
       lambda a, p: F.cross_entropy(a["x"], a["target"], weight=a.get("weight"), **_ce_kwargs(p)),
       lambda t, p: _tF().cross_entropy(t["x"], t["target"], weight=t.get("weight"), **_ce_kwargs(p)),
       diff=("x", "target")),
    Op("cross_entropy[axis=-1]",  # the core API: classes last, JAX-style
       lambda a, p: jaxsoftmax.cross_entropy(
           a["x"], a["target"], weight=a.get("weight"), ignore_index=p.get("ignore_index"),
           label_smoothing=p.get("label_smoothing", 0.0), reduction=p.get("reduction", "mean")),
       lambda t, p: _tF().cross_entropy(
           t["x"].movedim(-1, 1), t["target"] if t["target"].dtype == _torch().int64
           else t["target"].movedim(-1, 1), weight=t.get("weight"), **_ce_kwargs(p)),
       diff=("x", "target")),
    Op("nll_loss",
       lambda a, p: F.nll_loss(a["x"], a["target"], weight=a.get("weight"), **{
           k: v for k, v in _ce_kwargs(p).items() if k != "label_smoothing"}),
       lambda t, p: _tF().nll_loss(t["x"], t["target"], weight=t.get("weight"), **{
           k: v for k, v in _ce_kwargs(p).items() if k != "label_smoothing"})),
    Op("gumbel_softmax",
       lambda a, p: torch_compat.gumbel_softmax_from_noise(a["x"], a["noise"], p["tau"], p["hard"], p["dim"]),
       _gumbel_torch),
    Op("nn.Softmax", lambda a, p: jnn.Softmax(p["dim"])(a["x"]),
       lambda t, p: _torch().nn.Softmax(p["dim"])(t["x"])),
    Op("nn.LogSoftmax", lambda a, p: jnn.LogSoftmax(p["dim"])(a["x"]),
       lambda t, p: _torch().nn.LogSoftmax(p["dim"])(t["x"])),
    Op("nn.Softmin", lambda a, p: jnn.Softmin(p["dim"])(a["x"]),
       lambda t, p: _torch().nn.Softmin(p["dim"])(t["x"])),
    Op("nn.Softmax2d", lambda a, p: jnn.Softmax2d()(a["x"]),
       lambda t, p: _torch().nn.Softmax2d()(t["x"])),
    Op("nn.CrossEntropyLoss",
       lambda a, p: jnn.CrossEntropyLoss(weight=a.get("weight"), **_ce_kwargs(p))(a["x"], a["target"]),
       lambda t, p: _torch().nn.CrossEntropyLoss(weight=t.get("weight"), **_ce_kwargs(p))(
           t["x"], t["target"]),
       diff=("x", "target")),
    Op("linear_cross_entropy",
       lambda a, p: F.linear_cross_entropy(a["x"], a["lw"], a["target"], linear_bias=a.get("bias"),
                                           weight=a.get("weight"), **_lce_kwargs(p)),
       _torch_lce, diff=("x", "lw", "bias", "target")),
    Op("linear_cross_entropy[core]",  # the JAX API: a (D, V) kernel, chunked with a ragged end
       lambda a, p: jaxsoftmax.linear_cross_entropy(
           a["x"], a["lw"].T, a["target"], bias=a.get("bias"), weight=a.get("weight"),
           ignore_index=p.get("ignore_index"), label_smoothing=p.get("label_smoothing", 0.0),
           reduction=p.get("reduction", "mean"), chunk_size=p.get("chunk")),
       _torch_lce, diff=("x", "lw", "bias")),
    Op("nn.LinearCrossEntropyLoss", _jax_lce_module, _torch_lce_module,
       diff=("x", "lw", "bias")),
    Op("nn.NLLLoss",
       lambda a, p: jnn.NLLLoss(weight=a.get("weight"), reduction=p["reduction"])(a["x"], a["target"]),
       lambda t, p: _torch().nn.NLLLoss(weight=t.get("weight"), reduction=p["reduction"])(
           t["x"], t["target"])),
]}


# ----------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
  """One comparison: an op on inputs drawn from ``values`` at ``shape``, in ``dtype``."""

  op: str
  dtype: str
  shape: tuple[int, ...]
  params: tuple[tuple[str, Any], ...] = ()
  values: str = "normal"
  seed: int = 0

  @property
  def p(self) -> dict:
    return dict(self.params)

  @property
  def id(self) -> str:
    params = ",".join(f"{k}={v}" for k, v in self.params) or "-"
    shape = "x".join(map(str, self.shape)) or "scalar"
    return f"{self.op}-{self.dtype}-{shape}-{params}-{self.values}"


def _params(**kw) -> tuple[tuple[str, Any], ...]:
  return tuple(sorted(kw.items()))


FAMILY_SHAPES = [(), (7,), (0,), (3, 5), (4, 0), (2, 3, 5), (2, 3, 4, 5), (2, 423)]
# "large_ties": 1e4 + small integers, ties at a large magnitude (the fuzzer found the log-sum-exp
# rounded at that magnitude, see parity_tests/test_properties.py).
EXTREMES = ("large", "large_ties", "neg_inf", "pos_inf", "nan")


def _family_cases(dtype):
  for op in ("softmax", "log_softmax", "softmin"):
    for shape in FAMILY_SHAPES:
      n = max(len(shape), 1)
      for dim in range(-n, n):
        yield Case(op, dtype, shape, _params(dim=dim))
    extremes = EXTREMES + (("fp16_max",) if dtype == "float16" else ())
    for values, dim in itertools.product(extremes, (0, -1)):
      yield Case(op, dtype, (4, 7), _params(dim=dim), values)
  for op in ("softmax[temperature]", "log_softmax[temperature]"):
    for temperature, traced in ((0.5, False), (2.0, False), (0.7, True)):
      yield Case(op, dtype, (4, 7), _params(dim=-1, T=temperature, traced=traced))
    yield Case(op, dtype, (2, 3, 5), _params(dim=1, T=3.0, traced=False), "large")
  for op in ("softmax[where]", "log_softmax[where]", "softmin[where]"):
    for shape, dim in (((4, 7), -1), ((2, 3, 5), 1), ((6, 4), 0)):
      yield Case(op, dtype, shape, _params(dim=dim))
    yield Case(op, dtype, (4, 7), _params(dim=-1), "neg_inf")
  for op in ("softmax[axes]", "log_softmax[axes]"):
    for axes in ((1, 3), (0, -1), None):
      yield Case(op, dtype, (2, 3, 4, 5), _params(axes=axes))
  for op in ("nn.Softmax", "nn.LogSoftmax", "nn.Softmin"):
    for shape, dim in (((3, 5), 1), ((2, 3, 4), -1), ((2, 3, 4), 0)):
      yield Case(op, dtype, shape, _params(dim=dim))
  for shape in ((2, 3, 4, 5), (3, 4, 5)):
    yield Case("nn.Softmax2d", dtype, shape)
  for tau, hard in itertools.product((0.5, 1.0), (False, True)):
    yield Case("gumbel_softmax", dtype, (4, 7), _params(dim=-1, tau=tau, hard=hard))


CE_LAYOUTS = {"2d": (5, 7), "kdim": (3, 4, 2, 5), "1d": (6,)}


def _ce_cases(dtype):
  for layout, shape in CE_LAYOUTS.items():
    for weighted, ignore, smoothing, reduction, targets in itertools.product(
        (False, True), (None, 2), (0.0, 0.25), ("mean", "sum", "none"), ("index", "probs")):
      if targets == "probs" and ignore is not None:
        continue  # torch: ignore_index is not supported for probability targets
      if layout == "1d" and (ignore is not None or weighted):
        continue  # a single example: the combinations above add nothing
      kw = dict(reduction=reduction, label_smoothing=smoothing, targets=targets, weighted=weighted)
      if ignore is not None:
        kw["ignore_index"] = ignore
      yield Case("cross_entropy", dtype, shape, _params(**kw))
  edge = dict(reduction="mean", label_smoothing=0.0, targets="index", weighted=False)
  for values in ("large", "large_ties", "neg_inf", "all_ignored"):
    for reduction in ("mean", "sum", "none"):
      kw = {**edge, "reduction": reduction, "label_smoothing": 0.1}
      if values == "all_ignored":
        kw["ignore_index"] = 2
      yield Case("cross_entropy", dtype, (5, 7), _params(**kw), values)
  for reduction, targets in itertools.product(("mean", "sum", "none"), ("index", "probs")):
    yield Case("cross_entropy", dtype, (0, 7), _params(**{**edge, "reduction": reduction,
                                                         "targets": targets}))
  for shape, targets, weighted in (((5, 7), "index", True), ((2, 3, 7), "probs", True),
                                   ((2, 3, 7), "index", False)):
    for values in ("normal", "large_ties"):
      yield Case("cross_entropy[axis=-1]", dtype, shape, _params(
          reduction="mean", label_smoothing=0.1, targets=targets, weighted=weighted,
          **({"ignore_index": 2} if targets == "index" else {})), values)
  for layout in ("2d", "kdim"):
    for weighted, ignore, reduction in itertools.product((False, True), (None, 2),
                                                         ("mean", "sum", "none")):
      kw = dict(reduction=reduction, targets="index", weighted=weighted)
      if ignore is not None:
        kw["ignore_index"] = ignore
      yield Case("nll_loss", dtype, CE_LAYOUTS[layout], _params(**kw))
  for reduction, weighted in (("mean", True), ("none", False)):
    yield Case("nn.CrossEntropyLoss", dtype, (5, 7), _params(
        reduction=reduction, label_smoothing=0.1, targets="index", weighted=weighted))
    yield Case("nn.NLLLoss", dtype, (5, 7), _params(reduction=reduction, targets="index",
                                                    weighted=weighted))


LCE_CLASSES = 11  # x is (N, D) = case.shape; the linear weight is (LCE_CLASSES, D) (torch layout)


def _lce_cases(dtype):
  combos = itertools.product((False, True), (False, True), (None, 2), (0.0, 0.2),
                             ("mean", "sum", "none"))
  for i, (bias, weighted, ignore, smoothing, reduction) in enumerate(combos):
    if dtype != "float32" and i % 6:
      continue  # every combination in float32; a spread of them in the other dtypes
    kw = dict(reduction=reduction, label_smoothing=smoothing, targets="index", weighted=weighted,
              bias=bias)
    if ignore is not None:
      kw["ignore_index"] = ignore
    yield Case("linear_cross_entropy", dtype, (13, 6), _params(**kw))
    if i % 4 == 0:
      yield Case("linear_cross_entropy[core]", dtype, (13, 6), _params(chunk=(None, 4, 5)[i % 3],
                                                                       **kw))
  base = dict(reduction="mean", label_smoothing=0.1, targets="index", weighted=True, bias=True)
  yield Case("linear_cross_entropy", dtype, (6,), _params(**base))  # (in_features) input
  yield Case("linear_cross_entropy", dtype, (0, 6), _params(**base))  # no rows: NaN, as torch
  yield Case("linear_cross_entropy", dtype, (5, 6), _params(**{**base, "targets": "probs"}))
  yield Case("linear_cross_entropy", dtype, (5, 6), _params(**{**base, "kdim": 3}))
  yield Case("linear_cross_entropy", dtype, (13, 6), _params(**base), "large")
  for reduction in ("mean", "none"):
    yield Case("nn.LinearCrossEntropyLoss", dtype, (13, 6), _params(**{**base,
                                                                       "reduction": reduction}))


def cases(ops: Iterable[str] | None = None, dtypes: Iterable[str] | None = None) -> list[Case]:
  """The parity grid: every op over shapes, dims, extreme values and option combinations."""
  dtypes = tuple(dtypes or DTYPES)
  unknown = set(dtypes) - set(DTYPES)
  if unknown:
    raise ValueError(f"unknown dtypes {sorted(unknown)}; expected some of {DTYPES}")
  out = [c for d in dtypes
         for c in itertools.chain(_family_cases(d), _ce_cases(d), _lce_cases(d))]
  if ops is not None:
    ops = set(ops)
    unknown = ops - set(OPS)
    if unknown:
      raise ValueError(f"unknown ops {sorted(unknown)}; expected some of {sorted(OPS)}")
    out = [c for c in out if c.op in ops]
  return out


# ----------------------------------------------------------------------------------------------
# Inputs


def _storage_dtype(setting: str):
  """The NumPy dtype inputs are stored in (bfloat16 comes from ml_dtypes via jnp)."""
  return {"float16": np.float16, "bfloat16": jnp.bfloat16, "float32": np.float32,
          "float64": np.float64, "float64-x64off": np.float64}[setting]


def _class_axis(case: Case) -> int:
  if case.op == "cross_entropy[axis=-1]":
    return len(case.shape) - 1
  return 1 if len(case.shape) >= 2 else 0


def _values(rng, shape, kind, dim):
  x = rng.standard_normal(shape) * 3.0
  if kind == "large":
    x = rng.uniform(-1e4, 1e4, shape)
  elif kind == "large_ties":
    x = 1e4 + rng.integers(-2, 3, shape).astype(np.float64)
  elif kind == "fp16_max":
    x = rng.uniform(6.0e4, 65504.0, shape) * rng.choice([-1.0, 1.0], shape)
  elif kind == "neg_inf":
    x[rng.random(shape) < 0.3] = -np.inf
    moved = np.moveaxis(x, dim, -1)
    moved[(0,) * (moved.ndim - 1)] = -np.inf  # one whole row of -inf: NaN, as torch
  elif kind == "pos_inf":
    x.flat[rng.choice(x.size, max(1, x.size // 8), replace=False)] = np.inf
  elif kind == "nan":
    x.flat[rng.choice(x.size, max(1, x.size // 8), replace=False)] = np.nan
  return x


def _rng(*key) -> np.random.Generator:
  # zlib.crc32, not hash(): str hashes are salted per process, and cases must be reproducible.
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_inputs(case: Case) -> dict[str, np.ndarray]:
  """Deterministic inputs for a case, already rounded to its dtype (shared by both frameworks)."""
  rng = _rng(case.op, case.shape, case.params, case.values, case.seed)
  p = case.p
  store = _storage_dtype(case.dtype)
  if "dim" in p:
    dim = p["dim"]
  elif case.op == "nn.Softmax2d":
    dim = -3
  elif case.op.startswith(("softmax", "log_softmax")):
    dim = -1
  else:
    dim = _class_axis(case)
  if case.op.startswith("linear_cross_entropy") or case.op == "nn.LinearCrossEntropyLoss":
    return _lce_inputs(case, rng, store)
  values = "normal" if case.values == "all_ignored" else case.values
  inputs = {"x": np.asarray(_values(rng, case.shape, values, dim if case.shape else 0)).astype(store)}
  if case.op.endswith("[where]"):
    mask = rng.random(case.shape) < 0.6
    np.moveaxis(mask, dim, -1)[..., 0] = True  # at least one valid entry per row
    inputs["mask"] = mask
  if case.op == "gumbel_softmax":
    inputs["noise"] = rng.gumbel(size=case.shape).astype(store)
  if "targets" in p:
    axis = _class_axis(case)
    num_classes = case.shape[axis]
    if p["targets"] == "probs":
      logits = rng.standard_normal(case.shape)
      e = np.exp(logits - logits.max(axis=axis, keepdims=True))
      inputs["target"] = (e / e.sum(axis=axis, keepdims=True)).astype(store)
    else:
      batch = case.shape[:axis] + case.shape[axis + 1:]
      target = rng.integers(0, num_classes, batch)
      if case.values == "all_ignored":
        target[...] = p["ignore_index"]
      elif "ignore_index" in p and target.size:
        target.flat[:: max(1, target.size // 3)] = p["ignore_index"]
      inputs["target"] = target.astype(np.int64)
      if case.values == "neg_inf" and target.size:
        # -inf logits away from the labels: finite loss without smoothing, +inf with it (as torch)
        x = np.moveaxis(inputs["x"], axis, -1)
        t = target.reshape(-1)
        flat = x.reshape(-1, num_classes)
        for row in range(flat.shape[0]):
          if np.isneginf(flat[row, t[row]]):
            flat[row, t[row]] = 0.0
        inputs["x"] = np.moveaxis(flat.reshape(x.shape), -1, axis).astype(store)
    if case.op.startswith("nll_loss") or case.op == "nn.NLLLoss":
      x = inputs["x"].astype(np.float64)
      m = x.max(axis=axis, keepdims=True)
      inputs["x"] = (x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).astype(store)
    if p.get("weighted"):
      inputs["weight"] = rng.uniform(0.2, 2.0, num_classes).astype(store)
  return inputs


def _lce_inputs(case: Case, rng, store) -> dict[str, np.ndarray]:
  """x (N, D) or (D,), a torch-layout weight (C, [K,] D), targets, and optional bias and weight."""
  p = case.p
  d = case.shape[-1]
  batch = case.shape[:-1]
  out_shape = (LCE_CLASSES,) + ((p["kdim"],) if "kdim" in p else ())
  x = rng.standard_normal(case.shape) * (300.0 if case.values == "large" else 1.0)
  inputs = {"x": x.astype(store),
            "lw": (rng.standard_normal(out_shape + (d,)) * 3 / np.sqrt(d)).astype(store)}
  if p.get("bias"):
    inputs["bias"] = rng.standard_normal(out_shape).astype(store)
  if p["targets"] == "probs":
    logits = rng.standard_normal(batch + (LCE_CLASSES,))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    inputs["target"] = (e / e.sum(axis=-1, keepdims=True)).astype(store)
  else:
    target = rng.integers(0, LCE_CLASSES, batch + out_shape[1:])
    if "ignore_index" in p and target.size:
      target.flat[:: max(1, target.size // 3)] = p["ignore_index"]
    inputs["target"] = target.astype(np.int64)
  if p.get("weighted"):
    inputs["weight"] = rng.uniform(0.2, 2.0, LCE_CLASSES).astype(store)
  return inputs


# ----------------------------------------------------------------------------------------------
# Running


def platforms() -> list[str]:
  """JAX platforms present: cpu always, gpu/tpu when JAX sees them."""
  found = []
  for name in ("cpu", "gpu", "tpu"):
    try:
      if jax.devices(name):
        found.append(name)
    except RuntimeError:
      pass
  return found


def device_for(platform: str):
  return jax.devices(platform)[0]


def _reference(platform: str, setting: str):
  """(torch device, torch compute dtype name) for the expected values."""
  dtype = _result_dtype(setting)
  if platform != "cpu" and not (platform == "gpu" and _torch().cuda.is_available()):
    return "cpu", "float64"
  device = "cpu" if platform == "cpu" else "cuda"
  return device, "float32" if dtype in ("float16", "bfloat16") else dtype


@dataclasses.dataclass
class CaseResult:
  case: Case
  platform: str
  reference: str
  comparisons: list[Comparison]
  error: str = ""

  @property
  def ok(self) -> bool:
    return not self.error and all(c.ok for c in self.comparisons)

  def report(self) -> str:
    head = f"{self.case.id} on {self.platform} (reference: torch {self.reference})"
    if self.error:
      return f"{head}: {self.error}"
    return "\n".join([head] + [c.report() for c in self.comparisons if not c.ok])


def _cotangent(case: Case, shape) -> np.ndarray:
  rng = _rng(case.id, "cotangent")
  return rng.standard_normal(shape).astype(_storage_dtype(case.dtype))


def _to_torch(value: np.ndarray, device: str, dtype: str):
  """A copy on torch's side: an in-place torch op can never reach the JAX side's inputs."""
  torch = _torch()
  if value.dtype == np.bool_:
    return torch_copy(value, device=device)
  if np.issubdtype(value.dtype, np.integer):
    return torch_copy(value, torch.int64, device)
  if dtype == "float32":
    # Exact for half-precision values; for float64 values with x64 off it is the rounding JAX does.
    value = np.asarray(value, np.float32)
  return torch_copy(np.asarray(value, np.float64), getattr(torch, dtype), device)


@contextlib.contextmanager
def _x64(setting: str):
  with jax.enable_x64(setting == "float64"):
    yield


def run_case(case: Case, platform: str = "cpu") -> CaseResult:
  """Runs one case in JAX on ``platform`` and in torch, and compares values and gradients."""
  op = OPS[case.op]
  torch_device, torch_dtype = _reference(platform, case.dtype)
  result = CaseResult(case, platform, f"{torch_device}/{torch_dtype}", [])
  inputs = make_inputs(case)
  diff = [k for k in op.diff if k in inputs and np.issubdtype(inputs[k].dtype, np.floating)]
  try:
    # float32 matmuls (linear_cross_entropy) at full precision on both sides: GPUs otherwise use
    # TF32 (10-bit mantissa), which no float32 tolerance would survive.
    _torch().backends.cuda.matmul.allow_tf32 = False
    _torch().backends.cudnn.allow_tf32 = False
    with _x64(case.dtype), jax.default_matmul_precision("highest"):
      device = device_for(platform)
      arrays = {k: jax_copy(v, device=device) for k, v in inputs.items()}

      def fn(*diff_values):
        return op.jax_fn({**arrays, **dict(zip(diff, diff_values))}, case.p)

      out, vjp = jax.vjp(fn, *[arrays[k] for k in diff])
      cot = _cotangent(case, out.shape)
      grads = vjp(jax.device_put(cot, device))
      out = np.asarray(out)
      grads = [np.asarray(g) for g in grads]
  except Exception as e:  # noqa: BLE001 - any failure is a reportable mismatch, not a crash
    result.error = f"jaxsoftmax raised {type(e).__name__}: {e}"
    return result
  expected_dtype = _result_dtype(case.dtype)
  if out.dtype.name != expected_dtype:
    result.comparisons.append(Comparison(
        "forward dtype", False, problem=f"dtype {out.dtype.name}, expected {expected_dtype}"))
  torch = _torch()
  tensors = {k: _to_torch(v, torch_device, torch_dtype) for k, v in inputs.items()}
  for k in diff:
    tensors[k].requires_grad_(True)
  try:
    t_out = op.torch_fn(tensors, case.p)
    t_grads = torch.autograd.grad(
        t_out, [tensors[k] for k in diff], _to_torch(cot, torch_device, torch_dtype),
        allow_unused=True) if diff else []
  except Exception as e:  # noqa: BLE001
    result.error = f"torch reference raised {type(e).__name__}: {e}"
    return result

  def host(t, like):
    if t is None:
      return np.zeros(like.shape)
    if torch_dtype == "float32" and expected_dtype in ("float16", "bfloat16"):
      t = t.to(getattr(torch, expected_dtype))  # round once, as the promise says
    return t.detach().to("cpu", torch.float64).numpy()

  result.comparisons.append(compare(out, host(t_out, out), case.dtype, "forward"))
  for k, g, tg in zip(diff, grads, t_grads):
    result.comparisons.append(compare(g, host(tg, g), case.dtype, f"grad[{k}]"))
  return result
