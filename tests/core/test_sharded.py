"""Runs tests/core/sharded_suite.py on 8 host CPU devices, in a subprocess: the device count is
fixed when JAX starts, and this process has started it with one."""

import os
import pathlib
import subprocess
import sys

import pytest

SUITE = pathlib.Path(__file__).with_name("sharded_suite.py")
ROOT = pathlib.Path(__file__).parents[2]


#: The suite runs in this many subprocesses, each every PARTS-th test, so that xdist's two
#: workers share it (146 s alone here; 242 s as one test beside the rest of `make test`).
PARTS = 3


@pytest.mark.parametrize("part", range(PARTS))
def test_sharded_suite_on_eight_host_devices(part):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", JAXSOFTMAX_TEST_PART=f"{part}/{PARTS}")
  try:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", str(SUITE)], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"the sharded suite did not finish in {e.timeout} s:\n{e.stdout or ''}")
  tail = "\n".join((done.stdout + done.stderr).splitlines()[-60:])
  assert done.returncode == 0, f"sharded suite part {part} failed (exit {done.returncode}):\n{tail}"
  last = done.stdout.splitlines()[-1]
  assert " passed" in last and "skipped" not in last and "deselected" in last, tail


def test_the_parts_cover_every_test_once(monkeypatch):
  """conftest's JAXSOFTMAX_TEST_PART hook: the parts of one collection are disjoint and together
  the whole of it, each reported as deselected from the rest; a bad part is a usage error."""
  import conftest

  class Hook:
    def __init__(self):
      self.deselected = []

    def pytest_deselected(self, items):
      self.deselected.append(list(items))

  class Config:
    hook = Hook()

  whole = sorted(f"t{k:02d}" for k in range(11))
  parts = []
  for i in range(PARTS):
    monkeypatch.setenv("JAXSOFTMAX_TEST_PART", f"{i}/{PARTS}")
    items, config = list(whole), Config()
    config.hook = Hook()
    conftest.pytest_collection_modifyitems(config, items)
    assert sorted(items + config.hook.deselected[0]) == whole
    parts.append(items)
  assert sorted(t for part in parts for t in part) == whole and all(parts)
  monkeypatch.setenv("JAXSOFTMAX_TEST_PART", f"{PARTS}/{PARTS}")
  with pytest.raises(pytest.UsageError, match="0 <= i < n"):
    conftest.pytest_collection_modifyitems(Config(), list(whole))
