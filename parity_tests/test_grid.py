"""Every case of the parity grid, on every JAX platform present, against torch.

The grid (jaxsoftmax.parity.grid) covers each public function and module over ranks 0-4, odd and
empty shapes, every dim including negative ones, float16/bfloat16/float32/float64 with x64 on and
off, extreme values (+/-1e4, float16 near 65504, -inf masks and rows, +inf, NaN) and every
cross_entropy combination. Forward values and input gradients are compared.
"""

import pytest

from jaxsoftmax.parity import grid, runner
from parity_tests._platforms import PLATFORMS

CASES = grid.cases()


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_torch(case, platform):
  result = runner.run_case(case, platform)
  assert result.ok, result.report()


def test_grid_covers_every_public_function():
  import jaxsoftmax
  from jaxsoftmax import functional, nn

  covered = {c.op for c in CASES}
  core = {"softmax", "log_softmax", "softmin", "cross_entropy", "nll_loss"}
  # LinearCrossEntropyOptions is a configuration object; test_linear_cross_entropy.py uses it.
  mirror = set(functional.__all__) - {"LinearCrossEntropyOptions"}
  modules = {f"nn.{name}" for name in nn.__all__ if name != "Buffer"}
  assert mirror <= covered, mirror - covered
  assert modules <= covered, modules - covered
  assert {"softmax[temperature]", "softmax[where]", "softmin[where]", "cross_entropy[axis=-1]",
          "log_softmax[temperature]", "log_softmax[where]"} <= covered
  types = {"ArgumentError", "DTypeError", "LossAux"}  # exception and result types, not functions
  assert core <= covered and set(jaxsoftmax.__all__) - types <= covered
  shapes = {len(c.shape) for c in CASES}
  assert shapes == {0, 1, 2, 3, 4}
  assert {c.dtype for c in CASES} == set(grid.DTYPES)
