"""Temperature scaling: T < 1 sharpens, T > 1 softens; then fit T for calibration (Guo et al.)."""

import numpy as np
import torch

import jaxsoftmax
from jaxsoftmax.tutorial.training import fit

torch.manual_seed(0)
logits = torch.randn(5) * 2
for t in (0.5, 1.0, 2.0):
  ours = np.asarray(jaxsoftmax.softmax(logits.numpy(), temperature=t))
  theirs = torch.softmax(logits / t, dim=0).numpy()
  print(f"T={t}: jaxsoftmax {ours.round(3).tolist()}  torch {theirs.round(3).tolist()}")

# Calibration: fit T on a validation split of the income data, report NLL and ECE on test data.
result = fit("income", epochs=1, max_steps=300)
print(f"T={result.temperature:.3f} fitted on validation data; on test data: NLL {result.nll_before:.4f} -> {result.nll_after:.4f}, "
      f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f}")
