import json

from jaxsoftmax import cli
from jaxsoftmax.parity import ops


def test_parity_command_writes_json_and_markdown(tmp_path, capsys):
  rc = cli.main(["parity", "--ops", "softmax", "nn.CrossEntropyLoss", "--dtypes", "float32",
                 "--out", str(tmp_path)])
  assert rc == 0
  report = json.loads((tmp_path / "parity.json").read_text())
  rows = {(r["op"], r["dtype"], r["device"]) for r in report["rows"]}
  assert rows == {("softmax", "float32", "cpu"), ("nn.CrossEntropyLoss", "float32", "cpu")}
  assert all(r["passed"] for r in report["rows"]) and report["versions"]["torch"]
  markdown = (tmp_path / "parity.md").read_text()
  assert "| softmax | float32 | cpu |" in markdown and "PASS" in markdown
  out = capsys.readouterr().out
  assert "fwd max abs" in out and "passed, 0 failed" in out


def test_parity_command_fails_on_a_mismatch(tmp_path, monkeypatch):
  broken = ops.Op("softmax", lambda a, p: ops.OPS["softmin"].jax_fn(a, p),
                     ops.OPS["softmax"].torch_fn)
  monkeypatch.setitem(ops.OPS, "softmax", broken)
  rc = cli.main(["parity", "--ops", "softmax", "--dtypes", "float32", "--out", str(tmp_path)])
  assert rc == 1
  assert "FAIL" in (tmp_path / "parity.md").read_text()


def test_parity_command_runs_a_users_pair_and_names_the_diverging_layer(tmp_path, capsys):
  import pathlib

  example = pathlib.Path(__file__).parents[2] / "examples" / "12_port_a_transformer_layer.py"
  rc = cli.main(["parity", "--pair", f"{example}:make_slipped_pair", "--out", str(tmp_path)])
  assert rc == 1
  markdown = (tmp_path / "pair.md").read_text()
  assert "on cpu" in markdown and "first divergence: torch `norm2`" in markdown
  assert json.loads((tmp_path / "pair.json").read_text())[0]["passed"] is False
  assert "0 passed, 1 failed" in capsys.readouterr().out


def test_parity_command_explains_a_bad_pair_spec(tmp_path):
  import pytest

  from jaxsoftmax._src.errors import ArgumentError

  with pytest.raises(ArgumentError, match="FILE.py:FACTORY"):
    cli.main(["parity", "--pair", "no_colon_here", "--out", str(tmp_path)])
  (tmp_path / "pair.py").write_text("x = 1\n")
  with pytest.raises(ArgumentError, match="no callable 'make'"):
    cli.main(["parity", "--pair", f"{tmp_path / 'pair.py'}:make", "--out", str(tmp_path)])
