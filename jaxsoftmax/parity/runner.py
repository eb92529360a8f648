"""Running a parity case: jaxsoftmax on a JAX platform beside torch, values and gradients compared.

Reference policy: on the CPU platform, torch on CPU; on GPU/TPU, torch on CUDA where it exists,
otherwise torch on CPU in float64. float32/float64 cases run torch in the same dtype. float16 and
bfloat16 cases run torch in float32 on the same half-precision inputs and cotangents and round its
results once to the half dtype: that is what jaxsoftmax (and torch's kernels by their accumulate-in-
float32 design) promise, whereas torch's CPU half kernels round intermediates
(``parity_tests/test_half.py``; figures in benchmarks/NOTES.md).
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import numpy as np

from jaxsoftmax._src.copies import jax_copy, torch_copy
from jaxsoftmax.parity.compare import Comparison, compare
from jaxsoftmax.parity.grid import Case, make_inputs, result_dtype, rng_for, storage_dtype
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


def _cotangent(case: Case, shape) -> np.ndarray:
  rng = rng_for(case.id, "cotangent")
  return rng.standard_normal(shape).astype(storage_dtype(case.dtype))


def _to_torch(value: np.ndarray, device: str, dtype: str):
  """A copy on torch's side: an in-place torch op can never reach the JAX side's inputs."""
  torch = torch_module()
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
  diff = [k for k in op.differentiable
          if k in inputs and np.issubdtype(inputs[k].dtype, np.floating)]
  try:
    # float32 matmuls (linear_cross_entropy) at full precision on both sides: GPUs otherwise use
    # TF32 (10-bit mantissa), which no float32 tolerance would survive.
    torch_module().backends.cuda.matmul.allow_tf32 = False
    torch_module().backends.cudnn.allow_tf32 = False
    with _x64(case.dtype), jax.default_matmul_precision("highest"):
      device = device_for(platform)
      arrays = {k: jax_copy(v, device=device) for k, v in inputs.items()}

      def fn(*diff_values):
        return op.jax_fn({**arrays, **dict(zip(diff, diff_values))}, case.options)

      out, vjp = jax.vjp(fn, *[arrays[k] for k in diff])
      cot = _cotangent(case, out.shape)
      grads = vjp(jax.device_put(cot, device))
      out = np.asarray(out)
      grads = [np.asarray(g) for g in grads]
  except Exception as e:  # noqa: BLE001 - any failure is a reportable mismatch, not a crash
    result.error = f"jaxsoftmax raised {type(e).__name__}: {e}"
    return result
  expected_dtype = result_dtype(case.dtype)
  if out.dtype.name != expected_dtype:
    result.comparisons.append(Comparison(
        "forward dtype", False, problem=f"dtype {out.dtype.name}, expected {expected_dtype}"))
  torch = torch_module()
  tensors = {k: _to_torch(v, torch_device, torch_dtype) for k, v in inputs.items()}
  for k in diff:
    tensors[k].requires_grad_(True)
  try:
    t_out = op.torch_fn(tensors, case.options)
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

  result.comparisons.append(compare(out, host(t_out, out), expected_dtype, "forward"))
  for k, g, tg in zip(diff, grads, t_grads):
    result.comparisons.append(compare(g, host(tg, g), expected_dtype, f"grad[{k}]"))
  return result
