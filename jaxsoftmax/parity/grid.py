"""The parity grid: the cases (op, dtype, shape, options, values) and their inputs.

Each case draws its inputs from a generator seeded by the case itself, so a case is reproducible
alone. Dtype settings: the four dtypes, plus "float64-x64off" (float64 NumPy inputs with
jax_enable_x64 off: JAX computes and returns float32, compared with torch float32).
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from collections.abc import Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsoftmax.parity.ops import OPS

__all__ = ["DTYPES", "Case", "cases", "make_inputs", "result_dtype", "storage_dtype", "rng_for"]

# The dtype settings of the grid. "float64-x64off" passes float64 NumPy inputs with jax_enable_x64
# off: JAX computes (and returns) float32, so it is compared with torch float32.
DTYPES = ("float16", "bfloat16", "float32", "float64", "float64-x64off")


def result_dtype(setting: str) -> str:
  return "float32" if setting == "float64-x64off" else setting


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
  def options(self) -> dict:
    """The op's options (``dim``, ``reduction``, ...) as a dict."""
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
  # z-loss and soft-cap against torch composed from its own ops; every reduction, with class
  # weight x ignore_index x label smoothing, and the returned lse.
  combos = itertools.product((False, True), (None, 2), (0.0, 0.25), ("mean", "sum", "none"))
  for i, (weighted, ignore, smoothing, reduction) in enumerate(combos):
    if dtype != "float32" and i % 4:
      continue  # every combination in float32; a quarter of them (each reduction) in the others
    kw = dict(reduction=reduction, label_smoothing=smoothing, targets="index", weighted=weighted,
              z_loss=0.01, softcap=3.0)
    if ignore is not None:
      kw["ignore_index"] = ignore
    yield Case("cross_entropy[llm]", dtype, (5, 7), _params(**kw))
  for targets, shape in (("probs", (5, 7)), ("index", (3, 4, 2))):
    yield Case("cross_entropy[llm]", dtype, shape, _params(
        reduction="mean", label_smoothing=0.1, targets=targets, weighted=True, z_loss=0.01,
        softcap=3.0))
  yield Case("cross_entropy[llm]", dtype, (5, 7), _params(
      reduction="none", targets="index", weighted=False, softcap=3.0, out="lse"))
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
  llm = itertools.product((False, True), (None, 2), (0.0, 0.2), ("mean", "sum", "none"))
  for i, (weighted, ignore, smoothing, reduction) in enumerate(llm):
    if dtype != "float32" and i % 5:
      continue
    kw = dict(reduction=reduction, label_smoothing=smoothing, targets="index", weighted=weighted,
              bias=True, z_loss=0.01, softcap=3.0, chunk=4)
    if ignore is not None:
      kw["ignore_index"] = ignore
    yield Case("linear_cross_entropy[llm]", dtype, (13, 6), _params(**kw))
  yield Case("linear_cross_entropy[llm]", dtype, (13, 6), _params(
      reduction="mean", targets="index", weighted=False, bias=True, softcap=3.0, chunk=4,
      out="lse"))
  yield Case("linear_cross_entropy[llm]", dtype, (13, 6), _params(
      reduction="mean", targets="index", weighted=True, bias=True, z_loss=0.01, chunk=4,
      filter_eps=0.0))  # filtering that skips nothing is exact
  for reduction in ("mean", "none"):
    yield Case("nn.LinearCrossEntropyLoss", dtype, (13, 6), _params(**{**base,
                                                                       "reduction": reduction}))


def _adaptive_cases(dtype):
  for op in ("adaptive_log_softmax_with_loss", "nn.AdaptiveLogSoftmaxWithLoss"):
    for out, head_bias in (("output", False), ("loss", True), ("log_prob", True)):
      if op.startswith("nn.") and out == "output":
        continue
      yield Case(op, dtype, (9, 8), _params(out=out, head_bias=head_bias, targets="index"))
  yield Case("adaptive_log_softmax_with_loss", dtype, (8,), _params(out="output",
                                                                   head_bias=False,
                                                                   targets="index"))


def _adaptive_inputs(case: Case, rng, store) -> dict[str, np.ndarray]:
  """x, targets over every cluster, and the module's weights in torch's layouts."""
  from jaxsoftmax.parity.ops import ASM  # noqa: PLC0415 - ops imports this module

  d, cutoffs = ASM["in_features"], ASM["cutoffs"] + (ASM["n_classes"],)
  inputs = {"x": rng.standard_normal(case.shape).astype(store)}
  target = rng.integers(0, ASM["n_classes"], case.shape[:-1])
  inputs["target"] = target.astype(np.int64)

  def uniform(*shape):
    bound = 1.0 / np.sqrt(shape[-1])
    return rng.uniform(-bound, bound, shape).astype(store)

  inputs["head.weight"] = uniform(cutoffs[0] + len(cutoffs) - 1, d)
  if case.options.get("head_bias"):
    inputs["head.bias"] = uniform(cutoffs[0] + len(cutoffs) - 1, d)[:, 0].copy()
  for i in range(len(cutoffs) - 1):
    hidden = int(d // ASM["div_value"] ** (i + 1))
    inputs[f"tail.{i}.0.weight"] = uniform(hidden, d)
    inputs[f"tail.{i}.1.weight"] = uniform(cutoffs[i + 1] - cutoffs[i], hidden)
  return inputs


def cases(ops: Iterable[str] | None = None, dtypes: Iterable[str] | None = None) -> list[Case]:
  """The parity grid: every op over shapes, dims, extreme values and option combinations."""
  dtypes = tuple(dtypes or DTYPES)
  unknown = set(dtypes) - set(DTYPES)
  if unknown:
    raise ValueError(f"cases: unknown dtypes {sorted(unknown)}; expected some of {DTYPES}")
  out = [c for d in dtypes
         for c in itertools.chain(_family_cases(d), _ce_cases(d), _lce_cases(d),
                                  _adaptive_cases(d))]
  if ops is not None:
    ops = set(ops)
    unknown = ops - set(OPS)
    if unknown:
      raise ValueError(f"cases: unknown ops {sorted(unknown)}; expected some of {sorted(OPS)}")
    out = [c for c in out if c.op in ops]
  return out


def storage_dtype(setting: str):
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


def rng_for(*key) -> np.random.Generator:
  # zlib.crc32, not hash(): str hashes are salted per process, and cases must be reproducible.
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_inputs(case: Case) -> dict[str, np.ndarray]:
  """Deterministic inputs for a case, already rounded to its dtype (shared by both frameworks)."""
  rng = rng_for(case.op, case.shape, case.params, case.values, case.seed)
  p = case.options
  store = storage_dtype(case.dtype)
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
  if "daptive" in case.op:
    return _adaptive_inputs(case, rng, store)
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
  p = case.options
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
