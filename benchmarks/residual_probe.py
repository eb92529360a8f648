"""Which residual should the XLA path keep? A probe for one device run (issue 17).

Times fwd+bwd (``y, vjp(g)`` in one jitted call) of three formulations side by side, interleaved,
on the default device:

- ``ours``: ``jaxsoftmax`` as shipped (implementation="xla"). At the H100 run (e1cbe0e) softmax
  kept its float32 output, log_softmax / cross_entropy ``e = exp(x - m)`` in float32 (4 bytes per
  element); since b6c2b2c a 16-bit input of 2^20 elements or more keeps ``x`` instead
  (``checks.REBUILD_FROM``), so there ``ours`` and ``recompute`` are the same residual.
- ``recompute``: keeps ``x`` in its own dtype (2 bytes per element in bfloat16; the caller holds
  ``x`` anyway) and the row statistics, and rebuilds the same float32 ``e`` in the backward: the
  same gradient, rounded once, for one more ``exp`` per element.
- ``peer``: jax.nn.softmax / jax.nn.log_softmax / optax's integer-label cross entropy.

Prints one line per (op, dtype, shape) with median ms and ratios; ``--out`` writes JSON.
``--tiny`` runs small shapes (a CPU check of the script itself).

    PYTHONPATH=. python benchmarks/residual_probe.py --out DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jaxsoftmax


def _stats(x):
  xc = x.astype(jnp.float32)
  m = jnp.max(xc, axis=-1, keepdims=True)
  e = jnp.exp(xc - m)
  return xc, m, e, jnp.sum(e, axis=-1, keepdims=True)


@jax.custom_vjp
def softmax_recompute(x):
  return softmax_recompute_fwd(x)[0]


def softmax_recompute_fwd(x):
  _, m, e, s = _stats(x)
  return (e / s).astype(x.dtype), (x, m, s)


def softmax_recompute_bwd(res, g):
  x, m, s = res
  y = jnp.exp(x.astype(jnp.float32) - m) / s
  gc = g.astype(jnp.float32)
  return ((y * (gc - jnp.sum(gc * y, axis=-1, keepdims=True))).astype(g.dtype),)


softmax_recompute.defvjp(softmax_recompute_fwd, softmax_recompute_bwd)


@jax.custom_vjp
def log_softmax_recompute(x):
  return log_softmax_recompute_fwd(x)[0]


def log_softmax_recompute_fwd(x):
  xc, m, _, s = _stats(x)
  return ((xc - m) - jnp.log(s)).astype(x.dtype), (x, m, s)


def log_softmax_recompute_bwd(res, g):
  x, m, s = res
  gc = g.astype(jnp.float32)
  p = jnp.exp(x.astype(jnp.float32) - m) / s
  return ((gc - p * jnp.sum(gc, axis=-1, keepdims=True)).astype(g.dtype),)


log_softmax_recompute.defvjp(log_softmax_recompute_fwd, log_softmax_recompute_bwd)


@jax.custom_vjp
def ce_recompute(x, labels):
  return ce_recompute_fwd(x, labels)[0]


def ce_recompute_fwd(x, labels):
  xc, m, _, s = _stats(x)
  lse = m + jnp.log(s)
  picked = jnp.take_along_axis(xc, labels[:, None], axis=-1)
  return jnp.mean(lse - picked).astype(x.dtype), (x, lse, labels)


def ce_recompute_bwd(res, g):
  x, lse, labels = res
  n, c = x.shape
  scale = g.astype(jnp.float32) / n
  p = jnp.exp(x.astype(jnp.float32) - lse) * scale
  hot = jnp.arange(c)[None, :] == labels[:, None]
  return (jnp.where(hot, p - scale, p).astype(x.dtype), None)


ce_recompute.defvjp(ce_recompute_fwd, ce_recompute_bwd)


def _ce_optax(x, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, labels))


FORMS = {
    "softmax": {"ours": functools.partial(jaxsoftmax.softmax, implementation="xla"),
                "recompute": softmax_recompute, "peer": jax.nn.softmax},
    "log_softmax": {"ours": functools.partial(jaxsoftmax.log_softmax, implementation="xla"),
                    "recompute": log_softmax_recompute, "peer": jax.nn.log_softmax},
    "cross_entropy": {"ours": functools.partial(jaxsoftmax.cross_entropy, implementation="xla"),
                      "recompute": ce_recompute, "peer": _ce_optax},
}


def _program(op, fn):
  if op == "cross_entropy":
    def run(x, labels, g):
      y, vjp = jax.vjp(lambda v: fn(v, labels), x)
      return y, vjp(g)[0]
  else:
    def run(x, labels, g):
      y, vjp = jax.vjp(fn, x)
      return y, vjp(g)[0]
  return jax.jit(run)


def _check(op, dtype, shape, progs, args):
  """The recompute form's gradient agrees with ours (same float32 math, rounded once)."""
  a = progs["ours"](*args)[1].astype(jnp.float32)
  b = progs["recompute"](*args)[1].astype(jnp.float32)
  scale = float(jnp.max(jnp.abs(a))) or 1.0
  return float(jnp.max(jnp.abs(a - b))) / scale


