"""The tutorial's two classifiers beside their PyTorch originals, checked with jaxsoftmax.parity.

    .venv/bin/python examples/13_tutorial_models_parity.py

1. ``compare_modules`` on the income MLP and the digits CNN: torch's weights are copied into the
   Flax models (Linear ``(out, in)`` -> ``(in, out)``, Conv ``OIHW`` -> ``HWIO``), and the logits,
   the input gradient and every parameter's gradient are compared, layer by layer. The CNN's
   images go to torch as NCHW and to Flax as NHWC (``layouts``).
2. ``compare_training``: 20 Adam steps on both sides from the same weights and batches
   (optax.adam and torch.optim.Adam built from one specification), loss and drift per step.
"""

import numpy as np
import torch
from flax import nnx

from jaxsoftmax import parity
from jaxsoftmax.tutorial import models, torch_models


def main():
  rng = np.random.default_rng(0)
  torch.manual_seed(0)
  income = parity.compare_modules(models.IncomeClassifier(rngs=nnx.Rngs(0)),
                                  torch_models.IncomeClassifier(),
                                  rng.standard_normal((16, 13)).astype(np.float32), names=["x"])
  print(income.markdown())
  digits = parity.compare_modules(models.DigitClassifier(rngs=nnx.Rngs(0)),
                                  torch_models.DigitClassifier(),
                                  rng.uniform(size=(4, 1, 28, 28)).astype(np.float32),
                                  names=["images"], layouts={"images": "NCHW->NHWC"})
  print(digits.markdown())

  batches = []
  for _ in range(20):
    x = rng.standard_normal((64, 13)).astype(np.float32)
    batches.append((x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)))
  training = parity.compare_training(models.IncomeClassifier(rngs=nnx.Rngs(0)),
                                     torch_models.IncomeClassifier(), batches,
                                     optimizer="adam", lr=1e-3)
  print(training.markdown())
  for report in (income, digits, training):
    report.assert_passed()
  print("all three reports pass")


if __name__ == "__main__":
  main()
