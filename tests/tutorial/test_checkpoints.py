"""Resumable checkpoints: atomic, verified, and a killed run resumes bitwise identically."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxsoftmax.tutorial import checkpoints
from jaxsoftmax.tutorial.training import fit

ROOT = pathlib.Path(__file__).parents[2]


def _train(out, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "jaxsoftmax.cli", "train", "income", "--epochs", "5",
       "--out", str(out), "--checkpoint-every", "100", *extra],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_training_run_resumes_bitwise_identically(tmp_path):
  straight = _train(tmp_path / "straight")
  killed = _train(tmp_path / "killed")
  state = tmp_path / "killed" / "state"
  deadline = time.monotonic() + 240
  # Kill it in its second epoch (458 steps each), mid-epoch, with ~3.7 epochs still to go (7 s
  # alone here, against the 0.05 s poll, so the kill lands before the run ends even on a loaded
  # machine): a resume must restore the data order as well as the weights and optimizer. (Ten
  # epochs took this test to 58 s of the suite; five keep every property it checks.)
  while not any(int(p.name[5:14]) >= 600 for p in state.glob("step-*.safetensors")):
    assert killed.poll() is None, killed.stdout.read()
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  killed.stdout.close()
  assert killed.returncode == -signal.SIGKILL
  resumed = _train(tmp_path / "killed", "--resume")
  out_resumed, _ = resumed.communicate(timeout=300)
  out_straight, _ = straight.communicate(timeout=300)
  assert resumed.returncode == 0, out_resumed
  assert straight.returncode == 0, out_straight
  assert "resumed from" in out_resumed
  a = load_file(tmp_path / "straight" / "checkpoint.safetensors")
  b = load_file(tmp_path / "killed" / "checkpoint.safetensors")
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bitwise, not approximately
  sa = checkpoints.latest(tmp_path / "straight" / "state")
  sb = checkpoints.latest(tmp_path / "killed" / "state")
  assert sa[2]["losses"] == sb[2]["losses"] and sa[2]["step"] == sb[2]["step"]
  for key in sa[1]:  # the optimizer's moments and count too
    np.testing.assert_array_equal(sa[1][key], sb[1][key], err_msg=key)


def test_a_damaged_latest_falls_back_to_the_previous_checkpoint(tmp_path):
  fit("income", epochs=1, max_steps=12, batch_size=512, out=tmp_path, checkpoint_every=5)
  files = sorted((tmp_path / "state").glob("step-*.safetensors"))
  assert len(files) == 2  # keep=2
  newest = files[-1]
  raw = bytearray(newest.read_bytes())
  raw[-3] ^= 0xFF  # one flipped bit in the tensor payload
  newest.write_bytes(bytes(raw))
  with pytest.warns(UserWarning, match="SHA-256 of the tensors differs"):
    path, _, meta = checkpoints.latest(tmp_path / "state")
  assert path == files[0] and meta["step"] < int(newest.name[5:14])
  newest.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated: also skipped
  with pytest.warns(UserWarning, match="unreadable checkpoint"):
    assert checkpoints.latest(tmp_path / "state")[0] == files[0]


def test_a_leftover_tmp_file_is_ignored_and_resume_checks_the_run(tmp_path):
  fit("income", epochs=1, max_steps=6, batch_size=512, out=tmp_path, checkpoint_every=5)
  (tmp_path / "state" / "step-000000099.safetensors.tmp").write_bytes(b"half a file")
  assert checkpoints.latest(tmp_path / "state")[2]["step"] == 6
  with pytest.raises(ValueError, match="from a different run"):
    fit("income", epochs=1, batch_size=256, out=tmp_path, resume=True)
  with pytest.raises(ValueError, match="compare_torch cannot resume"):
    fit("income", epochs=1, out=tmp_path, resume=True, compare_torch=True)


def test_restore_refuses_arrays_of_another_model(tmp_path):
  from flax import nnx
  import optax

  from jaxsoftmax.tutorial.models import DigitClassifier, IncomeClassifier

  fit("income", epochs=1, max_steps=5, batch_size=512, out=tmp_path, checkpoint_every=5)
  _, arrays, _ = checkpoints.latest(tmp_path / "state")
  digits = DigitClassifier(rngs=nnx.Rngs(0))
  before = np.asarray(digits.fc1.kernel[...]).copy()
  with pytest.raises(checkpoints.CheckpointError, match="has shape|missing"):
    checkpoints.restore(arrays, digits, nnx.Optimizer(digits, optax.adam(1e-3), wrt=nnx.Param))
  np.testing.assert_array_equal(digits.fc1.kernel[...], before)  # untouched
  income = IncomeClassifier(rngs=nnx.Rngs(1))
  checkpoints.restore(arrays, income, nnx.Optimizer(income, optax.adam(1e-3), wrt=nnx.Param))
  assert os.path.exists(tmp_path / "checkpoint.safetensors")
