"""Issue 17's table, for any checkout: peer time / jaxsoftmax time, fwd+bwd float32, at the three
shapes of the issue, each figure the median over fresh processes of `jaxsoftmax bench` (peers
interleaved, medians of 11 calls). Run it for the old tree and the new one:

  .venv/bin/python benchmarks/issue17_before_after.py --tree /path/to/old --runs 3
  .venv/bin/python benchmarks/issue17_before_after.py --tree . --runs 3

or both in one call, their processes interleaved (old, new, old, new, ...), so a slow spell of
this shared machine falls on both:

  .venv/bin/python benchmarks/issue17_before_after.py --trees /path/to/old . --runs 3
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

SHAPES = ["4096x1024", "1024x32768", "65536x10"]
PEER = {"softmax": "jax.nn", "log_softmax": "jax.nn", "cross_entropy": "optax"}


def one_run(tree: pathlib.Path) -> dict:
  with tempfile.TemporaryDirectory() as out:
    cmd = [sys.executable, "-m", "jaxsoftmax.cli", "bench", "--ops", *PEER, "--shapes", *SHAPES,
           "--dtypes", "float32", "--modes", "fwd+bwd", "--impls", "jax.nn", "optax",
           "--reps", "11", "--budget", "5", "--rss", "none", "--out", out]
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(cmd, cwd=out, env=env, check=True, capture_output=True)
    (path,) = pathlib.Path(out).glob("*.json")
    doc = json.loads(path.read_text())
  ms = {(r["op"], "x".join(map(str, r["shape"])), r["impl"]): r["median_ms"] for r in doc["rows"]
        if r["status"] == "ok"}
  return {(op, s): ms[(op, s, PEER[op])] / ms[(op, s, "jaxsoftmax")] for op in PEER
          for s in SHAPES}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--tree", default=".", help="the checkout whose jaxsoftmax is timed")
  p.add_argument("--runs", type=int, default=3, help="fresh processes per figure")
  p.add_argument("--trees", nargs="+", help="several checkouts, their runs interleaved")
  args = p.parse_args()
  trees = [pathlib.Path(t).resolve() for t in (args.trees or [args.tree])]
  runs = {t: [] for t in trees}
  for _ in range(args.runs):
    for t in trees:
      runs[t].append(one_run(t))
  for t in trees:
    report(t, runs[t])


def report(tree: pathlib.Path, runs: list[dict]) -> None:
  print(f"tree {tree}: peer / jaxsoftmax, fwd+bwd float32, median of {len(runs)} processes")
  print("| op | " + " | ".join(f"({s.replace('x', ', ')})" for s in SHAPES) + " |")
  print("|---|" + "---|" * len(SHAPES))
  all_ratios = []
  for op in PEER:
    cells = []
    for s in SHAPES:
      values = [r[(op, s)] for r in runs]
      all_ratios.append(statistics.median(values))
      cells.append(f"{statistics.median(values):.2f}x ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"| {op} vs {PEER[op]} | " + " | ".join(cells) + " |")
  geo = statistics.geometric_mean(all_ratios)
  print(f"geometric mean {geo:.2f}x, worst {min(all_ratios):.2f}x")


if __name__ == "__main__":
  main()
