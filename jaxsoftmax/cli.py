"""The ``jaxsoftmax`` command: argument parsing only. ``parity`` runs the grid against torch
(:mod:`jaxsoftmax.parity.grid_report`) or a user's port (``--pair``, :mod:`jaxsoftmax.parity.pairs`),
``train`` a tutorial classifier
(:mod:`jaxsoftmax.tutorial.command`), ``bench`` jaxsoftmax beside its peers
(:mod:`jaxsoftmax.bench.command`). Each command's module is imported only when it runs."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console


def _parity(args: argparse.Namespace, console: Console) -> int:
  if args.pair:
    from jaxsoftmax.parity import pairs  # noqa: PLC0415

    return pairs.run_pair(console, args.pair, out=args.out, devices=args.devices)
  from jaxsoftmax.parity import grid_report  # noqa: PLC0415

  return grid_report.run_grid(console, out=args.out, ops=args.ops, dtypes=args.dtypes,
                         devices=args.devices, implementation=args.implementation)


def _train(args: argparse.Namespace, console: Console) -> int:
  from jaxsoftmax.tutorial import command  # noqa: PLC0415

  return command.train(console, args.task, epochs=args.epochs, out=args.out,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       mnist_dir=args.mnist_dir, compare_torch=args.compare_torch,
                       max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
                       resume=args.resume)


def _bench(args: argparse.Namespace, console: Console) -> int:
  from jaxsoftmax.bench import command  # noqa: PLC0415
  from rich.markup import escape  # noqa: PLC0415

  from jaxsoftmax.bench.config import OPS  # noqa: PLC0415

  if args.sharded:
    return command.bench_sharded(console, out=args.out, shapes=args.shapes,
                                 reps=min(args.reps, 5))
  if args.sweep:
    return command.bench_sweep(console, ops=args.ops, dtypes=args.dtypes, modes=args.modes,
                               rows=args.rows, cols=args.cols, budget=args.budget, out=args.out,
                               fresh=args.fresh_processes)
  if args.record_defaults:
    return command.record_defaults(console, results=args.record_defaults, kernels=args.kernels,
                                   out=args.defaults_out)
  ops = args.ops or list(OPS)
  unknown = sorted(set(ops) - set(OPS))
  if unknown:
    console.print(escape(f"--ops {' '.join(unknown)}: only with --sweep; the benchmark takes "
                         f"{', '.join(OPS)}"), style="red")
    return 2
  return command.bench(console, ops=ops, shapes=args.shapes, preset=args.preset,
                       dtypes=args.dtypes, modes=args.modes, impls=args.impls, reps=args.reps,
                       budget=20.0 if args.budget is None else args.budget, rss=args.rss,
                       out=args.out, overwrite=args.overwrite, append=args.append,
                       chart_only=args.chart)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxsoftmax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("parity", help="compare every op with torch over the op x dtype grid, or "
                                      "a port of your own with --pair")
  p.add_argument("--out", default="parity-report",
                 help="directory for parity.{json,md} (or pair.{json,md} with --pair)")
  p.add_argument("--pair", metavar="FILE.py:FACTORY",
                 help="compare your own JAX port with its torch original instead: FACTORY() "
                      "returns parity.Pair(jax, torch, inputs, options); run on every device "
                      "present (README, 'Test your own port')")
  from jaxsoftmax.parity import grid, ops  # noqa: PLC0415 - the grid's names, for --help

  p.add_argument("--ops", nargs="+", choices=sorted(ops.OPS), metavar="OP",
                 help=f"restrict to these ops (default: all of {', '.join(sorted(ops.OPS))})")
  p.add_argument("--dtypes", nargs="+", choices=grid.DTYPES, help="restrict to these dtypes")
  p.add_argument("--devices", nargs="+", choices=("cpu", "gpu", "tpu"),
                 help="JAX platforms to test (default: every one present)")
  p.add_argument("--implementation", choices=("auto", "xla", "pallas"), default="auto",
                 help="kernels behind the ops: auto (Pallas on GPU/TPU), xla, or pallas wherever "
                      "the kernels apply (Pallas' interpreter on CPU: slow)")
  p.set_defaults(func=_parity)
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
  t.set_defaults(func=_train)
  from jaxsoftmax.bench.config import DTYPES, MODES, OPS, PEERS, SELF_VARIANTS  # noqa: PLC0415
  b = sub.add_parser("bench", help="time jaxsoftmax beside jax.nn, optax, tokamax and torch")
  from jaxsoftmax.bench.sweep import COLS, ROWS, SWEEP_OPS  # noqa: PLC0415
  b.add_argument("--ops", nargs="+", choices=list(dict.fromkeys(OPS + SWEEP_OPS)), metavar="OP",
                 help=f"default: all of {', '.join(OPS)}; with --sweep all of "
                      f"{', '.join(SWEEP_OPS)}")
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
  b.add_argument("--budget", type=float, default=None,
                 help="seconds of timed calls per configuration; slow ones get fewer reps (>= 3) "
                      "(default 20, with --sweep 0.4)")
  b.add_argument("--rss", choices=("none", "linear", "all"), default="linear",
                 help="peak RSS of a subprocess per provider: none, linear_cross_entropy only, all")
  b.add_argument("--out", default="benchmarks/results", help="directory for the JSON and PNG")
  b.add_argument("--overwrite", action="store_true",
                 help="replace today's results file instead of writing a time-stamped one")
  b.add_argument("--chart", metavar="RESULTS.json",
                 help="only (re)draw the PNG chart of a results file, e.g. one from a GPU box "
                      "(a sweep's JSON: its heat maps)")
  b.add_argument("--sharded", action="store_true",
                 help="the sharded suite instead: linear_cross_entropy split over 1, 2, 4, 8 "
                      "host devices and dp x tp beside GSPMD's x @ w + optax (per-device memory, "
                      "collectives, time); --shapes takes one NxDxV (default 4096x256x32768)")
  b.add_argument("--append", action="store_true",
                 help="merge the rows into today's results file (split a long run into commands)")
  b.add_argument("--sweep", action="store_true",
                 help="the sweep instead: jaxsoftmax against its JAX peer (jax.nn, optax, "
                      "x @ w + optax) over --rows x --cols for every op, dtype and mode, "
                      "interleaved in one process; writes sweep-<device>-<date>.json and one "
                      "ratio heat map per dtype")
  b.add_argument("--fresh-processes", action="store_true",
                 help="--sweep: each (op, dtype) in a fresh child process (measured: the same "
                      "figures as one process, within run-to-run spread; benchmarks/NOTES.md)")
  b.add_argument("--rows", nargs="+", type=int, default=None, metavar="N",
                 help=f"--sweep's row counts (default {' '.join(map(str, ROWS))})")
  b.add_argument("--cols", nargs="+", type=int, default=None, metavar="V",
                 help=f"--sweep's row lengths (default {' '.join(map(str, COLS))}; shapes over "
                      "2^25 elements are left out)")
  b.add_argument("--record-defaults", metavar="RESULTS.json",
                 help="write the kernel default table from a results file of this device's "
                      "benchmark (the kernels beside jaxsoftmax[xla]) and --kernels, the junit XML "
                      "of its compiled-kernel tests (README, 'Kernel defaults')")
  b.add_argument("--kernels", metavar="JUNIT.xml",
                 help="with --record-defaults: the compiled-kernel tests' junit XML")
  b.add_argument("--defaults-out", metavar="TABLE.json", default=None,
                 help="with --record-defaults: where to write the table (default: the package's "
                      "own, jaxsoftmax/_src/kernels/defaults.json)")
  b.set_defaults(func=_bench)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  console = Console()
  if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
    console = Console(width=140)
  return args.func(args, console)


if __name__ == "__main__":
  sys.exit(main())