def probe(op, dtype, shape, calls, rounds):
  key = jax.random.key(0)
  kx, kl, kg = jax.random.split(key, 3)
  x = jax.random.normal(kx, shape, jnp.float32).astype(dtype) * 3
  labels = jax.random.randint(kl, shape[:1], 0, shape[1])
  g = (jnp.ones((), dtype) if op == "cross_entropy"
       else jax.random.normal(kg, shape, jnp.float32).astype(dtype))
  args = (x, labels, g)
  progs = {name: _program(op, fn) for name, fn in FORMS[op].items()}
  for p in progs.values():
    jax.block_until_ready(p(*args))
  times = {name: [] for name in progs}
  names = list(progs)
  for r in range(rounds):
    order = names if r % 2 == 0 else names[::-1]
    for _ in range(calls):
      for name in order:
        t0 = time.perf_counter()
        jax.block_until_ready(progs[name](*args))
        times[name].append(time.perf_counter() - t0)
  med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
  return {"op": op, "dtype": jnp.dtype(dtype).name, "shape": list(shape), "ms": med,
          "peer/ours": med["peer"] / med["ours"], "peer/recompute": med["peer"] / med["recompute"],
          "ours/recompute": med["ours"] / med["recompute"],
          "recompute_grad_rel_diff": _check(op, dtype, shape, progs, args)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None)
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--calls", type=int, default=15)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--ops", nargs="+", default=list(FORMS))
  args = parser.parse_args()
  shapes = ([(64, 128), (16, 10)] if args.tiny else
            [(65536, 10), (4096, 1024), (4096, 8192), (4096, 32768), (1024, 131072)])
  device = jax.devices()[0]
  print(f"device: {device.device_kind}, jax {jax.__version__}", flush=True)
  rows = []
  for op in args.ops:
    for dtype in (jnp.bfloat16, jnp.float32):
      for shape in shapes:
        row = probe(op, dtype, shape, args.calls, args.rounds)
        rows.append(row)
        ms = row["ms"]
        print(f"{op:13s} {row['dtype']:8s} {tuple(shape)!s:16s} ours {ms['ours']:8.3f} "
              f"recompute {ms['recompute']:8.3f} peer {ms['peer']:8.3f} ms | peer/ours "
              f"{row['peer/ours']:.2f} peer/recompute {row['peer/recompute']:.2f} | grad diff "
              f"{row['recompute_grad_rel_diff']:.1e}", flush=True)
        if args.out:
          with open(f"{args.out}/residual_probe.json", "w") as f:
            json.dump({"device": device.device_kind, "jax": jax.__version__, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
  main()
