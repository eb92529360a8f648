"""The pytest plugin, as a user's project sees it: installed with the package (pytest11), a
``parity`` fixture, and ``--parity-report=DIR`` collecting every comparison of a run, also across
pytest-xdist workers."""

import json
import subprocess
import sys
import textwrap

USER_TESTS = textwrap.dedent('''
    import numpy as np
    import torch
    import jax.numpy as jnp

    X = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)

    def test_a_good_port(parity):
        parity.assert_functions(lambda x: jnp.tanh(x), torch.tanh, X)

    def test_a_port_checked_through_the_api_directly():
        from jaxsoftmax import parity
        assert parity.compare_functions(lambda x: x * 2, lambda x: x * 2, X).passed

    def test_a_bad_port(parity):
        parity.assert_functions(lambda x: jnp.tanh(x) * 1.01, torch.tanh, X, names=["x"])
''')


def test_fixture_and_report_across_xdist_workers(tmp_path):
  (tmp_path / "test_user_port.py").write_text(USER_TESTS)
  out = tmp_path / "reports"
  run = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
       f"--parity-report={out}", "test_user_port.py"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1, run.stdout + run.stderr  # the bad port fails its test ...
  assert "1 failed, 2 passed" in run.stdout, run.stdout
  assert "grad x" in run.stdout and "max abs err" in run.stdout  # ... with a readable message
  data = json.loads((out / "parity-report.json").read_text())
  by_test = {entry["test"].split("::")[-1]: entry for entry in data["comparisons"]}
  assert set(by_test) == {"test_a_good_port", "test_a_port_checked_through_the_api_directly",
                          "test_a_bad_port"}
  assert by_test["test_a_good_port"]["passed"] and not by_test["test_a_bad_port"]["passed"]
  assert data["failed"] == 1
  markdown = (out / "parity-report.md").read_text()
  assert "3 comparisons, 1 failed" in markdown and "`test_user_port.py::test_a_bad_port`" in markdown
  assert not (out / ".parts").exists()


def test_loading_the_plugin_imports_neither_jaxsoftmax_nor_jax():
  code = ("import sys, jaxsoftmax_pytest\n"
          "assert not {'jax', 'jaxsoftmax', 'torch'} & set(sys.modules), sorted(sys.modules)\n")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert run.returncode == 0, run.stderr
