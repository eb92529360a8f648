"""The sweep (issue 17) and the GPU plan's dry run: bookkeeping and files on tiny grids (the real
figures come from `jaxsoftmax bench --sweep` and `make gpu`, never from a timed test)."""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile

import pytest

from jaxsoftmax import cli
from jaxsoftmax.bench import sweep

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_grid_holds_the_issue_shapes_and_respects_the_cap():
  shapes = sweep.grid("softmax")
  for target in [(4096, 1024), (1024, 32768), (65536, 10)]:
    assert target in shapes
  assert all(n * v <= sweep.MAX_ELEMENTS for n, v in shapes)
  assert (1, 2) in shapes and (1, 262144) in shapes and (65536, 262144) not in shapes
  linear = sweep.grid("linear_cross_entropy")
  assert all(d == sweep.LINEAR_D and n * v <= sweep.MAX_ELEMENTS for n, d, v in linear)
  assert sweep.grid("softmax", rows=[3], cols=[5, 7]) == [(3, 5), (3, 7)]


def _row(ratio, op="softmax", dtype="float32", mode="fwd", shape=(1, 2)):
  return {"op": op, "dtype": dtype, "mode": mode, "shape": list(shape), "ratio": ratio}


def test_the_summary_holds_every_ratio_to_the_floor_and_the_geomean_to_the_target():
  s = sweep.summary({"rows": [_row(1.2), _row(1.3, mode="bwd")]})
  assert s["passed"] and s["worst"] == 1.2 and s["geomean"] == pytest.approx((1.2 * 1.3) ** 0.5)
  s = sweep.summary({"rows": [_row(2.0), _row(0.94, shape=(64, 2))]})
  assert not s["passed"] and s["below_floor"][0]["shape"] == [64, 2]  # one cliff fails it all
  s = sweep.summary({"rows": [_row(1.0), _row(1.05)]})
  assert not s["passed"] and not s["below_floor"]  # no cliff, but the geomean is short
  assert not sweep.summary({"rows": []})["passed"]


def test_a_tiny_sweep_times_every_op_against_its_jax_peer_and_draws_heat_maps(tmp_path, capsys,
                                                                             monkeypatch):
  # One further round, not three (the count is the mocked test's below): every op's programs are
  # still built again and reversed, at half the compiles (this test was 85 s of the suite).
  monkeypatch.setattr(sweep, "CONFIRM", 1)
  monkeypatch.setattr(sweep, "MORE", 1)
  args = ["bench", "--sweep", "--rows", "2", "--cols", "3", "--dtypes", "float32", "bfloat16",
          "--budget", "0.01", "--out", str(tmp_path)]
  assert cli.main(args) == 0
  (path,) = tmp_path.glob("sweep-*.json")
  doc = json.loads(path.read_text())
  got = {(r["op"], r["dtype"], r["mode"]) for r in doc["rows"]}
  assert got == {(op, dt, mode) for op in sweep.SWEEP_OPS for dt in ("float32", "bfloat16")
                 for mode in ("fwd", "bwd", "fwd+bwd")}
  for r in doc["rows"]:
    assert r["peer"] == sweep.SWEEP_PEER[r["op"]]
    assert r["reps"] >= 3
    assert r["ratio"] == pytest.approx(statistics.median(r["rounds"]))
    # A loss or a near-parity win is timed again, CONFIRM more times, and MORE times after that
    # where those rounds disagree by more than SPREAD; a clear win is not.
    retimed = r["rounds"][0] < sweep.CONFIRM_ABOVE
    first = r["rounds"][:1 + sweep.CONFIRM]
    wide = max(first) - min(first) > sweep.SPREAD
    assert len(r["rounds"]) == (1 + sweep.CONFIRM + wide * sweep.MORE if retimed else 1)
    assert r["reversed"] == [i % 2 == 1 for i in range(len(r["rounds"]))]
    if not retimed:
      assert r["ratio"] == pytest.approx(r["peer_ms"] / r["ours_ms"])
  assert doc["summary"]["n"] == len(doc["rows"])
  assert {p.name for p in tmp_path.glob("*.png")} == {
      path.stem + "-float32.png", path.stem + "-bfloat16.png"}
  assert "geometric mean" in capsys.readouterr().out


