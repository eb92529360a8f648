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
