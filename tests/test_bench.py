"""The benchmark harness: its bookkeeping, interleaving, files and memory probes (tiny shapes; the
real figures come from `jaxsoftmax bench`, never from a timed test)."""

import json

import numpy as np
import pytest

from jaxsoftmax import bench, cli


def test_minimal_bytes_count_each_input_and_output_once():
  assert bench.minimal_bytes("softmax", (4, 8), "float32", "fwd") == 2 * 4 * 8 * 4
  assert bench.minimal_bytes("log_softmax", (4, 8), "bfloat16", "fwd+bwd") == 4 * 4 * 8 * 2
  assert bench.minimal_bytes("cross_entropy", (4, 8), "float32", "fwd") == 4 * 8 * 4 + 4 * 4
  n, d, v = 8, 4, 16
  params = (n * d + d * v) * 4
  assert bench.minimal_bytes("linear_cross_entropy", (n, d, v), "float32", "fwd+bwd") == (
      2 * params + n * 4)
  assert bench.flops("linear_cross_entropy", (n, d, v), "fwd+bwd") == 6 * n * d * v


def test_providers_are_interleaved_and_rotated():
  order = []
  calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
  times = bench._time_interleaved(calls, reps=3, warmup=1, budget_s=10)
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
  assert order[3:] == list("abc" "bca" "cab")  # after one warm-up call each


def test_a_call_may_report_its_own_time():
  times = bench._time_interleaved({"x": lambda: 0.125}, reps=3, warmup=1)
  assert times["x"] == [0.125] * 3


def test_geomean_and_speedups():
  doc = {"rows": [
      {"op": "softmax", "impl": i, "shape": [2, 3], "dtype": "float32", "mode": "fwd+bwd",
       "status": "ok", "median_ms": ms} for i, ms in (("jaxsoftmax", 2.0), ("jax.nn", 3.0),
                                                         ("torch", 4.0))]}
  (row,) = bench.speedups(doc)
  assert row["fastest_peer"] == "jax.nn" and row["speedup"] == pytest.approx(1.5)
  assert bench.geomean([2.0, 8.0]) == pytest.approx(4.0)


def test_parse_shapes_routes_2d_and_3d_and_rejects_junk():
  shapes = bench.parse_shapes(["8x16", "4x8x32"], bench.OPS)
  assert shapes["softmax"] == [(8, 16)] and shapes["linear_cross_entropy"] == [(4, 8, 32)]
  with pytest.raises(ValueError, match="'8by16' is not like"):
    bench.parse_shapes(["8by16"], bench.OPS)


def test_a_small_run_writes_long_rows_json_and_chart(tmp_path):
  config = bench.Config(shapes=bench.parse_shapes(["16x8", "8x4x12"], bench.OPS),
                        modes=bench.MODES, reps=3, budget_s=0.5, rss="linear",
                        impls=("jax.nn", "optax", "torch", "torch-chunked"))
  doc = bench.run(config)
  path = bench.write(doc, tmp_path)
  assert path.name == f"cpu-{doc['timestamp'][:10]}.json" and path.with_suffix(".png").exists()
  saved = json.loads(path.read_text())
  assert saved["device"] == "cpu" and saved["copy_gbps"] > 0 and "jax" in saved["versions"]
  ok = [r for r in saved["rows"] if r["status"] == "ok"]
  assert {(r["op"], r["impl"]) for r in ok} >= {
      ("softmax", "jaxsoftmax"), ("softmax", "jax.nn"), ("softmax", "torch"),
      ("cross_entropy", "optax"), ("linear_cross_entropy", "torch-chunked")}
  assert {r["mode"] for r in ok} == set(bench.MODES)
  for r in ok:
    assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["gbps"] > 0
    assert np.isclose(r["copy_fraction"], r["gbps"] / saved["copy_gbps"])
    if r["impl"] in ("jaxsoftmax", "jax.nn", "optax"):
      assert "xla_temp_mb" in r
  lce = [r for r in ok if r["op"] == "linear_cross_entropy" and r["mode"] == "fwd+bwd"]
  assert all(r["peak_rss_mb"] >= r["setup_rss_mb"] > 50 for r in lce)
  # Writing again the same day keeps the first file.
  second = bench.write(doc, tmp_path)
  assert second != path and path.exists()


def test_cli_rejects_bad_shapes(capsys):
  assert cli.main(["bench", "--shapes", "8by16"]) == 2
  assert "is not like" in capsys.readouterr().out
