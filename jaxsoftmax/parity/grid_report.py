"""``jaxsoftmax parity``: the whole grid against torch, as a table, JSON and Markdown.

One row per (op, dtype, device) with the worst errors over its cases; PASS only if every case
passes. Written atomically to ``parity.json`` and ``parity.md``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import pathlib
import platform as platform_mod
from collections.abc import Sequence

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jaxsoftmax._src import dispatch, files
from jaxsoftmax.parity import grid, runner
from jaxsoftmax.parity.compare import TOLERANCES

__all__ = ["run_grid", "summarise", "markdown", "versions"]

COLUMNS = ("op", "dtype", "device", "cases", "fwd max abs", "fwd max rel", "grad max abs",
           "grad max rel", "result")


def summarise(results: list[runner.CaseResult]) -> list[dict]:
  """One row per (op, dtype, device): worst errors over its cases, PASS only if all pass."""
  groups: dict[tuple, list[runner.CaseResult]] = collections.defaultdict(list)
  for r in results:
    groups[(r.case.op, r.case.dtype, r.platform)].append(r)
  rows = []
  for (op, dtype, device), rs in groups.items():
    fwd = [c for r in rs for c in r.comparisons if c.kind == "output"]
    grad = [c for r in rs for c in r.comparisons if c.kind == "grad"]
    failed = [r for r in rs if not r.ok]
    rows.append({
        "op": op, "dtype": dtype, "device": device, "cases": len(rs),
        "reference": rs[0].reference,
        "fwd_max_abs": max((c.max_abs for c in fwd), default=0.0),
        "fwd_max_rel": max((c.max_rel for c in fwd), default=0.0),
        "grad_max_abs": max((c.max_abs for c in grad), default=0.0),
        "grad_max_rel": max((c.max_rel for c in grad), default=0.0),
        "passed": not failed, "failures": [r.report() for r in failed],
    })
  return rows


def markdown(rows: list[dict], meta: dict) -> str:
  lines = ["# jaxsoftmax parity report", "",
           f"{meta['timestamp']} · jax {meta['versions']['jax']} · torch "
           f"{meta['versions']['torch']} · devices {', '.join(meta['devices'])}", "",
           "Tolerances (torch.testing.assert_close defaults): " + ", ".join(
               f"{k} rtol={v.rtol:g} atol={v.atol:g}" for k, v in TOLERANCES.items()), "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for r in rows:
    lines.append(f"| {r['op']} | {r['dtype']} | {r['device']} | {r['cases']} | "
                 f"{r['fwd_max_abs']:.2e} | {r['fwd_max_rel']:.2e} | {r['grad_max_abs']:.2e} | "
                 f"{r['grad_max_rel']:.2e} | {'PASS' if r['passed'] else 'FAIL'} |")
  failures = [f for r in rows for f in r["failures"]]
  if failures:
    lines += ["", "## Failures", "", "```", *failures, "```"]
  return "\n".join(lines) + "\n"


def versions() -> dict:
  import torch  # noqa: PLC0415 - the parity command needs torch; import it only here
  import flax  # noqa: PLC0415
  import jaxsoftmax  # noqa: PLC0415
  import jaxlib  # noqa: PLC0415
  return {"jaxsoftmax": jaxsoftmax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "torch": torch.__version__, "numpy": np.__version__,
          "python": platform_mod.python_version()}


def run_grid(console: Console, *, out="parity-report", ops: Sequence[str] | None = None,
             dtypes: Sequence[str] | None = None, devices: Sequence[str] | None = None,
             implementation: str = "auto") -> int:
  """Runs the grid on every platform asked for (default: all present), prints the table, writes
  ``out/parity.json`` and ``out/parity.md``; returns the exit status (1 on any failure, 2 when
  torch or a device is missing)."""
  try:
    found = versions()
  except ImportError:
    console.print("[red]jaxsoftmax parity needs torch: pip install 'jaxsoftmax[parity]'[/red]")
    return 2
  platforms = runner.platforms()
  for p in devices or []:
    if p not in platforms:
      console.print(f"[red]device {p!r} not present; JAX sees {platforms}[/red]")
      return 2
  platforms = devices or platforms
  cases = grid.cases(ops=ops, dtypes=dtypes)
  jobs = [(c, p) for p in platforms for c in cases]
  results = []
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True) as progress:
    task = progress.add_task("parity", total=len(jobs))
    impl = implementation
    with contextlib.nullcontext() if impl == "auto" else dispatch.prefer(impl):
      for case, plat in jobs:
        progress.update(task, description=f"{case.op} {case.dtype} {plat}")
        results.append(runner.run_case(case, plat))
        progress.advance(task)
  rows = summarise(results)
  meta = {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "versions": found, "devices": [str(runner.device_for(p)) for p in platforms],
          "implementation": implementation,
          "tolerances": {k: vars(v) for k, v in TOLERANCES.items()}}
  table = Table(title=f"jaxsoftmax vs torch: {len(results)} cases")
  for col in COLUMNS:
    table.add_column(col, justify="right" if "max" in col or col == "cases" else "left")
  for r in rows:
    table.add_row(r["op"], r["dtype"], r["device"], str(r["cases"]), f"{r['fwd_max_abs']:.1e}",
                  f"{r['fwd_max_rel']:.1e}", f"{r['grad_max_abs']:.1e}", f"{r['grad_max_rel']:.1e}",
                  "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]")
  console.print(table)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  files.write_text(out / "parity.json", json.dumps({**meta, "rows": rows}, indent=2))
  files.write_text(out / "parity.md", markdown(rows, meta))
  failed = [r for r in results if not r.ok]
  for r in failed[:20]:
    console.print(r.report(), markup=False)
  verdict = f"{len(results) - len(failed)} passed, {len(failed)} failed"
  console.print(f"{verdict}; report written to {out / 'parity.json'} and {out / 'parity.md'}")
  return 1 if failed else 0
