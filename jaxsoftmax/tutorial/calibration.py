"""Temperature scaling (Guo et al., 2017), expected calibration error, reliability diagrams.

A classifier trained with cross-entropy is often over-confident. Dividing its logits by one scalar
``T`` fitted on held-out data fixes much of that without changing a single prediction (the argmax
is unchanged). The fit minimises the validation NLL

.. math:: \\mathrm{NLL}(T) = -\\frac{1}{N}\\sum_n \\log\\mathrm{softmax}(z_n / T)_{y_n}

which is convex in ``beta = 1/T``, so a safeguarded Newton iteration on ``beta`` finds the optimum.
Its derivatives come from ``jax.grad`` through jaxsoftmax's differentiable ``temperature``.
"""

from __future__ import annotations

import numbers
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax
from jaxsoftmax._src import plotting

__all__ = ["nll", "fit_temperature", "expected_calibration_error", "reliability_diagram"]


def nll(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, temperature=1.0) -> jax.Array:
  """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
  log_probs = jaxsoftmax.log_softmax(logits, axis=-1, temperature=temperature)
  return jaxsoftmax.nll_loss(log_probs, labels)


def fit_temperature(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                    max_steps: int = 50, tol: float = 1e-9) -> float:
  """The temperature ``T > 0`` that minimises the NLL of ``labels`` given ``logits``.

  Args:
    logits: ``[N, classes]`` held-out logits (never the training set's).
    labels: ``[N]`` integer labels.
    max_steps: Newton steps at most.
    tol: stop once a step changes ``1/T`` by less than this.

  Returns:
    The fitted temperature, a Python float.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"fit_temperature expects logits [N, classes] and labels [N]; got "
                     f"{logits.shape} and {labels.shape}")

  def objective(beta):
    return nll(logits, labels, temperature=1.0 / beta)

  grad = jax.jit(jax.grad(objective))
  curvature = jax.jit(jax.grad(jax.grad(objective)))
  beta, lo, hi = 1.0, 0.0, np.inf  # the minimiser lies in (lo, hi): a bracket for the safeguard
  for _ in range(max_steps):
    g = float(grad(jnp.float32(beta)))
    if g > 0:
      hi = beta
    else:
      lo = beta
    h = float(curvature(jnp.float32(beta)))
    step = beta - g / h if h > 0 else np.nan
    if not lo < step < hi:  # Newton left the bracket: bisect it (or grow it, while unbounded)
      step = 2.0 * beta if hi == np.inf else 0.5 * (lo + hi)
    if abs(step - beta) < tol * max(1.0, beta):
      beta = step
      break
    beta = step
  return float(1.0 / beta)


def _confidences(probs, labels, n_bins):
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
    raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(f"expected probs [N, classes] and labels [N]; got {probs.shape} and "
                     f"{labels.shape}")
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes to the first bin.
  bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
  return confidence, correct, bins


def expected_calibration_error(probs, labels, *, n_bins: int = 15) -> float:
  """ECE: the sample-weighted mean gap between accuracy and confidence over equal-width bins.

  .. math:: \\mathrm{ECE} = \\sum_b \\frac{|B_b|}{N}\\,\\bigl|\\mathrm{acc}(B_b) - \\mathrm{conf}(B_b)\\bigr|
  """
  confidence, correct, bins = _confidences(probs, labels, n_bins)
  ece = 0.0
  for b in range(n_bins):
    members = bins == b
    if members.any():
      ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
  return float(ece)


def reliability_diagram(probs, labels, path, *, n_bins: int = 15, title: str = "") -> pathlib.Path:
  """Writes a reliability diagram (accuracy per confidence bin against the diagonal) as a PNG."""
  plt = plotting.pyplot()

  confidence, correct, bins = _confidences(probs, labels, n_bins)
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  accuracy = np.array([correct[bins == b].mean() if (bins == b).any() else 0.0
                       for b in range(n_bins)])
  counts = np.bincount(bins, minlength=n_bins)
  ece = expected_calibration_error(probs, labels, n_bins=n_bins)
  fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
  filled = counts > 0  # empty bins have no accuracy to show
  ax.bar(edges[:-1][filled], accuracy[filled], width=1.0 / n_bins, align="edge",
         edgecolor="black", color="tab:blue", label="accuracy")
  ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
         title=f"{title} ECE={ece:.3f}".strip())
  ax.legend(loc="upper left")
  path = pathlib.Path(path)
  plotting.save_png(fig, path, bbox_inches="tight")
  return path
