"""The benchmark harness: its bookkeeping, interleaving, files and memory probes (tiny shapes; the
real figures come from `jaxsoftmax bench`, never from a timed test)."""

import json
import time

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
  times = bench.time_interleaved(calls, reps=3, warmup=1, budget_s=10)
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
  assert order[3:] == list("abc" "bca" "cab")  # after one warm-up call each


def test_a_slow_first_call_does_not_cut_the_timed_repetitions():
  # The count is bounded by the budget spent timing, not planned from the warm-up: a first call
  # 10x slower than the rest (buffers page-faulted, caches filled) must not leave 3 samples.
  count = {"calls": 0}

  def call():
    count["calls"] += 1
    if count["calls"] == 1:
      time.sleep(0.3)

  times = bench.time_interleaved({"a": call, "b": lambda: None}, reps=50, warmup=1, budget_s=0.2)
  assert {k: len(v) for k, v in times.items()} == {"a": 50, "b": 50}


def test_the_budget_bounds_the_rotations_but_never_below_three():
  times = bench.time_interleaved({"a": lambda: time.sleep(0.05)}, reps=100, warmup=0,
                                 budget_s=0.01)
  assert len(times["a"]) == 3
  times = bench.time_interleaved({"a": lambda: time.sleep(0.01)}, reps=100, warmup=0,
                                 budget_s=0.3)  # >= 1 s for 100 calls; room for a loaded machine
  assert 3 < len(times["a"]) < 100
  # A slow call still gets min_reps samples (the sweep asks for MIN_REPS).
  times = bench.time_interleaved({"a": lambda: time.sleep(0.02)}, reps=100, warmup=0,
                                 budget_s=0.01, min_reps=7)
  assert len(times["a"]) == 7


def test_a_call_may_report_its_own_time():
  times = bench.time_interleaved({"x": lambda: 0.125}, reps=3, warmup=1)
  assert times["x"] == [0.125] * 3


@pytest.mark.parametrize("op", ["cross_entropy", "softmax"])
def test_a_provider_compiled_with_reversed_parameters_is_the_same_computation(op):
  """The sweep's second order (``reverse``): the same results in every mode, the executable's
  parameters in the opposite order."""
  from jaxsoftmax.bench import providers  # noqa: PLC0415

  given, _ = providers.jax_setup(op, "jaxsoftmax", (8, 5), "float32", ["fwd", "bwd", "fwd+bwd"])
  rev, _ = providers.jax_setup(op, "jaxsoftmax", (8, 5), "float32", ["fwd", "bwd", "fwd+bwd"],
                               reverse=True)
  import jax  # noqa: PLC0415

  for mode in given:
    for a, b in zip(jax.tree.leaves(given[mode]()), jax.tree.leaves(rev[mode]()), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def first_parameter(call):
      text = call.__defaults__[-1].as_text()
      return text[text.index("ENTRY"):].split("parameter(0)")[0].rsplit("= ", 1)[1]

    if op == "cross_entropy" and mode != "bwd":  # (labels, x) and (x, labels)
      assert first_parameter(given[mode]).startswith("s32")
      assert first_parameter(rev[mode]).startswith("f32")


def test_geomean_and_speedups():
  doc = _doc([_row("jaxsoftmax", 2.0), _row("jax.nn", 3.0), _row("torch", 4.0)])
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
                        impls=("jax.nn", "optax", "torch", "torch-chunked", "jaxsoftmax[exact]"))
  doc = bench.run(config)
  path = bench.write(doc, tmp_path)
  assert path.name == f"cpu-{doc['timestamp'][:10]}.json" and path.with_suffix(".png").exists()
  saved = json.loads(path.read_text())
  assert saved["device"] == "cpu" and saved["copy_gbps"] > 0 and "jax" in saved["versions"]
  host = saved["host"]  # the machine, so that runs on different vector units are told apart
  assert host["cpus"] >= 1 and host["machine"] and set(host["isa"]) <= set(bench.measure.ISA_FLAGS)
  ok = [r for r in saved["rows"] if r["status"] == "ok"]
  assert {(r["op"], r["impl"]) for r in ok} >= {
      ("softmax", "jaxsoftmax"), ("softmax", "jax.nn"), ("softmax", "torch"),
      ("cross_entropy", "optax"), ("linear_cross_entropy", "torch-chunked"),
      ("linear_cross_entropy[z+cap]", "jaxsoftmax"), ("linear_cross_entropy[z+cap]", "optax"),
      ("linear_cross_entropy[z+cap]", "torch"), ("linear_cross_entropy[filter]", "jaxsoftmax"),
      ("linear_cross_entropy[filter]", "jaxsoftmax[exact]")}
  assert {r["mode"] for r in ok} == set(bench.MODES)
  for r in ok:
    assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["gbps"] > 0
    assert np.isclose(r["copy_fraction"], r["gbps"] / saved["copy_gbps"])
    if r["impl"] in ("jaxsoftmax", "jax.nn", "optax", "jaxsoftmax[exact]"):
      assert "xla_temp_mb" in r
  lce = [r for r in ok if r["op"] == "linear_cross_entropy" and r["mode"] == "fwd+bwd"]
  assert all(r["peak_rss_mb"] >= r["setup_rss_mb"] > 50 for r in lce)
  # torch's fresh process never imports jax (child.py loads the harness without the package)
  assert {r["impl"]: r["jax_imported"] for r in lce} == {
      "jaxsoftmax": True, "optax": True, "torch": False, "torch-chunked": False}
  # Writing again the same day keeps the first file.
  second = bench.write(doc, tmp_path)
  assert second != path and path.exists()


