"""The sharded loss under JAX's own distributed runtime: 2 processes on 127.0.0.1, 2 CPU devices
each, collectives over gloo, against one process with 4 devices on the same global mesh."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")
ROOT = pathlib.Path(__file__).parents[2]
TIMEOUT_S = 300  # a hung peer fails the test instead of hanging CI


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def _finish(procs):
  """Waits for every process (killing all of them past the timeout); returns their outputs."""
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=TIMEOUT_S))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"a process did not finish in {TIMEOUT_S} s (hung peer?)")
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, f"process exited {p.returncode}:\n{out}\n{err[-4000:]}"


def test_two_processes_train_as_one(tmp_path):
  single, multi = tmp_path / "single.json", tmp_path / "multi.json"
  _finish([subprocess.Popen([sys.executable, str(WORKER), str(single)], cwd=ROOT, env=_env(4),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)])
  port = _free_port()
  _finish([subprocess.Popen([sys.executable, str(WORKER), str(multi), str(port), str(i), "2"],
                            cwd=ROOT, env=_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)])
  a, b = json.loads(single.read_text()), json.loads(multi.read_text())
  assert (a["processes"], a["devices"], b["processes"], b["devices"]) == (1, 4, 2, 4)
  assert b["losses"][-1] < b["losses"][0]  # it trains
  np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5, atol=1e-6)
  for name in a["params"]:
    np.testing.assert_allclose(np.asarray(b["params"][name]), np.asarray(a["params"][name]),
                               rtol=1e-5, atol=1e-5, err_msg=name)
