"""The kernel default table: where ``implementation=None`` may choose the Pallas kernels.

A kernel becomes the default only for a device kind, JAX minor version, op, dtype and row-length
class where a recorded run on that hardware says so: its compiled-kernel tests passed (as the
suite runs them: warnings are errors) and, in the benchmark beside it, the kernel beat our XLA
formulation by at least :data:`MIN_SPEEDUP` at every shape of that class, forward+backward.
Everywhere else the default is XLA, and ``implementation="pallas"`` still forces the kernels.

The table is ``defaults.json`` beside this file, written by ``jaxsoftmax bench
--record-defaults`` from the device's results and committed with them. It holds the runs it was
made from (device, versions, what passed) and the entries they allow. A missing or unreadable
table means XLA everywhere, with a :class:`KernelDefaultsWarning` (once per file state).

Why this exists: the first run on a real GPU (H200, jax 0.11.2, 2026-11-26) found the kernels
right and fast, but the Pallas Triton backend deprecated with a ``DeprecationWarning`` on every
call; the old default (kernels on any GPU) handed that to every GPU user (benchmarks/NOTES.md).
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
import warnings
import xml.etree.ElementTree as ElementTree

__all__ = ["TABLE", "MIN_SPEEDUP", "SHAPE_CLASSES", "KernelDefaultsWarning", "shape_class",
           "load", "prefers_kernels", "record", "kernel_tests"]

TABLE = pathlib.Path(__file__).with_name("defaults.json")
#: The least kernel-over-XLA speedup (fwd+bwd medians, same run) that counts: below it, noise.
MIN_SPEEDUP = 1.05
#: Row-length classes (inclusive bounds): the table's shape key.
SHAPE_CLASSES = (("short", 1, 1024), ("medium", 1025, 16384), ("long", 16385, None))
#: Ops that run another op's kernel (softmin is softmax of -x).
_SAME_KERNEL = {"softmin": "softmax"}
_SCHEMA = 1


class KernelDefaultsWarning(UserWarning):
  """The kernel default table is missing or unreadable: the default is XLA everywhere."""


def shape_class(n: int) -> str:
  """The row-length class of a row of ``n`` classes."""
  for name, low, high in SHAPE_CLASSES:
    if n >= low and (high is None or n <= high):
      return name
  raise ValueError(f"shape_class: n must be >= 1; got {n}")


def _minor(version: str) -> str:
  return ".".join(version.split(".")[:2])


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple) -> tuple[tuple, str | None]:
  """(entries, problem) for one state of the file (``stamp``: its mtime and size)."""
  del stamp
  try:
    doc = json.loads(pathlib.Path(path).read_text())
  except FileNotFoundError:
    return (), f"no kernel default table at {path}"
  except (OSError, ValueError) as e:
    return (), f"the kernel default table {path} is unreadable ({type(e).__name__}: {e})"
  try:
    if doc["schema"] != _SCHEMA:
      raise ValueError(f"schema {doc['schema']!r}, not {_SCHEMA}")
    entries = tuple((str(e["device_kind"]), _minor(str(e["jax"])), str(e["op"]), str(e["dtype"]),
                     str(e["shape_class"])) for e in doc["entries"])
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    return (), f"the kernel default table {path} is malformed ({type(e).__name__}: {e})"
  return entries, None


def load(path=None) -> tuple:
  """The table's entries as ``(device_kind, jax minor, op, dtype, shape class)`` tuples; empty,
  with a :class:`KernelDefaultsWarning`, when the file is missing or unreadable."""
  path = pathlib.Path(TABLE if path is None else path)
  try:
    st = path.stat()
    stamp = (st.st_mtime_ns, st.st_size)
  except OSError:
    stamp = None
  entries, problem = _load(str(path), stamp)
  if problem is not None and _warn_once(problem, stamp):
    warnings.warn(f"{problem}: implementation=None uses XLA everywhere.", KernelDefaultsWarning,
                  stacklevel=3)
  return entries


_WARNED: set = set()


def _warn_once(problem: str, stamp) -> bool:
  key = (problem, stamp)
  if key in _WARNED:
    return False
  _WARNED.add(key)
  return True


def prefers_kernels(device_kind: str, jax_version: str, op: str, dtype, n: int,
                    path=None) -> bool:
  """Whether the table makes the kernels the default for this call."""
  if n < 1:
    return False
  key = (device_kind, _minor(jax_version), _SAME_KERNEL.get(op, op), str(dtype), shape_class(n))
  return key in load(path)


# ----------------------------------------------------------------------------------------------
# Recording (``jaxsoftmax bench --record-defaults``): no JAX needed.


def kernel_tests(junit_xml: str) -> dict:
  """The compiled-kernel tests of a junit XML report: how many ran, passed, failed, skipped."""
  root = ElementTree.fromstring(junit_xml)
  out = {"ran": 0, "passed": 0, "failed": 0, "skipped": 0, "failures": []}
  for case in root.iter("testcase"):
    name = case.get("name", "")
    if "compiled" not in name:
      continue
    if case.find("skipped") is not None:
      out["skipped"] += 1
      continue
    out["ran"] += 1
    bad = case.find("failure") if case.find("failure") is not None else case.find("error")
    if bad is None:
      out["passed"] += 1
    else:
      out["failed"] += 1
      first = (bad.get("message") or bad.get("type") or "no message").strip().splitlines()
      out["failures"].append(f"{name}: {(first or ['no message'])[0][:200]}")
  return out


def _kernel_rows(doc: dict) -> str:
  """Which provider in a results file ran the kernels: ``jaxsoftmax[pallas]``, or in files
  written before the table existed (when the accelerator default was the kernels)
  ``jaxsoftmax``."""
  if any(r["impl"] == "jaxsoftmax[pallas]" for r in doc["rows"]):
    return "jaxsoftmax[pallas]"
  if doc.get("defaults_table") or doc.get("platform") == "cpu":
    raise ValueError("the results file has no kernel rows (jaxsoftmax[pallas]); run the "
                     "benchmark on the accelerator with the kernels beside jaxsoftmax[xla]")
  return "jaxsoftmax"


def record(results: dict, junit_xml: str, *, table: dict | None = None,
           source: str = "") -> dict:
  """The table ``table`` (or an empty one) with this device's run added and its entries
  replaced: an entry per (op, dtype, shape class) where the compiled-kernel tests all passed and
  the kernel beat ``jaxsoftmax[xla]`` by :data:`MIN_SPEEDUP` at every fwd+bwd shape measured."""
  tests = kernel_tests(junit_xml)
  device, jax_version = results["device"], results["versions"]["jax"]
  kernel = _kernel_rows(results)
  times: dict = {}
  for r in results["rows"]:
    if r.get("status") == "ok" and r["mode"] == "fwd+bwd" and r["impl"] in (kernel,
                                                                          "jaxsoftmax[xla]"):
      key = (r["op"], r["dtype"], shape_class(r["shape"][-1]), tuple(r["shape"]))
      times.setdefault(key, {})[r["impl"]] = r["median_ms"]
  classes: dict = {}
  for (op, dtype, cls, shape), t in times.items():
    if kernel in t and "jaxsoftmax[xla]" in t:
      classes.setdefault((op, dtype, cls), []).append(
          {"shape": list(shape), "speedup": t["jaxsoftmax[xla]"] / t[kernel]})
  passed = tests["ran"] > 0 and tests["failed"] == 0
  entries = []
  for (op, dtype, cls), shapes in sorted(classes.items()):
    worst = min(s["speedup"] for s in shapes)
    if passed and worst >= MIN_SPEEDUP:
      entries.append({"device_kind": device, "jax": _minor(jax_version), "op": op,
                      "dtype": dtype, "shape_class": cls, "worst_speedup": round(worst, 3),
                      "shapes": shapes, "results": source})
  if not tests["ran"]:
    why = "no compiled-kernel test ran"
  elif tests["failed"]:
    why = f"{tests['failed']} of {tests['ran']} compiled-kernel tests failed"
  else:
    why = f"{len(entries)} of {len(classes)} (op, dtype, shape class) groups beat XLA by " \
          f">= {MIN_SPEEDUP}x"
  run = {"device_kind": device, "jax": jax_version, "jaxsoftmax": results["versions"].get(
      "jaxsoftmax"), "results": source, "timestamp": results["timestamp"],
         "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "kernel_tests": {k: v for k, v in tests.items() if k != "failures"},
         "first_failures": tests["failures"][:3], "outcome": why,
         "groups": [{"op": op, "dtype": dt, "shape_class": cls,
                     "worst_speedup": round(min(s["speedup"] for s in shapes), 3)}
                    for (op, dt, cls), shapes in sorted(classes.items())]}
  table = dict(table or {"schema": _SCHEMA, "runs": [], "entries": []})
  same = lambda e: e["device_kind"] == device and _minor(str(e["jax"])) == _minor(jax_version)  # noqa: E731
  table["runs"] = [r for r in table.get("runs", []) if not same(r)] + [run]
  table["entries"] = [e for e in table.get("entries", []) if not same(e)] + entries
  table["schema"] = _SCHEMA
  return table