def test_each_further_round_times_fresh_instances_built_in_turn_half_of_them_reversed(
    monkeypatch):
  built, timed = [], []

  def setup(op, impl, shape, dtype, modes, reverse=False):
    built.append((impl, tuple(modes), reverse))
    return {m: (impl, len(built)) for m in modes}, {m: None for m in modes}

  def timing(calls, reps, budget_s, min_reps):  # a loss in round 1, a clear win after: re-timed
    assert min_reps == sweep.MIN_REPS  # however slow a call, a round has MIN_REPS samples
    timed.append(dict(calls))
    slow = 1.0 if len(timed) == 1 else 0.5
    return {"jaxsoftmax": [slow] * 3, "jax.nn": [0.9] * 3}

  monkeypatch.setattr(sweep, "jax_setup", setup)
  monkeypatch.setattr(sweep, "time_interleaved", timing)
  doc = sweep.run(["softmax"], ["float32"], ["fwd"], rows=[1], cols=[2])
  row = doc["rows"][0]
  # The first four rounds spread by 0.9, more than SPREAD: MORE rounds follow, eight in all.
  assert (sweep.CONFIRM, sweep.MORE) == (3, 4)
  assert row["rounds"] == pytest.approx([0.9] + [1.8] * 7) and row["ratio"] == pytest.approx(1.8)
  assert row["reversed"] == [False, True] * 4
  # Round 1 times the instances built for every mode; each further round builds both anew, for
  # this mode only, in turn the peer first with reversed parameters and jaxsoftmax first without.
  assert built == [("jaxsoftmax", ("fwd",), False), ("jax.nn", ("fwd",), False)] + [
      ("jax.nn", ("fwd",), True), ("jaxsoftmax", ("fwd",), True),
      ("jaxsoftmax", ("fwd",), False), ("jax.nn", ("fwd",), False)] * 3 + [
      ("jax.nn", ("fwd",), True), ("jaxsoftmax", ("fwd",), True)]
  # Round k > 1 times the (2k + 1)-th and (2k + 2)-th instances built, the peer's first if reversed.
  expected = [[("jax.nn", 2), ("jaxsoftmax", 1)]]
  for k in range(1, 8):
    peer, ours = (2 * k + 1, 2 * k + 2) if k % 2 else (2 * k + 2, 2 * k + 1)
    expected.append([("jax.nn", peer), ("jaxsoftmax", ours)])
  assert [sorted(c.values()) for c in timed] == expected


@pytest.mark.parametrize("peer_times, rounds", [
    # Four rounds within SPREAD of each other: the figure is their median, nothing more is timed.
    ([0.9, 0.93, 0.95, 0.91], 4),
    # Four rounds spread by 0.1, either side of parity: MORE rounds, whichever side they fall on.
    ([0.9, 1.0, 0.95, 0.97, 1.0, 1.0, 1.0, 1.0], 8),
    ([1.1, 1.0, 1.05, 1.03, 1.0, 1.0, 1.0, 1.0], 8)])
def test_only_rounds_that_disagree_are_timed_more_whichever_side_of_parity(
    monkeypatch, peer_times, rounds):
  def setup(op, impl, shape, dtype, modes, reverse=False):
    return {m: impl for m in modes}, {m: None for m in modes}

  left = list(peer_times)

  def timing(calls, reps, budget_s, min_reps):
    return {"jaxsoftmax": [1.0] * 3, "jax.nn": [left.pop(0)] * 3}

  monkeypatch.setattr(sweep, "jax_setup", setup)
  monkeypatch.setattr(sweep, "time_interleaved", timing)
  row = sweep.run(["softmax"], ["float32"], ["fwd"], rows=[1], cols=[2])["rows"][0]
  assert row["rounds"] == pytest.approx(peer_times[:rounds]) and not left
  assert row["ratio"] == pytest.approx(statistics.median(peer_times))


