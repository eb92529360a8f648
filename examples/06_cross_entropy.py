"""CrossEntropyLoss already includes log-softmax: feed it logits, never probabilities."""

import numpy as np
import torch

from jaxsoftmax import functional as F
from jaxsoftmax import nn

torch.manual_seed(0)
logits = torch.randn(4, 5)
target = torch.tensor([1, 0, 4, 2])
x, y = logits.numpy(), target.numpy()

ce = float(nn.CrossEntropyLoss()(x, y))
by_hand = float(F.nll_loss(F.log_softmax(x, dim=1), y))
theirs = torch.nn.CrossEntropyLoss()(logits, target).item()
print(f"CrossEntropyLoss(logits)          jaxsoftmax {ce:.6f}  torch {theirs:.6f}")
print(f"nll_loss(log_softmax(logits))     jaxsoftmax {by_hand:.6f}")
double = float(nn.CrossEntropyLoss()(np.asarray(F.softmax(x, dim=1)), y))
print(f"the mistake: softmax, then CrossEntropyLoss: {double:.6f} (a different, flatter loss)")
