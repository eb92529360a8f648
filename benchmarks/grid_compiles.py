"""Where the parity grid's time goes: each case of the chosen ops run as the grid runs it
(``jaxsoftmax.parity.runner.run_case`` on the CPU), timed, with the XLA compilations it triggers
counted by name (``jax_log_compiles``). For the test suite's time (benchmarks/NOTES.md, eleventh
pass):

    PYTHONPATH=. python benchmarks/grid_compiles.py --ops adaptive_log_softmax_with_loss \\
        nn.AdaptiveLogSoftmaxWithLoss nn.LinearCrossEntropyLoss
    PYTHONPATH=. python benchmarks/grid_compiles.py --every 30     # a sample of every op
"""

from __future__ import annotations

import argparse
import collections
import logging
import time

import jax

from jaxsoftmax.parity import grid, runner


class _Compiles(logging.Handler):
  def __init__(self):
    super().__init__()
    self.names = collections.Counter()

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("Compiling "):
      self.names[message.split(" ")[1]] += 1


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--ops", nargs="+", help="grid ops (default: every op)")
  ap.add_argument("--every", type=int, default=1, help="every n-th case of each op")
  a = ap.parse_args()
  by_op = collections.defaultdict(list)
  for case in grid.cases():
    by_op[case.op].append(case)
  unknown = set(a.ops or ()) - set(by_op)
  if unknown:
    ap.error(f"not grid ops: {sorted(unknown)}; the grid has {sorted(by_op)}")
  jax.config.update("jax_log_compiles", True)
  counter = _Compiles()
  logging.getLogger("jax").addHandler(counter)
  logging.getLogger("jax").setLevel(logging.WARNING)
  total_s = total_n = total_compiles = failed = 0
  for op in a.ops or sorted(by_op):
    cases = by_op[op][::a.every]
    counter.names.clear()
    t0 = time.perf_counter()
    for case in cases:
      failed += not runner.run_case(case, "cpu").ok
    seconds = time.perf_counter() - t0
    n = sum(counter.names.values())
    total_s, total_n, total_compiles = total_s + seconds, total_n + len(cases), total_compiles + n
    print(f"{op:34s} {len(cases):4d} cases {seconds:7.1f} s {n:5d} compilations "
          f"{counter.names.most_common(3)}", flush=True)
  print(f"all: {total_n} cases, {total_s:.1f} s, {total_compiles} compilations "
        f"({total_compiles / max(total_n, 1):.2f} per case), {failed} failed")


if __name__ == "__main__":
  main()
