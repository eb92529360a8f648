"""``jaxsoftmax bench --sharded``: the sharded linear cross-entropy beside GSPMD's ``x @ w`` + optax.

For each layout (the vocabulary split over P = 1, 2, 4, 8 devices, and a dp=2 x tp=4 mesh) and
each provider, one ``jit(value_and_grad)`` of the mean loss is compiled and measured:

* per-device XLA memory (``compiled.memory_analysis()``: temporaries, arguments, outputs);
* every collective in the compiled HLO, its kind and the bytes it carries;
* the median time of interleaved calls (host CPU devices share this machine's cores, so times
  show relative cost, not what P devices would do).

Providers: ``jaxsoftmax`` (``linear_cross_entropy`` inside ``shard_map`` with ``axis_name`` /
``batch_axis_name``), ``jaxsoftmax-auto`` (the plain op under jit with the inputs laid out over
Auto axes: its custom_partitioning rule), ``unsharded`` (the plain op on one device, at P = 1),
``gspmd`` (``optax.softmax_cross_entropy_with_integer_labels(x @ w, y)`` under
jit, inputs placed with the same PartitionSpecs on an Auto mesh: what GSPMD does on its own).

Run in a child process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device
count is fixed when JAX starts): ``python -m jaxsoftmax.bench.sharded OUT_DIR``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

__all__ = ["run_in_child", "measure", "collectives_in", "markdown"]

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "f64": 8, "s64": 8}


def collectives_in(hlo_text: str) -> list[dict]:
  """Every collective of a compiled HLO module: ``{"kind", "bytes"}`` (its result's size)."""
  found = []
  for line in hlo_text.splitlines():
    for kind in KINDS:
      match = re.search(rf"=\s*(.*?)\s{kind}(-start)?\(", line)
      if match:
        total = 0
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
          elements = 1
          for d in filter(None, dims.split(",")):
            elements *= int(d)
          total += elements * BYTES.get(dtype, 4)
        found.append({"kind": kind, "bytes": total})
  return found


def measure(n: int = 4096, d: int = 256, v: int = 32768, reps: int = 5) -> dict:
  """The measurements (this process must already see 8 devices)."""
  import jax  # noqa: PLC0415 - after the caller has set XLA_FLAGS
  import numpy as np  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from jax.sharding import AxisType, NamedSharding  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  import jaxsoftmax  # noqa: PLC0415

  if jax.device_count() < 8:
    raise RuntimeError(f"needs 8 devices; this process has {jax.device_count()} (run it through "
                       "`jaxsoftmax bench --sharded`, which sets XLA_FLAGS)")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w = (rng.normal(size=(d, v)) / np.sqrt(d)).astype(np.float32)
  y = rng.integers(0, v, size=n).astype(np.int32)
  layouts = [("tp", (p,), ("tp",)) for p in (1, 2, 4, 8)] + [("dp x tp", (2, 4), ("dp", "tp"))]
  rows = []
  for name, shape, axis_names in layouts:
    size = int(np.prod(shape))
    batch = "dp" if "dp" in axis_names else None
    specs = (P(batch, None), P(None, "tp"), P(batch))
    programs = {}
    providers = [("jaxsoftmax", AxisType.Explicit), ("jaxsoftmax-auto", AxisType.Auto),
                 ("gspmd", AxisType.Auto)]
    if size == 1:
      providers.append(("unsharded", AxisType.Auto))
    for provider, axis_type in providers:
      mesh = jax.make_mesh(shape, axis_names, axis_types=(axis_type,) * len(shape),
                           devices=jax.devices()[:size])
      args = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip((x, w, y), specs)]
      if provider == "unsharded":  # the plain op on one device: what the sharded one divides
        args = [jax.device_put(a, jax.devices()[0]) for a in (x, w, y)]
        loss = jaxsoftmax.linear_cross_entropy
      elif provider == "jaxsoftmax-auto":  # plain jit over Auto axes: our partitioning rule
        loss = jaxsoftmax.linear_cross_entropy
      elif provider == "jaxsoftmax":
        loss = jax.shard_map(
            lambda x, w, y: jaxsoftmax.linear_cross_entropy(x, w, y, axis_name="tp",
                                                            batch_axis_name=batch),
            mesh=mesh, in_specs=specs, out_specs=P())
      else:
        def loss(x, w, y):
          return optax.softmax_cross_entropy_with_integer_labels(x @ w, y).mean()
      with jax.set_mesh(mesh):
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        compiled = fn.lower(*args).compile()
      stats = compiled.memory_analysis()
      found = collectives_in(compiled.as_text())
      programs[provider] = (compiled, args)
      rows.append({"layout": name, "devices": size, "mesh": dict(zip(axis_names, shape)),
                   "provider": provider,
                   "temp_mib": stats.temp_size_in_bytes / 2**20,
                   "argument_mib": stats.argument_size_in_bytes / 2**20,
                   "output_mib": stats.output_size_in_bytes / 2**20,
                   "collectives": len(found),
                   "collective_kinds": sorted({c["kind"] for c in found}),
                   "collective_mib": sum(c["bytes"] for c in found) / 2**20,
                   "largest_collective_mib": max((c["bytes"] for c in found), default=0) / 2**20})
    times = {p: [] for p in programs}
    for _ in range(reps + 1):  # the first round warms up
      for provider, (compiled, args) in programs.items():
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times[provider].append(time.perf_counter() - start)
    for row in rows[-len(programs):]:
      row["median_ms"] = 1e3 * statistics.median(times[row["provider"]][1:])
  return {"shape": {"N": n, "D": d, "V": v}, "dtype": "float32", "jax": jax.__version__,
          "device": f"{jax.device_count()} x {jax.devices()[0].device_kind} (host)",
          "reps": reps, "rows": rows}


