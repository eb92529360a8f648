"""One process of the multi-process test (tests/core/test_distributed.py); not a test itself.

Trains a small model whose output layer is split over the vocabulary (tp) and whose batch is split
over the rows (dp), on a global dp=2 x tp=2 mesh, with jaxsoftmax.linear_cross_entropy inside
shard_map, and writes the per-step losses and the final parameters as JSON.

    python distributed_worker.py OUT.json                       # one process, 4 local devices
    python distributed_worker.py OUT.json PORT PROCESS_ID 2     # one of 2 processes, 2 devices each

The device count is set through XLA_FLAGS by the caller. Every process builds the same global
arrays from one seed and places its own shards with make_array_from_callback.
"""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxsoftmax  # noqa: E402

N, D, H, V, STEPS = 64, 16, 32, 96, 8


def main(out_path: str, port: str | None = None, process_id: str | None = None,
         num_processes: str | None = None) -> None:
  if port is not None:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=int(num_processes), process_id=int(process_id),
                               initialization_timeout=60, heartbeat_timeout_seconds=30)
  mesh = jax.make_mesh((2, 2), ("dp", "tp"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  rng = np.random.default_rng(0)
  data = {"x": rng.normal(size=(N, D)).astype(np.float32),
          "y": rng.integers(0, V, size=N).astype(np.int32)}
  data["y"][::7] = -100  # some ignored rows on both dp shards
  params = {"w1": (rng.normal(size=(D, H)) / np.sqrt(D)).astype(np.float32),
            "w2": (rng.normal(size=(H, V)) / np.sqrt(H)).astype(np.float32),
            "b2": np.zeros(V, np.float32)}
  specs = {"x": P("dp", None), "y": P("dp"), "w1": P(None, None), "w2": P(None, "tp"),
           "b2": P("tp")}

  def place(name, value):
    sharding = NamedSharding(mesh, specs[name])
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  batch = {k: place(k, v) for k, v in data.items()}
  params = {k: place(k, v) for k, v in params.items()}

  def loss_fn(params, batch):
    def body(w1, w2, b2, x, y):
      hidden = jnp.tanh(x @ w1)
      return jaxsoftmax.linear_cross_entropy(hidden, w2, y, bias=b2, ignore_index=-100,
                                             label_smoothing=0.1, chunk_size=8, axis_name="tp",
                                             batch_axis_name="dp")
    return jax.shard_map(body, mesh=mesh, in_specs=(specs["w1"], specs["w2"], specs["b2"],
                                                    specs["x"], specs["y"]),
                         out_specs=P())(params["w1"], params["w2"], params["b2"], batch["x"],
                                        batch["y"])

  optimizer = optax.adam(1e-2)
  with jax.set_mesh(mesh):
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, batch):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(STEPS):
      params, state, loss = step(params, state, batch)
      losses.append(float(loss))
    final = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)).tolist()
             for k, v in params.items()}
  if jax.process_index() == 0:
    with open(out_path, "w") as f:
      json.dump({"losses": losses, "params": final, "processes": jax.process_count(),
                 "devices": jax.device_count()}, f)
  if port is not None:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