def test_cli_rejects_bad_shapes(capsys):
  assert cli.main(["bench", "--shapes", "8by16"]) == 2
  assert "is not like" in capsys.readouterr().out


def test_our_xla_variant_is_timed_but_never_counted_as_a_peer():
  doc = _doc([_row("jaxsoftmax", 2.0), _row("jaxsoftmax[xla]", 1.0), _row("torch", 4.0)])
  (row,) = bench.speedups(doc)
  assert row["fastest_peer"] == "torch" and row["speedup"] == pytest.approx(2.0)


def test_the_gpu_preset_holds_the_issue_targets():
  gpu = bench.PRESETS["gpu"]
  assert (4096, 32768) in gpu["softmax"] and (16384, 131072) in gpu["softmax"]
  assert [n for m, n in gpu["softmax"] if m == 4096][:len(bench.TRITON_SWEEP)] == list(
      bench.TRITON_SWEEP)
  assert min(bench.TRITON_SWEEP) == 256 and max(bench.TRITON_SWEEP) == 12672
  assert gpu["cross_entropy"] == [(8192, 32768), (8192, 131072), (8192, 262144)]


def _doc(rows, copy=10.0, device="cpu"):
  return {"device": device, "copy_gbps": copy, "timestamp": "2026-11-24T00:00:00+00:00",
          "host": {"cpus": 2}, "versions": {}, "rows": rows}


def _row(impl, ms, shape=(2, 3)):
  return {"op": "softmax", "impl": impl, "shape": list(shape), "dtype": "float32",
          "mode": "fwd+bwd", "status": "ok", "median_ms": ms, "gbps": 1.0}


def test_append_merges_runs_into_one_file_and_replaces_repeated_rows(tmp_path):
  first = bench.write(_doc([_row("jaxsoftmax", 2.0), _row("torch", 3.0)]), tmp_path)
  second = bench.write(_doc([_row("jaxsoftmax", 1.5), _row("torch", 9.0, (4, 5))], copy=12.0),
                       tmp_path, append=True)
  assert first == second
  saved = json.loads(second.read_text())
  got = {(r["impl"], tuple(r["shape"])): r["median_ms"] for r in saved["rows"]}
  assert got == {("jaxsoftmax", (2, 3)): 1.5, ("torch", (2, 3)): 3.0, ("torch", (4, 5)): 9.0}
  assert saved["copy_gbps_runs"] == [10.0, 12.0]
  for row in saved["rows"]:  # the fields the accelerator results must carry
    assert {"op", "impl", "shape", "dtype", "mode", "median_ms", "gbps"} <= set(row)
  assert {"device", "copy_gbps", "versions", "rows"} <= set(saved)
  # Two device names that share a file name are never merged.
  with pytest.raises(ValueError, match="holds results for 'cpu', not 'CPU'"):
    bench.write(_doc([], device="CPU"), tmp_path, append=True)


def test_chart_can_be_drawn_later_from_a_results_file(tmp_path):
  path = bench.write(_doc([_row("jaxsoftmax", 2.0), _row("torch", 3.0)]), tmp_path)
  path.with_suffix(".png").unlink()
  assert cli.main(["bench", "--chart", str(path)]) == 0
  assert path.with_suffix(".png").stat().st_size > 1000


def test_the_sharded_suite_measures_memory_collectives_and_time(tmp_path, capsys):
  # A small shape through the CLI: the child process sees 8 host devices; the files land in --out.
  rc = cli.main(["bench", "--sharded", "--shapes", "256x16x2048", "--reps", "1", "--out",
                 str(tmp_path)])
  assert rc == 0
  doc = json.loads((tmp_path / "sharded.json").read_text())
  assert (tmp_path / "sharded.png").stat().st_size > 0 and (tmp_path / "sharded.md").exists()
  rows = {(r["layout"], r["devices"], r["provider"]): r for r in doc["rows"]}
  ours = [rows[("tp", p, "jaxsoftmax")]["temp_mib"] for p in (1, 2, 4, 8)]
  assert all(b < 0.7 * a for a, b in zip(ours, ours[1:])), ours  # falls with the split
  assert rows[("dp x tp", 8, "jaxsoftmax")]["collectives"] <= 4
  assert all(r["median_ms"] > 0 for r in doc["rows"])
  assert "sharded linear cross-entropy" in capsys.readouterr().out


def test_collectives_are_read_with_their_sizes():
  text = ("  %ag = f32[4,6,8]{2,1,0} all-gather(f32[1,6,8]{2,1,0} %p), dimensions={0}\n"
          "  %ar = (f32[16,8]{1,0}, bf16[4]{0}) all-reduce-start(%a, %b), to_apply=%add\n"
          "  %x = f32[2]{0} add(%p, %q)\n")
  from jaxsoftmax.bench import sharded  # noqa: PLC0415

  found = sharded.collectives_in(text)
  assert found == [{"kind": "all-gather", "bytes": 4 * 6 * 8 * 4},
                   {"kind": "all-reduce", "bytes": 16 * 8 * 4 + 4 * 2}]
