import json

import numpy as np
import pytest

from jaxsoftmax import cli
from jaxsoftmax.tutorial import interop


@pytest.mark.parametrize("task", ["income", "digits"])
def test_train_command_writes_checkpoint_metrics_and_charts(task, tmp_path, capsys):
  rc = cli.main(["train", task, "--epochs", "1", "--max-steps", "20", "--compare-torch",
                 "--out", str(tmp_path)])
  assert rc == 0
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["task"] == task and 0.0 <= metrics["test_accuracy"] <= 1.0
  assert metrics["temperature"] > 0 and metrics["max_divergence"] < 1e-4  # 20 steps: in step
  for png in ("loss_curves.png", "reliability_before.png", "reliability_after.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
  weights = interop.load_state_dict(tmp_path / "checkpoint.safetensors")
  assert "fc3.weight" in weights and not list(tmp_path.glob("*.tmp"))
  out = capsys.readouterr().out
  assert "held-out accuracy" in out and "ECE" in out and "largest loss difference" in out


def test_training_and_its_checkpoint_need_no_torch(tmp_path):
  import subprocess
  import sys

  code = ("import sys; sys.modules['torch'] = None; from jaxsoftmax.tutorial.training import fit; "
          f"r = fit('income', epochs=1, max_steps=5, out={str(tmp_path)!r}); print(len(r.losses))")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == "5" and (tmp_path / "checkpoint.safetensors").is_file()


@pytest.mark.parametrize("bad, match", [(dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"),
                                        (dict(validation=0.0), "validation"),
                                        (dict(batch_size=10**6), "exceeds")])
def test_fit_rejects_bad_arguments(bad, match):
  from jaxsoftmax.tutorial.training import fit

  with pytest.raises(ValueError, match=match):
    fit("income", **{"epochs": 1, **bad})
