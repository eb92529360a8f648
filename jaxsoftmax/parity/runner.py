"""Running a parity case: jaxsoftmax on a JAX platform beside torch, values and gradients compared.

Reference policy: on the CPU platform, torch on CPU; on GPU/TPU, torch on CUDA where it exists,
otherwise torch on CPU in float64. float32/float64 cases run torch in the same dtype. float16 and
bfloat16 cases run torch in float32 on the same half-precision inputs and cotangents and round its
results once to the half dtype: that is what jaxsoftmax (and torch's kernels by their accumulate-in-
float32 design) promise, whereas torch's CPU half kernels round intermediates
(``parity_tests/test_half.py``; figures in benchmarks/NOTES.md).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxsoftmax.parity.compare import Comparison
from jaxsoftmax.parity.functions import compare_functions
from jaxsoftmax.parity.grid import Case, make_inputs, result_dtype, rng_for
from jaxsoftmax.parity.ops import OPS, torch_module

__all__ = ["platforms", "device_for", "CaseResult", "run_case"]


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
  dtype = result_dtype(setting)
  if platform != "cpu" and not (platform == "gpu" and torch_module().cuda.is_available()):
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


class _Raised(Exception):
  """An exception from one side, tagged with the side."""


def _tagged(side: str, fn):
  def call(*args):
    try:
      return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported as the case's error, not a crash
      raise _Raised(f"{side} raised {type(e).__name__}: {e}") from e
  return call


def run_case(case: Case, platform: str = "cpu") -> CaseResult:
  """Runs one case in JAX on ``platform`` and in torch through
  :func:`~jaxsoftmax.parity.compare_functions`, values and gradients compared."""
  op = OPS[case.op]
  torch_device, torch_dtype = _reference(platform, case.dtype)
  result = CaseResult(case, platform, f"{torch_device}/{torch_dtype}", [])
  inputs = make_inputs(case)
  diff = [k for k in op.differentiable
          if k in inputs and np.issubdtype(inputs[k].dtype, np.floating)]
  try:
    report = compare_functions(
        _tagged("jaxsoftmax", lambda arrays: op.jax_fn(arrays, case.options)),
        _tagged("torch reference", lambda tensors: op.torch_fn(tensors, case.options)),
        inputs, names=["inputs"], grad=[f"inputs[{k!r}]" for k in diff] or False,
        seed=rng_for(case.id, "cotangent"), jax_device=device_for(platform),
        torch_device=torch_device, torch_dtype=torch_dtype, x64=case.dtype == "float64",
        check_dtype=False, title=case.id)
  except _Raised as e:
    result.error = str(e)
    return result
  expected_dtype = result_dtype(case.dtype)
  for check in report.checks:
    if check.kind == "output" and check.dtype != expected_dtype:
      result.comparisons.append(Comparison(
          "forward dtype", False, problem=f"dtype {check.dtype}, expected {expected_dtype}"))
  result.comparisons += report.checks
  return result
