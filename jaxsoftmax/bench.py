"""Side-by-side benchmarks: jaxsoftmax beside jax.nn, optax, tokamax, torch and torch.compile.

One setup per (op, provider); modes ``fwd``, ``bwd`` (the backward alone, from saved residuals) and
``fwd+bwd``; a shape sweep; float32 and bfloat16. Each configuration warms every provider up, then
times them interleaved (round-robin, the order rotated every repetition) so that a noisy, shared
machine slows them alike; it reports the median with the 20th and 80th percentiles.

Bandwidth is computed from the *minimal* bytes (each input read once, each output written once; for
``bwd``, the saved output or input read once) and reported as a fraction of a device copy measured
in the same run. Memory: XLA's compiled ``memory_analysis`` (temporary bytes) for JAX, and the peak
RSS of a fresh subprocess running one fwd+bwd for every provider, JAX and torch alike.

Rows are written in long format to ``benchmarks/results/<device>-<date>.json`` with the device,
versions and timestamp, plus a PNG chart beside it. ``jaxsoftmax bench --help`` lists the options.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

OPS = ("softmax", "log_softmax", "cross_entropy", "linear_cross_entropy")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = ("float32", "bfloat16")
# The CPU targets; (N, V) for the softmax family and cross_entropy, (N, D, V) for linear.
DEFAULT_SHAPES = {"softmax": [(4096, 1024), (1024, 32768), (65536, 10)],
                  "log_softmax": [(4096, 1024), (1024, 32768), (65536, 10)],
                  "cross_entropy": [(4096, 1024), (1024, 32768), (65536, 10)],
                  "linear_cross_entropy": [(8192, 512, 32768)]}
# The accelerator targets (issue 6): the Triton fused-softmax tutorial's sweep at M=4096 (sampled
# from N=256..12672), the bandwidth target (4096, 32768), a long-row case and cross_entropy at
# N=8192 over large vocabularies.
TRITON_SWEEP = (256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 10240, 12672)
GPU_SHAPES = {"softmax": [(4096, n) for n in TRITON_SWEEP] + [(4096, 32768), (16384, 131072)],
              "log_softmax": [(4096, n) for n in TRITON_SWEEP] + [(4096, 32768),
                                                                   (16384, 131072)],
              "cross_entropy": [(8192, 32768), (8192, 131072), (8192, 262144)],
              "linear_cross_entropy": [(8192, 4096, 131072)]}
PRESETS = {"cpu": DEFAULT_SHAPES, "gpu": GPU_SHAPES}
# Our own other path, timed beside the default so an accelerator run shows kernel vs XLA; it is
# never counted as a peer (on a CPU the default is XLA, so it only runs when asked for).
SELF_VARIANTS = ("jaxsoftmax[xla]",)
PEERS = {"softmax": ("jax.nn", "torch", "torch.compile"),
         "log_softmax": ("jax.nn", "torch", "torch.compile"),
         "cross_entropy": ("optax", "torch", "torch.compile"),
         "linear_cross_entropy": ("optax", "tokamax", "torch", "torch-chunked")}


class Unavailable(Exception):
  """A provider that cannot run here (not installed, no compiler...); recorded, not fatal."""


# ----------------------------------------------------------------------------------------------
# Inputs and minimal bytes


def _inputs(op: str, shape, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  if op == "linear_cross_entropy":
    n, d, v = shape
    return {"x": rng.standard_normal((n, d), np.float32),
            "w": (rng.standard_normal((d, v), np.float32) / np.sqrt(d)),
            "labels": rng.integers(0, v, n).astype(np.int32)}
  n, v = shape
  out = {"x": (rng.standard_normal((n, v), np.float32) * 2)}
  if op == "cross_entropy":
    out["labels"] = rng.integers(0, v, n).astype(np.int32)
  return out


def _itemsize(dtype: str) -> int:
  return 2 if dtype == "bfloat16" else 4


def minimal_bytes(op: str, shape, dtype: str, mode: str) -> int:
  """Each input read once and each output written once (labels and scalars included)."""
  b = _itemsize(dtype)
  if op == "linear_cross_entropy":
    n, d, v = shape
    params = (n * d + d * v) * b
    return params + n * 4 if mode == "fwd" else 2 * params + n * 4
  n, v = shape
  nv = n * v * b
  if op == "cross_entropy":  # fwd reads x and labels; bwd writes dx from a logits-sized residual
    return (nv if mode == "fwd" else 2 * nv) + n * 4
  return {"fwd": 2 * nv, "bwd": 3 * nv, "fwd+bwd": 4 * nv}[mode]


def flops(op: str, shape, mode: str) -> float | None:
  """Matmul FLOPs of linear_cross_entropy (2NDV per matmul: 1 forward, 2 backward)."""
  if op != "linear_cross_entropy":
    return None
  n, d, v = shape
  return 2.0 * n * d * v * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[mode]


# ----------------------------------------------------------------------------------------------
# Providers: each returns {mode: zero-argument callable that blocks until done} for one config.


def _jax_fns(op: str, impl: str):
  """The loss or transform as ``f(labels, *differentiable_inputs)``. Labels are an argument of
  every jitted function, never a closed-over constant (XLA would spend minutes folding it)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  import jaxsoftmax  # noqa: PLC0415

  kw = {"implementation": "xla"} if impl == "jaxsoftmax[xla]" else {}
  ours = impl in ("jaxsoftmax",) + SELF_VARIANTS
  if op in ("softmax", "log_softmax"):
    fn = getattr(jaxsoftmax, op) if ours else {"jax.nn": getattr(jax.nn, op)}.get(impl)
    return None if fn is None else (lambda labels, x: fn(x, axis=-1, **kw))
  if op == "cross_entropy":
    if ours:
      return lambda labels, x: jaxsoftmax.cross_entropy(x, labels, **kw)
    if impl == "optax":
      import optax  # noqa: PLC0415
      return lambda labels, x: optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()
    return None
  if ours:
    return lambda labels, x, w: jaxsoftmax.linear_cross_entropy(x, w, labels, **kw)
  if impl == "optax":
    import optax  # noqa: PLC0415
    return lambda labels, x, w: optax.softmax_cross_entropy_with_integer_labels(
        jnp.dot(x, w, preferred_element_type=jnp.float32), labels).mean()
  if impl == "tokamax":
    try:
      import tokamax  # noqa: PLC0415
    except ImportError as e:
      raise Unavailable("tokamax is not installed (pip install 'jaxsoftmax[bench]')") from e
    from absl import flags  # noqa: PLC0415 - tokamax reads absl flags, parsing sys.argv if unparsed

    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # our command line is not tokamax's
    return lambda labels, x, w: tokamax.linear_softmax_cross_entropy_loss(
        x, labels, w, reduction="mean", implementation="xla")
  return None


