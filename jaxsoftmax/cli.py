"""The ``jaxsoftmax`` command: ``parity`` (the grid against torch), ``train`` (the tutorial's
classifiers) and ``bench`` (jaxsoftmax beside its peers)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import pathlib
import platform as platform_mod
import sys

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jaxsoftmax import parity
from jaxsoftmax.parity import grid, ops, runner
from jaxsoftmax._src import dispatch, files

COLUMNS = ("op", "dtype", "device", "cases", "fwd max abs", "fwd max rel", "grad max abs",
           "grad max rel", "result")


def _summarise(results: list[runner.CaseResult]) -> list[dict]:
  """One row per (op, dtype, device): worst errors over its cases, PASS only if all pass."""
  groups: dict[tuple, list[runner.CaseResult]] = collections.defaultdict(list)
  for r in results:
    groups[(r.case.op, r.case.dtype, r.platform)].append(r)
  rows = []
  for (op, dtype, device), rs in groups.items():
    fwd = [c for r in rs for c in r.comparisons if c.name == "forward"]
    grad = [c for r in rs for c in r.comparisons if c.name.startswith("grad")]
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


def _markdown(rows: list[dict], meta: dict) -> str:
  lines = [f"# jaxsoftmax parity report", "",
           f"{meta['timestamp']} · jax {meta['versions']['jax']} · torch "
           f"{meta['versions']['torch']} · devices {', '.join(meta['devices'])}", "",
           "Tolerances (torch.testing.assert_close defaults): " + ", ".join(
               f"{k} rtol={v.rtol:g} atol={v.atol:g}" for k, v in parity.TOLERANCES.items()), "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for r in rows:
    lines.append(f"| {r['op']} | {r['dtype']} | {r['device']} | {r['cases']} | "
                 f"{r['fwd_max_abs']:.2e} | {r['fwd_max_rel']:.2e} | {r['grad_max_abs']:.2e} | "
                 f"{r['grad_max_rel']:.2e} | {'PASS' if r['passed'] else 'FAIL'} |")
  failures = [f for r in rows for f in r["failures"]]
  if failures:
    lines += ["", "## Failures", "", "```", *failures, "```"]
  return "\n".join(lines) + "\n"


def _versions() -> dict:
  import torch  # noqa: PLC0415 - the parity command needs torch; import it only here
  import flax  # noqa: PLC0415
  import jaxsoftmax  # noqa: PLC0415
  import jaxlib  # noqa: PLC0415
  return {"jaxsoftmax": jaxsoftmax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "torch": torch.__version__, "numpy": np.__version__,
          "python": platform_mod.python_version()}


def run_parity(args: argparse.Namespace, console: Console) -> int:
  try:
    versions = _versions()
  except ImportError:
    console.print("[red]jaxsoftmax parity needs torch: pip install 'jaxsoftmax[torch]'[/red]")
    return 2
  platforms = runner.platforms()
  for p in args.devices or []:
    if p not in platforms:
      console.print(f"[red]device {p!r} not present; JAX sees {platforms}[/red]")
      return 2
  platforms = args.devices or platforms
  cases = grid.cases(ops=args.ops, dtypes=args.dtypes)
  jobs = [(c, p) for p in platforms for c in cases]
  results = []
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True) as progress:
    task = progress.add_task("parity", total=len(jobs))
    impl = args.implementation
    with contextlib.nullcontext() if impl == "auto" else dispatch.prefer(impl):
      for case, plat in jobs:
        progress.update(task, description=f"{case.op} {case.dtype} {plat}")
        results.append(runner.run_case(case, plat))
        progress.advance(task)
  rows = _summarise(results)
  meta = {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "versions": versions, "devices": [str(runner.device_for(p)) for p in platforms],
          "implementation": args.implementation,
          "tolerances": {k: vars(v) for k, v in parity.TOLERANCES.items()}}
  table = Table(title=f"jaxsoftmax vs torch: {len(results)} cases")
  for col in COLUMNS:
    table.add_column(col, justify="right" if "max" in col or col == "cases" else "left")
  for r in rows:
    table.add_row(r["op"], r["dtype"], r["device"], str(r["cases"]), f"{r['fwd_max_abs']:.1e}",
                  f"{r['fwd_max_rel']:.1e}", f"{r['grad_max_abs']:.1e}", f"{r['grad_max_rel']:.1e}",
                  "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]")
  console.print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  files.write_text(out / "parity.json", json.dumps({**meta, "rows": rows}, indent=2))
  files.write_text(out / "parity.md", _markdown(rows, meta))
  failed = [r for r in results if not r.ok]
  for r in failed[:20]:
    console.print(r.report(), markup=False)
  verdict = f"{len(results) - len(failed)} passed, {len(failed)} failed"
  console.print(f"{verdict}; report written to {out / 'parity.json'} and {out / 'parity.md'}")
  return 1 if failed else 0


def run_train(args: argparse.Namespace, console: Console) -> int:
  from jaxsoftmax.tutorial import training  # noqa: PLC0415 - keeps `jaxsoftmax parity` light

  epochs = args.epochs if args.epochs is not None else {"income": 10, "digits": 15}[args.task]
  out = args.out or f"runs/{args.task}"
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True) as progress:
    result = training.fit(args.task, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, out=out, mnist_dir=args.mnist_dir,
                          compare_torch=args.compare_torch, max_steps=args.max_steps,
                          progress=progress, checkpoint_every=args.checkpoint_every,
                          resume=args.resume)
  console.print(f"{args.task}: held-out accuracy {result.test_accuracy:.4f} after "
                f"{result.epochs} epochs, {result.seconds_per_epoch:.2f} s/epoch")
  console.print(f"temperature scaling: T={result.temperature:.3f}; NLL {result.nll_before:.4f} -> "
                f"{result.nll_after:.4f}; ECE {result.ece_before:.4f} -> {result.ece_after:.4f}")
  if result.max_divergence is not None:
    console.print(f"torch twin, same init and batches: largest loss difference "
                  f"{result.max_divergence:.2e} (curves in {out}/loss_curves.png)")
  console.print(f"checkpoint, metrics and reliability diagrams in {out}/")
  return 0


def run_bench(args: argparse.Namespace, console: Console) -> int:
  from jaxsoftmax import bench  # noqa: PLC0415

  if args.chart:
    path = pathlib.Path(args.chart)
    bench.chart(json.loads(path.read_text()), path.with_suffix(".png"))
    console.print(f"wrote {path.with_suffix('.png')}")
    return 0
  try:
    shapes = bench.parse_shapes(args.shapes, args.ops) or bench.PRESETS[args.preset]
  except ValueError as e:
    console.print(f"[red]{e}[/red]")
    return 2
  config = bench.Config(ops=args.ops, shapes=shapes, dtypes=args.dtypes, modes=args.modes,
                        reps=args.reps, rss=args.rss, budget_s=args.budget, impls=args.impls)
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True) as progress:
    doc = bench.run(config, progress=progress)
  path = bench.write(doc, args.out, overwrite=args.overwrite, append=args.append)
  console.print(f"{doc['device']}: copy bandwidth {doc['copy_gbps']:.1f} GB/s (read + write)")
  table = Table("op", "impl", "shape", "dtype", "mode", "median ms", "p20-p80 ms", "GB/s",
                "of copy", "XLA temp MiB", "peak RSS MiB", title="jaxsoftmax bench")
  for r in doc["rows"]:
    if r["status"] != "ok":
      table.add_row(r["op"], r["impl"], "x".join(map(str, r["shape"])), r["dtype"], r["mode"],
                    r["status"], "", "", "", "", "")
      continue
    table.add_row(r["op"], r["impl"], "x".join(map(str, r["shape"])), r["dtype"], r["mode"],
                  f"{r['median_ms']:.2f}", f"{r['p20_ms']:.2f}-{r['p80_ms']:.2f}",
                  f"{r['gbps']:.1f}", f"{r['copy_fraction']:.0%}",
                  f"{r['xla_temp_mb']:.1f}" if "xla_temp_mb" in r else "",
                  f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "")
  console.print(table)
  for dtype in args.dtypes:
    ups = bench.speedups(doc, dtype=dtype)
    if not ups:
      continue
    speed = Table("op", "shape", "jaxsoftmax ms", "fastest peer", "peer ms", "speedup",
                  title=f"fwd+bwd {dtype}: fastest peer / jaxsoftmax (> 1: jaxsoftmax faster)")
    for u in ups:
      speed.add_row(u["op"], "x".join(map(str, u["shape"])), f"{u['jaxsoftmax_ms']:.2f}",
                    u["fastest_peer"], f"{u['peer_ms']:.2f}", f"{u['speedup']:.2f}")
    console.print(speed)
    for op in dict.fromkeys(u["op"] for u in ups):
      console.print(f"{op} {dtype}: geometric-mean speedup "
                    f"{bench.geomean(u['speedup'] for u in ups if u['op'] == op):.2f}")
  console.print(f"rows written to {path} and {path.with_suffix('.png')}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxsoftmax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("parity", help="compare every op with torch over the op x dtype grid")
  p.add_argument("--out", default="parity-report", help="directory for parity.json and parity.md")
  p.add_argument("--ops", nargs="+", choices=sorted(ops.OPS), metavar="OP",
                 help=f"restrict to these ops (default: all of {', '.join(sorted(ops.OPS))})")
  p.add_argument("--dtypes", nargs="+", choices=grid.DTYPES, help="restrict to these dtypes")
  p.add_argument("--devices", nargs="+", choices=("cpu", "gpu", "tpu"),
                 help="JAX platforms to test (default: every one present)")
  p.add_argument("--implementation", choices=("auto", "xla", "pallas"), default="auto",
                 help="kernels behind the ops: auto (Pallas on GPU/TPU), xla, or pallas wherever "
                      "the kernels apply (Pallas' interpreter on CPU: slow)")
  p.set_defaults(func=run_parity)
  t = sub.add_parser("train", help="train the tutorial's income MLP or digits CNN on real data")
  t.add_argument("task", choices=("income", "digits"))
  t.add_argument("--epochs", type=int, help="default: 10 (income), 15 (digits)")
  t.add_argument("--batch-size", type=int, default=64)
  t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the tutorial's)")
  t.add_argument("--seed", type=int, default=0)
  t.add_argument("--out", help="output directory (default runs/<task>)")
  t.add_argument("--mnist-dir", help="directory of the full MNIST IDX files (digits)")
  t.add_argument("--compare-torch", action="store_true",
                 help="train the torch twin from the same weights on the same batches")
  t.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
  t.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                 help="also save the full training state every STEPS steps (always: each epoch)")
  t.add_argument("--resume", action="store_true",
                 help="continue from the newest verified state in OUT/state, bitwise identically")
  t.set_defaults(func=run_train)
  from jaxsoftmax.bench import DTYPES, MODES, OPS, PEERS, SELF_VARIANTS  # noqa: PLC0415 - numpy only
  b = sub.add_parser("bench", help="time jaxsoftmax beside jax.nn, optax, tokamax and torch")
  b.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), metavar="OP",
                 help=f"default: all of {', '.join(OPS)}")
  b.add_argument("--shapes", nargs="+", metavar="NxV|NxDxV",
                 help="override the default shapes (NxV for the softmax family and "
                      "cross_entropy, NxDxV for linear_cross_entropy)")
  b.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                 help="shape set: cpu (issue 4's CPU targets) or gpu (the Triton tutorial's sweep "
                      "at M=4096, (4096, 32768), (16384, 131072), cross_entropy at N=8192 with "
                      "V up to 262144); --shapes overrides it")
  b.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
  b.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  b.add_argument("--impls", nargs="+", metavar="IMPL",
                 choices=sorted({p for peers in PEERS.values() for p in peers}
                                | set(SELF_VARIANTS)),
                 help="only these peers beside jaxsoftmax (default: all that run here)")
  b.add_argument("--reps", type=int, default=15, help="timed calls per provider (at most)")
  b.add_argument("--budget", type=float, default=20.0,
                 help="seconds of timed calls per configuration; slow ones get fewer reps (>= 3)")
  b.add_argument("--rss", choices=("none", "linear", "all"), default="linear",
                 help="peak RSS of a subprocess per provider: none, linear_cross_entropy only, all")
  b.add_argument("--out", default="benchmarks/results", help="directory for the JSON and PNG")
  b.add_argument("--overwrite", action="store_true",
                 help="replace today's results file instead of writing a time-stamped one")
  b.add_argument("--chart", metavar="RESULTS.json",
                 help="only (re)draw the PNG chart of a results file, e.g. one from a GPU box")
  b.add_argument("--append", action="store_true",
                 help="merge the rows into today's results file (split a long run into commands)")
  b.set_defaults(func=run_bench)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  console = Console()
  if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
    console = Console(width=140)
  return args.func(args, console)


if __name__ == "__main__":
  sys.exit(main())
