"""Choosing dim: which axis sums to one. For a (batch, classes) tensor it is dim=1."""

import numpy as np
import torch

from jaxsoftmax import functional as F

torch.manual_seed(0)
x = torch.randn(3, 5)
for dim in (0, 1):
  ours = np.asarray(F.softmax(x.numpy(), dim=dim))
  theirs = torch.softmax(x, dim=dim).numpy()
  print(f"dim={dim}: sums over dim {dim} = {ours.sum(axis=dim).round(4).tolist()}; "
        f"max |jax - torch| = {np.abs(ours - theirs).max():.1e}")
images = torch.randn(2, 3, 4, 4)  # (N, C, H, W): classes along dim 1, e.g. segmentation
ours = np.asarray(F.softmax(images.numpy(), dim=1))
print("(N, C, H, W) with dim=1: every pixel's channels sum to one:",
      bool(np.allclose(ours.sum(axis=1), 1.0)))