def jax_setup(op: str, impl: str, shape, dtype: str, modes: Sequence[str]):
  """(callables per mode, XLA temp MiB per mode) for a JAX provider."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxsoftmax._src.copies import jax_copy  # noqa: PLC0415

  make = _jax_fns(op, impl)
  if make is None:
    raise Unavailable(f"{impl} has no {op}")
  data = _inputs(op, shape, dtype)
  jdtype = jnp.dtype(dtype)
  # Copies: the torch provider builds its tensors from the same arrays.
  labels = jax_copy(data["labels"]) if "labels" in data else None
  args = tuple(jax_copy(data[k], jdtype) for k in ("x", "w") if k in data)
  f = make
  out0 = jax.eval_shape(f, labels, *args)
  g = jnp.ones(out0.shape, out0.dtype)

  def fwd_bwd(labels, g, *a):
    y, vjp = jax.vjp(lambda *d: f(labels, *d), *a)
    # A scalar loss is differentiated as jax.value_and_grad does it, with the cotangent 1.0 known
    # to the compiler (so a gradient formed in the forward pass needs no scaling pass); any other
    # output gets its cotangent as an argument, like an upstream gradient.
    return y, vjp(jnp.ones((), out0.dtype) if out0.shape == () else g)

  calls, temp = {}, {}
  for mode in modes:
    if mode == "bwd":  # the VJP function is a pytree of residuals: jit it as an argument
      _, vjp = jax.jit(lambda labels, *a: jax.vjp(lambda *d: f(labels, *d), *a))(labels, *args)
      compiled = jax.jit(lambda fn, gg: fn(gg)).lower(vjp, g).compile()
      calls[mode] = lambda vjp=vjp, compiled=compiled: jax.block_until_ready(compiled(vjp, g))
    elif mode == "fwd":
      compiled = jax.jit(f).lower(labels, *args).compile()
      calls[mode] = lambda compiled=compiled: jax.block_until_ready(compiled(labels, *args))
    else:
      compiled = jax.jit(fwd_bwd).lower(labels, g, *args).compile()
      calls[mode] = lambda compiled=compiled: jax.block_until_ready(compiled(labels, g, *args))
    analysis = compiled.memory_analysis()
    temp[mode] = None if analysis is None else analysis.temp_size_in_bytes / 2**20
  return calls, temp


def torch_setup(op: str, impl: str, shape, dtype: str, modes: Sequence[str],
                device: str = "cpu"):
  """Callables per mode for torch eager, torch.compile and torch's chunked linear path, on
  ``device`` ("cuda" when JAX runs on a GPU and torch has CUDA; each call then synchronises)."""
  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: PLC0415

  data = _inputs(op, shape, dtype)
  tdtype = getattr(torch, dtype)
  # Copies (np.array), never views of the arrays the JAX providers read. Not via jaxsoftmax._src.copies:
  # importing the package would import jax into torch's process (see peak_rss).
  x = torch.from_numpy(np.array(data["x"], copy=True)).to(device, tdtype)
  labels = (torch.from_numpy(np.array(data["labels"], np.int64, copy=True)).to(device)
            if "labels" in data else None)
  if op in ("softmax", "log_softmax"):
    base = (lambda t: getattr(torch, op)(t, -1))
    args = [x]
  elif op == "cross_entropy":
    base = (lambda t: F.cross_entropy(t, labels))
    args = [x]
  else:
    if not hasattr(F, "linear_cross_entropy"):
      raise Unavailable(f"torch {torch.__version__} has no linear_cross_entropy (2.13 added it)")
    w = torch.from_numpy(np.array(data["w"].T, copy=True, order="C")).to(device, tdtype)  # (V, D)
    options = torch.nn.LinearCrossEntropyOptions() if impl == "torch-chunked" else None
    base = (lambda t, u: F.linear_cross_entropy(t, u, labels, options=options))
    args = [x, w]
  if impl == "torch.compile":
    if op == "linear_cross_entropy":
      raise Unavailable("torch.compile of linear_cross_entropy is not benchmarked")
    # A fresh dynamo cache per configuration: otherwise every shape and dtype recompiles the same
    # code object until torch's recompile limit silently falls back to eager; dynamic=False, so
    # each shape gets its own specialised kernels (what a user with fixed shapes gets).
    torch._dynamo.reset()
    fn = torch.compile(base, dynamic=False)
    try:
      with torch.no_grad():
        fn(*args)
      t = x.clone().requires_grad_()
      fn(t).sum().backward()
    except Exception as e:  # noqa: BLE001 - inductor needs a working C++ toolchain
      raise Unavailable(f"torch.compile failed here: {type(e).__name__}: {e}") from e
  elif impl in ("torch", "torch-chunked"):
    fn = base
  else:
    raise Unavailable(f"{impl} is not a torch provider")

  grads = [a.clone().requires_grad_() for a in args]
  out = fn(*grads)
  g = torch.ones_like(out)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  calls = {}
  for mode in modes:
    if mode == "fwd":
      def call():
        with torch.no_grad():
          fn(*args)
        sync()
    elif mode == "fwd+bwd":
      def call():
        for a in grads:
          a.grad = None
        fn(*grads).backward(g)
        sync()
    else:
      def call():
        saved = fn(*grads)  # a fresh graph each time, built outside the timed region
        sync()
        start = time.perf_counter()
        torch.autograd.grad(saved, grads, g)
        sync()
        return time.perf_counter() - start
    calls[mode] = call
  return calls, {m: None for m in modes}


def torch_device(jax_platform: str) -> str:
  """torch runs where JAX runs: CUDA beside a JAX GPU (if torch has it), else the CPU."""
  if jax_platform != "gpu":
    return "cpu"
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return "cpu"
  return "cuda" if torch.cuda.is_available() else "cpu"


def setup(op, impl, shape, dtype, modes, device="cpu"):
  if impl.startswith("torch"):
    return torch_setup(op, impl, shape, dtype, modes, device)
  return jax_setup(op, impl, shape, dtype, modes)


# ----------------------------------------------------------------------------------------------
# Timing


def _time_interleaved(calls: dict[str, Callable[[], object]], reps: int, warmup: int = 2,
                      budget_s: float = 20.0) -> dict[str, list[float]]:
  """Seconds per call for each provider, interleaved and rotated; fewer reps if a call is slow."""
  def timed(call) -> float:
    start = time.perf_counter()
    inner = call()  # a call that must prepare untimed state returns its own timing
    return inner if isinstance(inner, float) else time.perf_counter() - start

  names = list(calls)
  slowest = 0.0
  for name in names:
    for _ in range(warmup):
      slowest = max(slowest, timed(calls[name]))
  reps = max(3, min(reps, int(budget_s / max(slowest * len(names), 1e-9))))
  times = {n: [] for n in names}
  for r in range(reps):
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


# ----------------------------------------------------------------------------------------------
# Peak RSS in a fresh subprocess (one fwd+bwd, after a warm-up call)


def _high_water_mib() -> float:
  """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
  from the parent across fork + exec, so every child would report at least the parent's peak."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  raise OSError("no VmHWM in /proc/self/status (peak RSS needs Linux)")


