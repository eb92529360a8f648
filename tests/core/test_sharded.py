"""Runs tests/core/sharded_suite.py on 8 host CPU devices, in a subprocess: the device count is
fixed when JAX starts, and this process has started it with one."""

import os
import pathlib
import subprocess
import sys

import pytest

SUITE = pathlib.Path(__file__).with_name("sharded_suite.py")
ROOT = pathlib.Path(__file__).parents[2]


def test_sharded_suite_on_eight_host_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  try:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(SUITE)], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"the sharded suite did not finish in {e.timeout} s:\n{e.stdout or ''}")
  tail = "\n".join((done.stdout + done.stderr).splitlines()[-60:])
  assert done.returncode == 0, f"sharded suite failed (exit {done.returncode}):\n{tail}"
  assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], tail
