"""What the benchmark runs: ops, modes, dtypes, shape presets, providers per op, and a run's
configuration. NumPy only."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["OPS", "MODES", "DTYPES", "DEFAULT_SHAPES", "TRITON_SWEEP", "GPU_SHAPES", "PRESETS",
           "SELF_VARIANTS", "PEERS", "Unavailable", "Config", "parse_shapes", "row_key",
           "is_linear", "Z_LOSS", "SOFTCAP"]

OPS = ("softmax", "log_softmax", "cross_entropy", "linear_cross_entropy",
       "linear_cross_entropy[z+cap]", "linear_cross_entropy[filter]")
# The large-vocabulary options (issue 15) on linear_cross_entropy: PaLM's z-loss (1e-4) with
# Gemma-2's soft-cap (30), beside the same composed by optax and torch; and filter_eps="auto" on
# peaked predictions (logits of standard deviation ~8) beside the exact backward.
Z_LOSS, SOFTCAP = 1e-4, 30.0
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = ("float32", "bfloat16")
# The CPU targets; (N, V) for the softmax family and cross_entropy, (N, D, V) for linear.
DEFAULT_SHAPES = {"softmax": [(4096, 1024), (1024, 32768), (65536, 10)],
                  "log_softmax": [(4096, 1024), (1024, 32768), (65536, 10)],
                  "cross_entropy": [(4096, 1024), (1024, 32768), (65536, 10)],
                  "linear_cross_entropy": [(8192, 512, 32768)],
                  "linear_cross_entropy[z+cap]": [(8192, 512, 32768)],
                  "linear_cross_entropy[filter]": [(8192, 512, 32768)]}
# The accelerator targets (issue 6): the Triton fused-softmax tutorial's sweep at M=4096 (sampled
# from N=256..12672), the bandwidth target (4096, 32768), a long-row case and cross_entropy at
# N=8192 over large vocabularies.
TRITON_SWEEP = (256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 10240, 12672)
GPU_SHAPES = {"softmax": [(4096, n) for n in TRITON_SWEEP] + [(4096, 32768), (16384, 131072)],
              "log_softmax": [(4096, n) for n in TRITON_SWEEP] + [(4096, 32768),
                                                                   (16384, 131072)],
              "cross_entropy": [(8192, 32768), (8192, 131072), (8192, 262144)],
              "linear_cross_entropy": [(8192, 4096, 131072)],
              "linear_cross_entropy[z+cap]": [(8192, 4096, 131072)],
              "linear_cross_entropy[filter]": [(8192, 4096, 131072)]}
PRESETS = {"cpu": DEFAULT_SHAPES, "gpu": GPU_SHAPES}
# Our own other path, timed beside the default so an accelerator run shows kernel vs XLA; it is
# never counted as a peer (on a CPU the default is XLA, so it only runs when asked for).
# The kernels are timed explicitly (jaxsoftmax[pallas]): the default takes them only where the
# kernel default table says so, which these very rows decide (--record-defaults).
SELF_VARIANTS = ("jaxsoftmax[xla]", "jaxsoftmax[pallas]")
PEERS = {"softmax": ("jax.nn", "torch", "torch.compile"),
         "log_softmax": ("jax.nn", "torch", "torch.compile"),
         "cross_entropy": ("optax", "torch", "torch.compile"),
         "linear_cross_entropy": ("optax", "tokamax", "torch", "torch-chunked"),
         "linear_cross_entropy[z+cap]": ("optax", "torch"),
         "linear_cross_entropy[filter]": ("jaxsoftmax[exact]",)}


def is_linear(op: str) -> bool:
  """The (N, D, V) ops: linear_cross_entropy and its option rows."""
  return op.startswith("linear_cross_entropy")


class Unavailable(Exception):
  """A provider that cannot run here (not installed, no compiler...); recorded, not fatal."""


@dataclasses.dataclass
class Config:
  ops: Sequence[str] = OPS
  shapes: dict | None = None
  dtypes: Sequence[str] = ("float32",)
  modes: Sequence[str] = MODES
  reps: int = 15
  rss: str = "linear"  # "none" | "linear" | "all"
  budget_s: float = 20.0
  impls: Sequence[str] | None = None  # restrict the providers (jaxsoftmax always runs)


def row_key(row):
  return (row["op"], row["impl"], tuple(row["shape"]), row["dtype"], row["mode"])


def parse_shapes(specs: Sequence[str] | None, ops: Sequence[str]) -> dict | None:
  """``["4096x1024", "8192x512x32768"]``: 2-d shapes go to the (N, V) ops, 3-d to linear."""
  if not specs:
    return None
  shapes = {op: [] for op in ops}
  for spec in specs:
    try:
      dims = tuple(int(d) for d in spec.lower().split("x"))
    except ValueError:
      raise ValueError(f"--shapes: {spec!r} is not like 4096x1024 or 8192x512x32768") from None
    if len(dims) not in (2, 3) or min(dims) < 1:
      raise ValueError(f"--shapes: {spec!r} must be NxV or NxDxV with positive sizes")
    for op in ops:
      if (len(dims) == 3) == is_linear(op):
        shapes[op].append(dims)
  return shapes


