"""The harness must catch what it claims to catch: each check here can fail."""

import numpy as np
import pytest

from jaxsoftmax import parity
from jaxsoftmax.parity import grid, ops, runner


def test_tolerance_table_equals_torch_testing_defaults():
  torch = pytest.importorskip("torch")
  from torch.testing._comparison import default_tolerances

  for name, tol in parity.TOLERANCES.items():
    rtol, atol = default_tolerances(getattr(torch, name))
    assert (tol.rtol, tol.atol) == (rtol, atol), name


def test_compare_flags_values_just_beyond_tolerance():
  expected = np.linspace(0.1, 1.0, 10)
  tol = parity.TOLERANCES["float32"]
  inside = expected + 0.9 * (tol.atol + tol.rtol * expected)
  outside = expected.copy()
  outside[7] += 1.1 * (tol.atol + tol.rtol * expected[7])
  assert parity.compare(inside, expected, "float32").ok
  result = parity.compare(outside, expected, "float32")
  assert not result.ok and result.mismatches == 1 and result.first[0][0] == (7,)
  assert "max abs err" in result.report() and "(7,)" in result.report()


def test_compare_reports_nan_and_inf_patterns_separately():
  expected = np.array([1.0, np.nan, np.inf, -np.inf])
  assert parity.compare(expected.copy(), expected, "float64").ok
  swapped = parity.compare(np.array([1.0, 0.0, np.inf, np.inf]), expected, "float64")
  assert swapped.nan_mismatches == 1 and swapped.inf_mismatches == 1 and swapped.mismatches == 0
  shape = parity.compare(np.zeros(3), np.zeros(4), "float64")
  assert not shape.ok and "shape" in shape.report()


def test_assert_close_raises_with_report():
  with pytest.raises(AssertionError, match="first|at \\(0,\\)"):
    parity.assert_close(np.array([1.0]), np.array([1.1]), "bfloat16")


def test_run_case_detects_a_wrong_implementation(monkeypatch):
  case = grid.Case("softmax", "float32", (3, 5), (("dim", 1),))
  assert runner.run_case(case).ok
  wrong = ops.Op("softmax", lambda a, p: ops.OPS["log_softmax"].jax_fn(a, p),
                    ops.OPS["softmax"].torch_fn)
  monkeypatch.setitem(ops.OPS, "softmax", wrong)
  result = runner.run_case(case)
  assert not result.ok and "output out" in result.report()


def test_cases_reject_unknown_names():
  with pytest.raises(ValueError, match="unknown ops"):
    grid.cases(ops=["sofmax"])
  with pytest.raises(ValueError, match="unknown dtypes"):
    grid.cases(dtypes=["float8"])


def test_inputs_are_reproducible_across_processes():
  import subprocess
  import sys

  code = ("from jaxsoftmax.parity import grid; c = grid.cases(ops=['cross_entropy'])[5]; "
          "print(grid.make_inputs(c)['x'].sum())")
  runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout for _ in range(2)}
  assert len(runs) == 1
