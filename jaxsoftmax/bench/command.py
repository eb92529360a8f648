"""``jaxsoftmax bench``: run, print, write."""

from __future__ import annotations

import json
import pathlib

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jaxsoftmax.bench import config, measure, report

__all__ = ["bench", "bench_sharded", "bench_sweep", "record_defaults"]


def bench_sharded(console: Console, *, out, shapes=None, reps: int = 5) -> int:
  """``jaxsoftmax bench --sharded``: :mod:`jaxsoftmax.bench.sharded` on 8 host devices."""
  from jaxsoftmax.bench import sharded  # noqa: PLC0415

  n, d, v = 4096, 256, 32768
  if shapes:
    try:
      n, d, v = (int(s) for s in shapes[0].lower().split("x"))
    except ValueError:
      console.print(f"[red]--sharded takes one shape NxDxV; got {shapes}[/red]")
      return 2
  with console.status("compiling and timing on 8 host devices..."):
    doc = sharded.run_in_child(out, n=n, d=d, v=v, reps=reps)
  table = Table("layout", "P", "provider", "temp MiB/device", "collectives", "kinds",
                "largest MiB", "median ms", title="sharded linear cross-entropy")
  for r in doc["rows"]:
    table.add_row(r["layout"], str(r["devices"]), r["provider"], f"{r['temp_mib']:.1f}",
                  str(r["collectives"]), ", ".join(r["collective_kinds"]) or "-",
                  f"{r['largest_collective_mib']:.2f}", f"{r['median_ms']:.0f}")
  console.print(table)
  console.print(f"wrote {out}/sharded.json, sharded.md, sharded.png")
  return 0


def bench(console: Console, *, ops, shapes, preset, dtypes, modes, impls, reps, budget, rss, out,
          overwrite=False, append=False, chart_only=None) -> int:
  """Runs the benchmark (or only redraws a results file's chart), prints the tables, writes the
  JSON and PNG; returns the exit status."""
  if chart_only:
    path = pathlib.Path(chart_only)
    doc = json.loads(path.read_text())
    if doc.get("kind") == "sweep":  # a sweep's heat maps, e.g. of one a time limit stopped
      from jaxsoftmax.bench import sweep  # noqa: PLC0415

      drawn = sweep.heatmaps(doc, path.with_suffix(""))
      console.print(f"wrote {', '.join(str(d) for d in drawn)}")
      return 0
    report.chart(doc, path.with_suffix(".png"))
    console.print(f"wrote {path.with_suffix('.png')}")
    return 0
  try:
    shape_set = config.parse_shapes(shapes, ops) or config.PRESETS[preset]
  except ValueError as e:
    console.print(f"[red]{e}[/red]")
    return 2
  setup = config.Config(ops=ops, shapes=shape_set, dtypes=dtypes, modes=modes,
                        reps=reps, rss=rss, budget_s=budget, impls=impls)
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True) as progress:
    doc = measure.run(setup, progress=progress)
  path = report.write(doc, out, overwrite=overwrite, append=append)
  console.print(f"{doc['device']}: copy bandwidth {doc['copy_gbps']:.1f} GB/s (read + write)")
  table = Table("op", "impl", "shape", "dtype", "mode", "median ms", "p20-p80 ms", "GB/s",
                "of copy", "XLA temp MiB", "peak RSS MiB", title="jaxsoftmax bench")
  for r in doc["rows"]:
    if r["status"] != "ok":
      table.add_row(escape(r["op"]), escape(r["impl"]), "x".join(map(str, r["shape"])),
                    r["dtype"], r["mode"], escape(r["status"]), "", "", "", "", "")
      continue
    table.add_row(escape(r["op"]), escape(r["impl"]), "x".join(map(str, r["shape"])), r["dtype"],
                  r["mode"], f"{r['median_ms']:.2f}", f"{r['p20_ms']:.2f}-{r['p80_ms']:.2f}",
                  f"{r['gbps']:.1f}", f"{r['copy_fraction']:.0%}",
                  f"{r['xla_temp_mb']:.1f}" if "xla_temp_mb" in r else "",
                  f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "")
  console.print(table)
  for dtype in dtypes:
    ups = report.speedups(doc, dtype=dtype)
    if not ups:
      continue
    speed = Table("op", "shape", "jaxsoftmax ms", "fastest peer", "peer ms", "speedup",
                  title=f"fwd+bwd {dtype}: fastest peer / jaxsoftmax (> 1: jaxsoftmax faster)")
    for u in ups:
      speed.add_row(escape(u["op"]), "x".join(map(str, u["shape"])), f"{u['jaxsoftmax_ms']:.2f}",
                    u["fastest_peer"], f"{u['peer_ms']:.2f}", f"{u['speedup']:.2f}")
    console.print(speed)
    for op in dict.fromkeys(u["op"] for u in ups):
      console.print(escape(f"{op} {dtype}: geometric-mean speedup "
                           f"{report.geomean(u['speedup'] for u in ups if u['op'] == op):.2f}"))
  console.print(f"rows written to {path} and {path.with_suffix('.png')}")
  return 0