def test_a_sweep_stopped_midway_leaves_the_rows_it_timed_and_they_can_be_drawn(
    monkeypatch, tmp_path, capsys):
  """A GPU plan step stopped by its time limit keeps its rows: the JSON is rewritten after every
  shape (marked incomplete), and ``--chart`` draws the heat maps of what is there."""
  shapes_timed = []

  def setup(op, impl, shape, dtype, modes, reverse=False):
    return {m: (impl, shape) for m in modes}, {m: None for m in modes}

  def timing(calls, reps, budget_s, min_reps):
    shape = next(iter(calls.values()))[1]
    if shape == (1, 3):
      raise KeyboardInterrupt  # what the time limit's signal does to the second shape
    shapes_timed.append(shape)
    return {"jaxsoftmax": [0.5] * 3, "jax.nn": [1.0] * 3}  # a clear win: one round

  monkeypatch.setattr(sweep, "jax_setup", setup)
  monkeypatch.setattr(sweep, "time_interleaved", timing)
  with pytest.raises(KeyboardInterrupt):
    cli.main(["bench", "--sweep", "--ops", "softmax", "--rows", "1", "--cols", "2", "3",
              "--dtypes", "float32", "--modes", "fwd", "--out", str(tmp_path)])
  (path,) = tmp_path.glob("sweep-*.json")
  doc = json.loads(path.read_text())
  assert shapes_timed == [(1, 2)] and doc["complete"] is False
  assert [(r["shape"], r["ratio"]) for r in doc["rows"]] == [([1, 2], 2.0)]
  assert not list(tmp_path.glob("*.png"))  # partial writes skip the charts
  assert cli.main(["bench", "--chart", str(path)]) == 0
  assert [p.name for p in tmp_path.glob("*.png")] == [path.stem + "-float32.png"]
  capsys.readouterr()
  monkeypatch.setattr(sweep, "time_interleaved", lambda calls, reps, budget_s, min_reps: {
      "jaxsoftmax": [0.5] * 3, "jax.nn": [1.0] * 3})
  parts = []
  doc = sweep.run(["softmax"], ["float32"], ["fwd"], rows=[1], cols=[2, 3], partial=parts.append)
  assert [len(p["rows"]) for p in parts] == [1, 2] and not any(p["complete"] for p in parts)
  assert doc["complete"] is True and doc["rows"] == parts[-1]["rows"]


def test_a_sweep_in_fresh_processes_times_each_op_and_dtype_in_its_own_child(tmp_path):
  """``--fresh-processes``: the same document, each (op, dtype) timed by its own child, the rows
  passed on as they come; a child that fails is an error, not a silent gap."""
  parts = []
  doc = sweep.run_fresh(["softmax", "nll_loss"], ["float32", "bfloat16"], ["fwd"], rows=[2],
                        cols=[3], budget_s=0.01, partial=parts.append)
  assert doc["complete"] and doc["kind"] == "sweep" and doc["device"]
  assert doc["host"]["cpus"] >= 1 and isinstance(doc["host"]["isa"], list)
  groups = {(r["op"], r["dtype"]): r["process"] for r in doc["rows"]}
  assert set(groups) == {(op, dt) for op in ("softmax", "nll_loss")
                         for dt in ("float32", "bfloat16")}
  assert len(set(groups.values())) == 4 and os.getpid() not in groups.values()
  assert parts and not any(p["complete"] for p in parts)
  assert [len(p["rows"]) for p in parts] == sorted(len(p["rows"]) for p in parts)
  with pytest.raises(RuntimeError, match="child process for nonsense float32"):
    sweep.run_fresh(["nonsense"], ["float32"], ["fwd"], rows=[2], cols=[3], budget_s=0.01)


def test_a_fresh_process_child_whose_parent_has_gone_stops_at_its_next_shape(tmp_path):
  """A killed ``--fresh-processes`` sweep must not leave children timing on alone: the child
  checks its parent before it passes on each shape's rows, and exits (code 3) without them."""
  out = tmp_path / "part.json"
  spec = {"ops": ["softmax"], "dtypes": ["float32"], "modes": ["fwd"],
          "options": {"rows": [2], "cols": [3, 4], "budget_s": 0.01}, "out": str(out),
          "parent": os.getppid() + 1}  # not this process's parent: as if it had been killed
  with pytest.raises(SystemExit) as stopped:
    sweep._child(spec)
  assert stopped.value.code == 3 and not out.exists()
  assert sweep._child(spec | {"parent": os.getppid()}) == 0  # the same child, parent alive
  assert len(json.loads(out.read_text())["rows"]) == 2


