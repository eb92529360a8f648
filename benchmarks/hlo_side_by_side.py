"""The compiled programs of jaxsoftmax and its JAX peer for one sweep cell, side by side: each
top-level fusion (kernel) with its shape, and whether XLA:CPU splits it over threads
(``outer_dimension_partitions``); ``--bodies NAME...`` prints those fusions' computations too.
For telling a cell whose programs differ from one where they are the same kernels and the ratio is
the machine's noise (issue 17, benchmarks/NOTES.md).

    PYTHONPATH=. python benchmarks/hlo_side_by_side.py cross_entropy float32 fwd+bwd 64x1024 \
        --bodies broadcast_multiply_fusion

``--dump DIR`` also writes each program's whole compiled HLO to
``DIR/<op>-<dtype>-<shape>-<impl>.txt`` (for reading a GPU's programs on a machine without one).
Several cells, four words each, run in one process (the short GPU plan's ``hlo`` step):

    PYTHONPATH=. python benchmarks/hlo_side_by_side.py softmax bfloat16 fwd+bwd 4096x8192 \
        log_softmax bfloat16 fwd+bwd 4096x16384 --dump DIR
"""

from __future__ import annotations

import argparse
import pathlib
import re

from jaxsoftmax.bench import providers
from jaxsoftmax.bench.sweep import SWEEP_PEER

MODES = ("fwd", "bwd", "fwd+bwd")


def main(argv=None) -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("cells", nargs="+", metavar="OP DTYPE MODE SHAPE",
                  help="one or more cells, e.g. softmax bfloat16 fwd+bwd 64x1024 "
                       "(linear_cross_entropy's shape: NxDxV)")
  ap.add_argument("--bodies", nargs="*", default=[])
  ap.add_argument("--dump", type=pathlib.Path, help="write each whole compiled program here")
  a = ap.parse_args(argv)
  words = a.cells
  if len(words) % 4:
    ap.error(f"cells come in fours (op dtype mode shape); got {len(words)} words: {words}")
  for i in range(0, len(words), 4):
    op, dtype, mode, shape = words[i:i + 4]
    if op not in SWEEP_PEER:
      ap.error(f"op must be one of {sorted(SWEEP_PEER)}; got {op!r}")
    if mode not in MODES:
      ap.error(f"mode must be one of {MODES}; got {mode!r}")
    show(argparse.Namespace(op=op, dtype=dtype, mode=mode, shape=shape, bodies=a.bodies,
                            dump=a.dump))


def show(a) -> None:
  """One cell: both programs' top-level fusions, and their whole text under ``a.dump``."""
  shape = tuple(int(n) for n in a.shape.split("x"))
  peer = SWEEP_PEER[a.op]
  print(f"##### {a.op} {a.dtype} {a.mode} {a.shape}")
  for impl in ("jaxsoftmax", peer):
    calls, temp = providers.jax_setup(a.op, impl, shape, a.dtype, [a.mode])
    # The harness's callables close over the compiled executable as their last default.
    text = calls[a.mode].__defaults__[-1].as_text()
    if a.dump:
      a.dump.mkdir(parents=True, exist_ok=True)
      (a.dump / f"{a.op}-{a.dtype}-{a.shape}-{impl}.txt").write_text(text)
    entry = text[text.index("ENTRY"):]
    print(f"===== {impl} (XLA temp {temp[a.mode] or 0.0:.3f} MiB)")
    for line in entry.splitlines():
      line = line.strip()
      if " fusion(" not in line and " custom-call(" not in line:
        continue
      name, shape_ = line.split(" = ")[0], line.split(" = ")[1].split(" ")[0]
      split = re.search(r'outer_dimension_partitions":\[([^\]]*)\]', line)
      print(f"  {name:<36} {shape_:<28} split {split.group(1) or '-' if split else '-'}")
      for body in a.bodies:
        if name.endswith("%" + body):
          comp = re.search(r"calls=(%[\w.\-]+)", line).group(1)
          code = text[text.index(comp + " "):]
          code = code[:code.index("\n}\n")]
          print("\n".join("      " + c.split(", metadata")[0] for c in code.splitlines()))


if __name__ == "__main__":
  main()
