"""Measuring: providers timed interleaved and rotated, the device's copy bandwidth, the peak RSS of
a fresh subprocess per provider, and the run over every configuration."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from .config import DEFAULT_SHAPES, PEERS, SELF_VARIANTS, Config, Unavailable, is_linear, row_key
from .providers import flops, itemsize, minimal_bytes, setup, torch_device

__all__ = ["time_interleaved", "copy_gbps", "peak_rss", "child_main", "run"]

# Modules of this package import each other relatively and nothing of jaxsoftmax at import time:
# child.py loads them as a package of their own, so torch's process never imports jax.


def time_interleaved(calls: dict[str, Callable[[], object]], reps: int, warmup: int = 2,
                      budget_s: float = 20.0, min_reps: int = 3) -> dict[str, list[float]]:
  """Seconds per call for each provider, interleaved and rotated: ``reps`` rotations, or fewer
  (never under ``min_reps``) once the timed rotations have taken ``budget_s`` of wall time.

  The count is not planned from the warm-up: a first call that page-faults its buffers or fills
  a cache can take 10x a typical one, and a plan from it cut the sweep's 0.6 ms cells to about
  30 rotations, where the budget holds about 300 (the per-round ratios' spread then came from
  the few samples, not from the programs).
  """
  def timed(call) -> float:
    start = time.perf_counter()
    inner = call()  # a call that must prepare untimed state returns its own timing
    return inner if isinstance(inner, float) else time.perf_counter() - start

  names = list(calls)
  for name in names:
    for _ in range(warmup):
      timed(calls[name])
  times = {n: [] for n in names}
  start = time.perf_counter()
  for r in range(reps):
    if r >= min_reps and time.perf_counter() - start > budget_s:
      break
    for name in names[r % len(names):] + names[:r % len(names)]:
      times[name].append(timed(calls[name]))
  return times


def copy_gbps(size_mib: int = 256, reps: int = 10) -> float:
  """Device copy bandwidth: read + write bytes of ``y = x + 1`` over a large float32 array."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  x = jnp.ones((size_mib * 2**20 // 4,), jnp.float32)
  f = jax.jit(lambda a: a + 1.0).lower(x).compile()
  jax.block_until_ready(f(x))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(f(x))
    times.append(time.perf_counter() - start)
  return 2 * x.nbytes / float(np.median(times)) / 1e9