def _child(spec: str) -> int:
  op, impl, shape, dtype, device = json.loads(spec)
  calls, _ = setup(op, impl, tuple(shape), dtype, ["fwd+bwd"], device)  # inputs, compile, warm
  before = _high_water_mib()
  calls["fwd+bwd"]()
  calls["fwd+bwd"]()
  out = {"peak_rss_mb": _high_water_mib(), "setup_rss_mb": before}
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
  spec = json.dumps([op, impl, list(shape), dtype, device])
  # This file is loaded on its own, not as jaxsoftmax.bench: importing the package would import
  # jax into torch's process and inflate its RSS.
  code = ("import importlib.util, sys\n"
          f"s = importlib.util.spec_from_file_location('bench', {str(pathlib.Path(__file__))!r})\n"
          "m = sys.modules['bench'] = importlib.util.module_from_spec(s)\n"
          f"s.loader.exec_module(m)\nsys.exit(m._child({spec!r}))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=timeout, check=False)
  if proc.returncode != 0:
    return {"peak_rss_error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# The run


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


def _device() -> tuple[str, str]:
  import jax  # noqa: PLC0415

  dev = jax.devices()[0]
  return dev.device_kind, dev.platform


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
    extra = SELF_VARIANTS if plat != "cpu" else ()
    impls = ("jaxsoftmax",) + tuple(p for p in extra + PEERS[op]
                                    if config.impls is None or p in config.impls)
    calls, temps, missing = {}, {}, {}
    for impl in impls:
      try:
        calls[impl], temps[impl] = setup(op, impl, shape, dtype, config.modes, tdevice)
      except Unavailable as e:
        missing[impl] = str(e)
    for mode in config.modes:
      times = _time_interleaved({i: c[mode] for i, c in calls.items()}, config.reps,
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
          row["inplace_bound_mb"] = shape[0] * shape[1] * _itemsize(dtype) / 2**20
        rows.append(row)
    if config.rss == "all" or (config.rss == "linear" and op == "linear_cross_entropy"):
      for impl in impls:
        if impl in missing:
          continue
        stats = peak_rss(op, impl, shape, dtype, tdevice)
        for row in rows:
          if _row_key(row) == (op, impl, shape, dtype, "fwd+bwd"):
            row.update(stats)
    del calls
    if progress:
      progress.advance(task)
  return {"device": device, "platform": plat, "torch_device": tdevice, "copy_gbps": copy,
          "versions": _versions(),
          "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host": {"cpus": os.cpu_count(), "machine": platform.machine()}, "rows": rows}


# ----------------------------------------------------------------------------------------------
# Summaries, files, chart


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


def _row_key(row):
  return (row["op"], row["impl"], tuple(row["shape"]), row["dtype"], row["mode"])


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
    new_keys = {_row_key(r) for r in doc["rows"]}
    doc = doc | {"rows": [r for r in old["rows"] if _row_key(r) not in new_keys] + doc["rows"],
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
      if (len(dims) == 3) == (op == "linear_cross_entropy"):
        shapes[op].append(dims)
  return shapes


