"""Times jaxsoftmax at another git revision beside the working tree, in one process, interleaved.

For refactors that promise "no slowdown": the other revision's package is exported with
``git archive``, renamed ``jaxsoftmax_<rev>`` (its own imports rewritten to match), and both are
timed on the same inputs by the benchmark's interleaved, rotated timer, fwd+bwd under one jit.
Prints one row per (op, shape) with the medians and the ratio old / new (> 1: the working tree is
faster), and their geometric mean.

  .venv/bin/python tools/compare_revisions.py fff89ea [--reps 21] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).parents[1]
CASES = [("softmax", (4096, 1024)), ("softmax", (1024, 32768)), ("softmax", (65536, 10)),
         ("log_softmax", (4096, 1024)), ("log_softmax", (1024, 32768)),
         ("log_softmax", (65536, 10)),
         ("cross_entropy", (4096, 1024)), ("cross_entropy", (1024, 32768)),
         ("cross_entropy", (65536, 10)),
         ("linear_cross_entropy", (2048, 512, 32768))]


def export(rev: str, into: pathlib.Path) -> str:
  """The package at ``rev`` as ``jaxsoftmax_<rev>`` under ``into``; returns the module name."""
  name = "jaxsoftmax_" + re.sub(r"\W", "_", rev)
  data = subprocess.run(["git", "archive", rev, "jaxsoftmax"], cwd=ROOT, check=True,
                        capture_output=True).stdout
  with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    tar.extractall(into, filter="data")
  (into / "jaxsoftmax").rename(into / name)
  for path in (into / name).rglob("*.py"):
    text = path.read_text()
    path.write_text(re.sub(r"\bjaxsoftmax(?=[.\s])", name, text))
  return name


def loss(module, op):
  if op in ("softmax", "log_softmax"):
    fn = getattr(module, op)
    return lambda x, w, labels: fn(x).astype("float32").sum() * 1e-3
  if op == "cross_entropy":
    return lambda x, w, labels: module.cross_entropy(x, labels)
  return lambda x, w, labels: module.linear_cross_entropy(x, w, labels)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("rev", help="the other revision, e.g. a commit before a refactor")
  parser.add_argument("--reps", type=int, default=21)
  parser.add_argument("--rounds", type=int, default=3, help="timing rounds; medians over all")
  args = parser.parse_args()
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  import jaxsoftmax  # noqa: PLC0415
  from jaxsoftmax.bench import time_interleaved  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as tmp:
    name = export(args.rev, pathlib.Path(tmp))
    sys.path.insert(0, tmp)
    old = importlib.import_module(name)
    rng = np.random.default_rng(0)
    print(f"{'op':22} {'shape':18} {args.rev + ' ms':>12} {'new ms':>9} {'old/new':>8}")
    ratios = []
    for op, shape in CASES:
      if op == "linear_cross_entropy":
        n, d, v = shape
        x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((d, v)) / math.sqrt(d), jnp.float32)
      else:
        n, v = shape
        x, w = jnp.asarray(rng.standard_normal(shape) * 2, jnp.float32), None
      labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
      calls = {}
      for tag, module in (("old", old), ("new", jaxsoftmax)):
        argnums = (0, 1) if w is not None else 0
        f = jax.jit(jax.value_and_grad(loss(module, op), argnums=argnums))
        jax.block_until_ready(f(x, w, labels))
        calls[tag] = lambda f=f: jax.block_until_ready(f(x, w, labels))
      times = {"old": [], "new": []}
      for _ in range(args.rounds):
        for tag, t in time_interleaved(calls, args.reps, budget_s=30).items():
          times[tag] += t
      old_ms, new_ms = (float(np.median(times[t])) * 1e3 for t in ("old", "new"))
      ratios.append(old_ms / new_ms)
      print(f"{op:22} {'x'.join(map(str, shape)):18} {old_ms:12.2f} {new_ms:9.2f} "
            f"{old_ms / new_ms:8.2f}", flush=True)
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"geometric mean old/new: {geomean:.3f}; worst {min(ratios):.2f}, best {max(ratios):.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