def test_the_sweep_refuses_what_it_cannot_run(tmp_path, capsys):
  assert cli.main(["bench", "--sweep", "--ops", "linear_cross_entropy[filter]",
                   "--out", str(tmp_path)]) == 2
  assert cli.main(["bench", "--ops", "nll_loss", "--out", str(tmp_path)]) == 2
  assert cli.main(["bench", "--sweep", "--rows", "0", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().out
  assert "--sweep has no linear_cross_entropy[filter]" in err and "only with --sweep" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the plan is a bash script")
def test_the_short_gpu_plan_fits_one_device_command_of_a_fifteen_minute_session(tmp_path):
  """`make gpu-short`: parity, the sweep, both kernel-test runs, the fence's A/B and the HLO of
  the cells under the floor, with limits that sum to at most 570 s (a device command may run
  600 s, and a session has 900 s with the machine's start), listed without running anything or
  touching the results folder."""
  env = dict(os.environ, GPU_PLAN_SHORT="1", GPU_PLAN_LIST="1")
  proc = subprocess.run(["bash", "tools/gpu_plan.sh", str(tmp_path / "r")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60, check=True)
  limits = dict(line.split() for line in proc.stdout.splitlines() if "skipped" not in line)
  assert set(limits) == {"info", "kernels", "kernels-lenient", "parity", "sweep", "apart",
                         "hlo"}, (
      proc.stdout)
  assert sum(int(v) for v in limits.values()) <= 570
  assert not (tmp_path / "r").exists()


def test_the_gpu_plan_runs_end_to_end_in_its_cpu_dry_run(tmp_path):
  """`make gpu`'s script, every step, on this CPU with tiny shapes: each step exits 0 and leaves
  its files in the one results folder, ending with a kernel default table, and GPU_PLAN_ARCHIVE
  holds the whole folder (what a device command carries back)."""
  out, archive = tmp_path / "r", tmp_path / "results.tgz"
  env = dict(os.environ, GPU_PLAN_DRY_RUN="1", PYTHON=sys.executable, GPU_PLAN_SCALE="1",
             GPU_PLAN_ARCHIVE=str(archive))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(["bash", "tools/gpu_plan.sh", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  steps = (out / "steps.txt").read_text()
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  for name in ("info", "kernels", "kernels-lenient", "parity", "bandwidth", "bench-kernels",
               "sweep", "hlo", "record-defaults"):
    assert f"{name} rc=0" in steps, steps
  assert {p.name for p in (out / "hlo").iterdir()} == {
      "softmax-float32-64x128-jaxsoftmax.txt", "softmax-float32-64x128-jax.nn.txt"}
  assert (out / "kernels.xml").exists() and (out / "parity" / "parity.md").exists()
  assert (out / "kernels-deprecation-ignored.xml").exists()
  assert list(out.glob("sweep-*.json")) and list(out.glob("sweep-*.png"))
  table = json.loads((out / "defaults.json").read_text())
  assert table["runs"][-1]["device_kind"] == "cpu" and table["entries"] == []
  assert table["runs"][-1]["outcome"] == "no compiled-kernel test ran"
  with tarfile.open(archive) as tar:
    names = {os.path.normpath(n) for n in tar.getnames()}
    packed_steps = tar.extractfile("./steps.txt").read().decode()
  on_disk = {os.path.relpath(p, out) for p in map(str, out.rglob("*"))}
  assert names - {"."} == on_disk and packed_steps == steps
  assert not archive.with_name("results.tgz.part").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the plan is a bash script")
def test_the_gpu_plan_refuses_an_archive_inside_its_results_folder(tmp_path):
  """A .tgz written into the folder it packs would pack its own partial self."""
  env = dict(os.environ, GPU_PLAN_LIST="1", GPU_PLAN_ARCHIVE=str(tmp_path / "r" / "all.tgz"))
  proc = subprocess.run(["bash", "tools/gpu_plan.sh", str(tmp_path / "r")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 2 and "GPU_PLAN_ARCHIVE must be outside" in proc.stderr