def _high_water_mib() -> float:
  """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
  from the parent across fork + exec, so every child would report at least the parent's peak."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  raise OSError("no VmHWM in /proc/self/status (peak RSS needs Linux)")


def child_main(spec: str) -> int:
  op, impl, shape, dtype, device = json.loads(spec)
  calls, _ = setup(op, impl, tuple(shape), dtype, ["fwd+bwd"], device)  # inputs, compile, warm
  before = _high_water_mib()
  calls["fwd+bwd"]()
  calls["fwd+bwd"]()
  # Recorded so that a torch figure can be trusted not to carry jax's own memory.
  out = {"peak_rss_mb": _high_water_mib(), "setup_rss_mb": before,
         "jax_imported": "jax" in sys.modules}
  if impl.startswith("torch"):
    if device == "cuda":
      import torch  # noqa: PLC0415
      out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
  else:
    import jax  # noqa: PLC0415
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU
    if "peak_bytes_in_use" in stats:
      out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
  print(json.dumps(out))
  return 0


def peak_rss(op, impl, shape, dtype, device: str = "cpu", timeout: float = 600) -> dict:
  """Peak RSS (and device memory) of one fwd+bwd of ``impl`` in a fresh process (child.py)."""
  spec = json.dumps([op, impl, list(shape), dtype, device])
  child = pathlib.Path(__file__).with_name("child.py")
  proc = subprocess.run([sys.executable, str(child), spec], capture_output=True, text=True,
                        timeout=timeout, check=False)
  if proc.returncode != 0:
    return {"peak_rss_error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _device() -> tuple[str, str]:
  import jax  # noqa: PLC0415

  dev = jax.devices()[0]
  return dev.device_kind, dev.platform


#: The instruction-set flags that change what XLA:CPU, YNNPACK and torch run (a host's
#: ``/proc/cpuinfo`` names, kept in this order where present).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "asimd",
             "sve")


def _host() -> dict:
  """The machine a result came from: core count, architecture, CPU model and its vector ISA.

  Two runs on hosts with different vector units are different experiments: at 10 classes the
  same jaxsoftmax tree measured 0.56-0.63x of its peer on an AVX-512 host where the committed
  sweep had 1.08-1.41x (benchmarks/NOTES.md, thirteenth pass), and that sweep recorded no model."""
  model, flags = "", set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
          model = value.strip()
        elif key in ("flags", "Features") and not flags:
          flags = set(value.split())
  except OSError:  # not Linux: the model as platform names it, no flags
    pass
  return {"cpus": os.cpu_count(), "machine": platform.machine(),
          "cpu_model": model or platform.processor(), "isa": [f for f in ISA_FLAGS if f in flags]}


def _versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for pkg in ("jaxsoftmax", "jax", "jaxlib", "flax", "optax", "tokamax", "torch", "numpy"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def _percentile(values, q) -> float:
  return float(np.percentile(values, q)) * 1e3


def run(config: Config, progress=None) -> dict:
  """Runs every configuration; returns the result document (not yet written)."""
  device, plat = _device()
  shapes = config.shapes or DEFAULT_SHAPES
  plan = [(op, tuple(shape), dtype) for op in config.ops for shape in shapes[op]
          for dtype in config.dtypes]
  task = progress.add_task("bench", total=len(plan)) if progress else None
  copy = copy_gbps()
  tdevice = torch_device(plat)
  rows = []
  for op, shape, dtype in plan:
    if progress:
      progress.update(task, description=f"{op} {shape} {dtype}")
    # Our other paths run beside the default on an accelerator; on a CPU only when asked for
    # (--impls: the kernels there run in Pallas' interpreter, as the GPU plan's dry run does).
    extra = SELF_VARIANTS if plat != "cpu" or config.impls is not None else ()
    impls = ("jaxsoftmax",) + tuple(p for p in extra + PEERS[op]
                                    if config.impls is None or p in config.impls)
    calls, temps, missing = {}, {}, {}
    for impl in impls:
      try:
        calls[impl], temps[impl] = setup(op, impl, shape, dtype, config.modes, tdevice)
      except Unavailable as e:
        missing[impl] = str(e)
      except ValueError as e:  # implementation="pallas" on a call the kernels cannot take
        if impl != "jaxsoftmax[pallas]":
          raise
        missing[impl] = str(e)
    for mode in config.modes:
      times = time_interleaved({i: c[mode] for i, c in calls.items()}, config.reps,
                                budget_s=config.budget_s)
      for impl in impls:
        row = {"op": op, "impl": impl, "shape": list(shape), "dtype": dtype, "mode": mode}
        if impl in missing:
          rows.append(row | {"status": f"unavailable: {missing[impl]}"})
          continue
        t = times[impl]
        median = float(np.median(t))
        gbps = minimal_bytes(op, shape, dtype, mode) / median / 1e9
        row |= {"status": "ok", "median_ms": median * 1e3, "p20_ms": _percentile(t, 20),
                "p80_ms": _percentile(t, 80), "reps": len(t), "gbps": gbps,
                "copy_fraction": gbps / copy}
        if (fl := flops(op, shape, mode)) is not None:
          row["gflops"] = fl / median / 1e9
        if temps[impl].get(mode) is not None:
          row["xla_temp_mb"] = temps[impl][mode]
        if op == "cross_entropy" and mode == "fwd+bwd":
          # What a Liger-style kernel that writes the gradient over the logits would hold at
          # its peak: the logits alone. A computed bound to read peak memory against, not a run.
          row["inplace_bound_mb"] = shape[0] * shape[1] * itemsize(dtype) / 2**20
        rows.append(row)
    if config.rss == "all" or (config.rss == "linear" and is_linear(op)):
      for impl in impls:
        if impl in missing:
          continue
        stats = peak_rss(op, impl, shape, dtype, tdevice)
        for row in rows:
          if row_key(row) == (op, impl, shape, dtype, "fwd+bwd"):
            row.update(stats)
    del calls
    if progress:
      progress.advance(task)
  # defaults_table: the jaxsoftmax rows are the default as the kernel default table chose it;
  # the kernels themselves are the jaxsoftmax[pallas] rows (older files have neither).
  return {"device": device, "platform": plat, "torch_device": tdevice, "copy_gbps": copy,
          "defaults_table": True, "versions": _versions(),
          "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host": _host(), "rows": rows}