def bench_sweep(console: Console, *, ops, dtypes, modes, rows, cols, budget, out,
                fresh: bool = False) -> int:
  """``jaxsoftmax bench --sweep``: :mod:`jaxsoftmax.bench.sweep`, its summary, JSON and heat maps."""
  from jaxsoftmax.bench import sweep  # noqa: PLC0415

  ops = ops or list(sweep.SWEEP_OPS)
  unknown = sorted(set(ops) - set(sweep.SWEEP_OPS))
  if unknown:
    console.print(escape(f"--sweep has no {', '.join(unknown)}; it takes "
                         f"{', '.join(sweep.SWEEP_OPS)}"), style="red")
    return 2
  if min(rows or [1]) < 1 or min(cols or [1]) < 1:
    console.print(f"--rows and --cols must be positive; got {rows} and {cols}", style="red")
    return 2
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True) as progress:
    runner = sweep.run_fresh if fresh else sweep.run
    doc = runner(ops, dtypes, modes, rows=rows, cols=cols,
                 budget_s=0.4 if budget is None else budget, progress=progress,
                 partial=lambda part: sweep.write(part, out, charts=False))
  path = sweep.write(doc, out)
  s = sweep.summary(doc)
  table = Table("op", "dtype", "mode", "shapes", "geomean", "worst", "worst shape",
                title=f"{doc['device']}: peer time / jaxsoftmax time (> 1: jaxsoftmax faster)")
  for g in s["groups"]:
    table.add_row(escape(g["op"]), g["dtype"], g["mode"], str(g["n"]), f"{g['geomean']:.2f}",
                  f"{g['worst']:.2f}", "x".join(map(str, g["worst_shape"])))
  console.print(table)
  verdict = "[green]passed[/green]" if s["passed"] else "[red]not passed[/red]"
  console.print(f"{s['n']} ratios: geometric mean {s['geomean']:.3f} (target {s['target']}), "
                f"worst {s['worst']:.3f} (floor {s['floor']}), {len(s['below_floor'])} below the "
                f"floor: {verdict}")
  console.print("geometric mean by mode: " + ", ".join(
      f"{m} {g:.3f}" for m, g in s["geomean_by_mode"].items()))
  console.print(f"wrote {path} and its heat maps")
  return 0


def record_defaults(console: Console, *, results, kernels, out=None) -> int:
  """``jaxsoftmax bench --record-defaults RESULTS.json --kernels JUNIT.xml``: adds this device's
  run to the kernel default table (the package's own unless ``out``)."""
  from jaxsoftmax._src import files  # noqa: PLC0415
  from jaxsoftmax._src.kernels import defaults  # noqa: PLC0415

  if not kernels:
    console.print("[red]--record-defaults needs --kernels JUNIT.xml: the compiled-kernel tests "
                  "of the same device (a kernel that failed them is never a default)[/red]")
    return 2
  target = pathlib.Path(out) if out else defaults.TABLE
  try:
    doc = json.loads(pathlib.Path(results).read_text())
    xml = pathlib.Path(kernels).read_text()
    # A new file starts from the package's table, so other devices' entries carry over.
    start = target if target.exists() else defaults.TABLE
    old = json.loads(start.read_text()) if start.exists() else None
    table = defaults.record(doc, xml, table=old, source=pathlib.Path(results).name)
  except (OSError, ValueError, KeyError) as e:
    console.print(f"[red]--record-defaults: {type(e).__name__}: {e}[/red]")
    return 2
  files.write_text(target, json.dumps(table, indent=1) + "\n")
  run = table["runs"][-1]
  console.print(f"{run['device_kind']} (jax {run['jax']}): {run['outcome']}; "
                f"{len(table['entries'])} entries in {target}")
  for f in run["first_failures"]:
    console.print(f"  failed: {f}")
  return 0
