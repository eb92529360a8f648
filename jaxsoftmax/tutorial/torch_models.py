"""The tutorial's PyTorch models, as written there (NCHW images for the CNN).

Importing this module needs torch; ``import jaxsoftmax`` does not.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IncomeClassifier", "DigitClassifier"]


class IncomeClassifier(nn.Module):
  """13 features -> 64 -> 32 -> 2 logits, ReLU between; no softmax (CrossEntropyLoss has it)."""

  def __init__(self):
    super().__init__()
    self.fc1 = nn.Linear(13, 64)
    self.fc2 = nn.Linear(64, 32)
    self.fc3 = nn.Linear(32, 2)
    self.relu = nn.ReLU()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.relu(self.fc1(x))
    x = self.relu(self.fc2(x))
    return self.fc3(x)


class DigitClassifier(nn.Module):
  """MNIST CNN on ``(N, 1, 28, 28)`` images, returning 10 logits."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
    self.pool = nn.MaxPool2d(2)
    self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
    self.fc1 = nn.Linear(16 * 4 * 4, 120)
    self.fc2 = nn.Linear(120, 84)
    self.fc3 = nn.Linear(84, 10)
    self.relu = nn.ReLU()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.pool(self.relu(self.conv1(x)))
    x = self.pool(self.relu(self.conv2(x)))
    x = torch.flatten(x, 1)
    x = self.relu(self.fc1(x))
    x = self.relu(self.fc2(x))
    return self.fc3(x)
