"""A byte-level next-token model whose output layer is split over the vocabulary, on 8 devices.

embedding (256 bytes x 32) of the last 8 bytes -> hidden (256, tanh) -> linear_cross_entropy over
the 256 next-byte classes, trained with Adam on real text that ships with Python: the standard
library's own source files. The mesh is dp=2 x tp=4 with Explicit axes: the batch is split over
dp, the output kernel and bias over tp (64 classes per device). No axis_name is passed: under jit,
jaxsoftmax reads the layout from the arrays' types and runs the sharded path (one all-gather of
row statistics per chunk, never the (N, V) logits, never an all-gather of x or w).

Run with fewer than 8 devices it starts itself again with 8 host CPU devices (the device count is
fixed when JAX starts): ``python examples/11_sharded_lm_head.py [--steps 300]``.
"""

import argparse
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsoftmax

CONTEXT, EMBED, HIDDEN, VOCAB, BATCH = 8, 32, 256, 256, 512


def main(steps: int) -> None:
  """Trains for ``steps`` Adam steps on this process's 8 devices, printing the loss."""
  # Real text, offline: the standard library's source (the same bytes on every machine with 3.11).
  stdlib = pathlib.Path(os.__file__).parent
  text = b"".join(p.read_bytes() for p in sorted(stdlib.glob("*.py"))[:40])
  data = np.frombuffer(text, np.uint8).astype(np.int32)
  print(f"text: {len(data):,} bytes from {stdlib}")

  mesh = jax.make_mesh((2, 4), ("dp", "tp"), axis_types=(AxisType.Explicit,) * 2)
  jax.set_mesh(mesh)
  rng = np.random.default_rng(0)
  layout = {"embed": P(None, None), "w1": P(None, None), "b1": P(None),
            "w2": P(None, "tp"), "b2": P("tp")}  # the output layer split over the vocabulary
  init = {"embed": rng.normal(size=(VOCAB, EMBED)) * 0.5,
          "w1": rng.normal(size=(CONTEXT * EMBED, HIDDEN)) / np.sqrt(CONTEXT * EMBED),
          "b1": np.zeros(HIDDEN), "w2": rng.normal(size=(HIDDEN, VOCAB)) / np.sqrt(HIDDEN),
          "b2": np.zeros(VOCAB)}
  params = {k: jax.device_put(v.astype(np.float32), NamedSharding(mesh, layout[k]))
            for k, v in init.items()}


  def loss_fn(params, context, target):
    # Explicit sharding asks where the gathered rows live: with the batch, split over dp.
    h = params["embed"].at[context].get(out_sharding=P("dp", None, None))
    h = h.reshape(context.shape[0], CONTEXT * EMBED)
    h = jnp.tanh(h @ params["w1"] + params["b1"])
    return jaxsoftmax.linear_cross_entropy(h, params["w2"], target, bias=params["b2"])


  optimizer = optax.adam(3e-3)
  state = optimizer.init(params)


  @jax.jit
  def step(params, state, context, target):
    loss, grads = jax.value_and_grad(loss_fn)(params, context, target)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


  def batch(i):
    starts = np.random.default_rng(i).integers(0, len(data) - CONTEXT - 1, size=BATCH)
    context = data[starts[:, None] + np.arange(CONTEXT)]
    target = data[starts + CONTEXT]
    return (jax.device_put(context, NamedSharding(mesh, P("dp", None))),
            jax.device_put(target, NamedSharding(mesh, P("dp"))))


  compiled = step.lower(params, state, *batch(0)).compile()
  memory = compiled.memory_analysis()
  block = params["w2"].addressable_shards[0].data.shape
  print(f"mesh dp=2 x tp=4; w2 {init['w2'].shape} is {block} per device; per-device XLA "
        f"temporaries of a training step: {memory.temp_size_in_bytes / 2**20:.2f} MiB")
  first = None
  for i in range(steps):
    params, state, loss = step(params, state, *batch(i))
    # One step in flight at a time: host "devices" share one small thread pool, and many queued
    # steps, each waiting in its collectives for the others, starved it into XLA's 40 s
    # rendezvous timeout on this 2-core machine under load. (Real devices need no such care.)
    loss = float(loss)
    if i % 50 == 0 or i == steps - 1:
      first = loss if first is None else first
      print(f"step {i:4d}  loss {loss:.3f}  (uniform guess: {np.log(VOCAB):.3f})")
  print(f"loss fell from {first:.3f} to {loss:.3f} nats per byte")


def relaunch(steps: int) -> None:
  """Runs this file again in a process that sees 8 host CPU devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, __file__, "--steps", str(steps)], env=env, check=False,
                        capture_output=True, text=True)
  print(done.stdout, end="")
  if done.returncode:
    raise RuntimeError(f"the 8-device run failed:\n{done.stderr[-3000:]}")


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  steps = parser.parse_known_args()[0].steps
  if jax.device_count() < 8:
    relaunch(steps)
  else:
    main(steps)