def markdown(doc: dict) -> str:
  """The README's table."""
  s = doc["shape"]
  lines = [f"N={s['N']}, D={s['D']}, V={s['V']}, float32, jit(value_and_grad) of the mean loss; "
           f"{doc['device']}, jax {doc['jax']}; median of {doc['reps']} interleaved calls.", "",
           "| layout | P | provider | temp MiB / device | collectives | kinds | "
           "largest collective MiB | all collectives MiB | median ms |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in doc["rows"]:
    lines.append(f"| {r['layout']} | {r['devices']} | {r['provider']} | {r['temp_mib']:.1f} | "
                 f"{r['collectives']} | {', '.join(r['collective_kinds']) or '-'} | "
                 f"{r['largest_collective_mib']:.2f} | {r['collective_mib']:.2f} | "
                 f"{r['median_ms']:.0f} |")
  return "\n".join(lines) + "\n"


def chart(doc: dict, path: pathlib.Path) -> None:
  """Per-device temporary memory against the vocabulary split, both providers."""
  from jaxsoftmax._src import plotting  # noqa: PLC0415

  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for provider, style in (("jaxsoftmax", "o-"), ("gspmd", "s--")):
    pts = [(r["devices"], r["temp_mib"]) for r in doc["rows"]
           if r["provider"] == provider and r["layout"] == "tp"]
    ax.plot([p for p, _ in pts], [m for _, m in pts], style, label=provider)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("devices the vocabulary is split over (P)")
  ax.set_ylabel("XLA temporary memory per device (MiB)")
  s = doc["shape"]
  ax.set_title(f"linear cross-entropy, N={s['N']} D={s['D']} V={s['V']}")
  ax.legend()
  plotting.save_png(fig, path)


def run_in_child(out_dir: str | os.PathLike, *, n: int, d: int, v: int, reps: int) -> dict:
  """Runs :func:`measure` in a child process that sees 8 host devices; writes
  ``sharded.json``, ``sharded.md`` and ``sharded.png`` under ``out_dir``; returns the document."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "jaxsoftmax.bench.sharded", str(n), str(d), str(v),
                         str(reps)], check=False, env=env, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"sharded benchmark failed:\n{done.stderr[-4000:]}")
  doc = json.loads(done.stdout)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  from jaxsoftmax._src import files  # noqa: PLC0415

  files.write_text(out / "sharded.json", json.dumps(doc, indent=1) + "\n")
  files.write_text(out / "sharded.md", markdown(doc))
  chart(doc, out / "sharded.png")
  return doc


if __name__ == "__main__":
  print(json.dumps(measure(*(int(a) for a in sys.argv[1:]))))
