"""Reporting: speedups against the fastest peer, their geometric mean, the results file (long-format
JSON, written atomically, merged with --append) and its PNG chart, and the tables printed."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np

from .config import OPS, PEERS, SELF_VARIANTS, row_key

__all__ = ["speedups", "geomean", "write", "chart"]


def speedups(doc: dict, mode: str = "fwd+bwd", dtype: str = "float32") -> list[dict]:
  """Per (op, shape): jaxsoftmax's time, the fastest peer's, and their ratio (> 1: we are faster)."""
  by_key: dict = {}
  for row in doc["rows"]:
    if row["mode"] == mode and row["dtype"] == dtype and row.get("status") == "ok":
      by_key.setdefault((row["op"], tuple(row["shape"])), {})[row["impl"]] = row["median_ms"]
  out = []
  for (op, shape), times in by_key.items():
    ours = times.pop("jaxsoftmax", None)
    for variant in SELF_VARIANTS:
      times.pop(variant, None)
    if ours is None or not times:
      continue
    best = min(times, key=times.get)
    out.append({"op": op, "shape": shape, "jaxsoftmax_ms": ours, "fastest_peer": best,
                "peer_ms": times[best], "speedup": times[best] / ours})
  return out


def geomean(values) -> float:
  values = list(values)
  return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def write(doc: dict, out_dir, *, overwrite: bool = False, append: bool = False) -> pathlib.Path:
  """``<out_dir>/<device>-<date>.json`` (atomically; an existing file is kept unless
  ``overwrite``, the new one then gets the time too) and its PNG chart. ``append`` merges the
  rows into that day's file instead (a new row replaces one with the same op, impl, shape, dtype
  and mode), so a long accelerator run can be split into several commands."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  device = "".join(c if c.isalnum() else "-" for c in doc["device"].lower()).strip("-")
  stamp = doc["timestamp"][:10]
  path = out_dir / f"{device}-{stamp}.json"
  if append and path.exists():
    old = json.loads(path.read_text())
    if old.get("device") != doc["device"]:
      raise ValueError(f"{path} holds results for {old.get('device')!r}, not {doc['device']!r}")
    new_keys = {row_key(r) for r in doc["rows"]}
    doc = doc | {"rows": [r for r in old["rows"] if row_key(r) not in new_keys] + doc["rows"],
                 "copy_gbps_runs": old.get("copy_gbps_runs", [old["copy_gbps"]]) + [
                     doc["copy_gbps"]]}
  elif path.exists() and not overwrite:
    path = out_dir / f"{device}-{stamp}-{doc['timestamp'][11:19].replace(':', '')}.json"
  from jaxsoftmax._src import files  # noqa: PLC0415 - this file also runs alone, without jax

  files.write_text(path, json.dumps(doc, indent=1) + "\n")
  try:
    chart(doc, path.with_suffix(".png"))
  except ImportError:  # an accelerator box without matplotlib: `jaxsoftmax bench --chart` later
    print(f"matplotlib is not installed: no chart; draw it with `jaxsoftmax bench --chart {path}`",
          file=sys.stderr)
  return path


def chart(doc: dict, path) -> None:
  """One panel per op: median fwd+bwd time per shape and provider (float32; log scale)."""
  from jaxsoftmax._src import plotting  # noqa: PLC0415 - this file also runs alone, without jax

  plt = plotting.pyplot()
  rows = [r for r in doc["rows"] if r.get("status") == "ok" and r["mode"] == "fwd+bwd"]
  dtypes = sorted({r["dtype"] for r in rows})
  ops = [op for op in OPS if any(r["op"] == op for r in rows)]
  if not ops:
    return
  fig, axes = plt.subplots(len(dtypes), len(ops), figsize=(4.2 * len(ops), 3.6 * len(dtypes)),
                           squeeze=False)
  for i, dtype in enumerate(dtypes):
    for j, op in enumerate(ops):
      ax = axes[i][j]
      sel = [r for r in rows if r["op"] == op and r["dtype"] == dtype]
      shapes = sorted({tuple(r["shape"]) for r in sel})
      impls = [i_ for i_ in ("jaxsoftmax",) + SELF_VARIANTS + PEERS[op]
               if any(r["impl"] == i_ for r in sel)]
      width = 0.8 / max(len(impls), 1)
      for k, impl in enumerate(impls):
        ys = [next((r["median_ms"] for r in sel if r["impl"] == impl and tuple(r["shape"]) == s),
                   np.nan) for s in shapes]
        ax.bar(np.arange(len(shapes)) + k * width, ys, width, label=impl)
      ax.set_xticks(np.arange(len(shapes)) + width * (len(impls) - 1) / 2)
      ax.set_xticklabels(["x".join(map(str, s)) for s in shapes], fontsize=7)
      ax.set_yscale("log")
      ax.set_title(f"{op} fwd+bwd {dtype}", fontsize=9)
      ax.set_ylabel("median ms (lower is better)", fontsize=8)
      ax.legend(fontsize=7)
  fig.suptitle(f"{doc['device']} ({doc['host']['cpus']} cpus), {doc['timestamp'][:10]}; "
               f"copy {doc['copy_gbps']:.1f} GB/s", fontsize=9)
  fig.tight_layout()
  plotting.save_png(fig, path, dpi=110)


