"""``jaxsoftmax train``: train a tutorial classifier with a progress bar and report what it
measured."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jaxsoftmax.tutorial import training

__all__ = ["DEFAULT_EPOCHS", "train"]

DEFAULT_EPOCHS = {"income": 10, "digits": 15}


def train(console: Console, task: str, *, epochs: int | None = None, out=None,
          **fit_options) -> int:
  """Trains ``task`` with a progress bar (``fit_options`` as :func:`training.fit`), then prints
  the held-out accuracy, the calibration and, with ``compare_torch``, the torch twin's
  divergence; returns the exit status."""
  epochs = epochs if epochs is not None else DEFAULT_EPOCHS[task]
  out = out or f"runs/{task}"
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True) as progress:
    result = training.fit(task, epochs=epochs, out=out, progress=progress, **fit_options)
  console.print(f"{task}: held-out accuracy {result.test_accuracy:.4f} after "
                f"{result.epochs} epochs, {result.seconds_per_epoch:.2f} s/epoch")
  console.print(f"temperature scaling: T={result.temperature:.3f}; NLL {result.nll_before:.4f} -> "
                f"{result.nll_after:.4f}; ECE {result.ece_before:.4f} -> {result.ece_after:.4f}")
  if result.max_divergence is not None:
    console.print(f"torch twin, same init and batches: largest loss difference "
                  f"{result.max_divergence:.2e} (curves in {out}/loss_curves.png)")
  console.print(f"checkpoint, metrics and reliability diagrams in {out}/")
  return 0
