"""nn.Softmax(dim=1) on 3x5 logits: every row becomes a probability distribution.

The tutorial draws its 3x5 logits at random; here torch.manual_seed(0) fixes them so the output
can be compared line by line.
"""

import numpy as np
import torch

from jaxsoftmax import nn

torch.manual_seed(0)
logits = torch.randn(3, 5)

theirs = torch.nn.Softmax(dim=1)(logits)
ours = nn.Softmax(dim=1)(logits.numpy())

print("logits:\n", logits.numpy().round(4))
print("torch.nn.Softmax(dim=1):\n", theirs.numpy().round(4))
print("jaxsoftmax.nn.Softmax(dim=1):\n", np.asarray(ours).round(4))
print("row sums:", np.asarray(ours.sum(axis=1)).round(6).tolist())
print("max |jax - torch|:", float(np.abs(np.asarray(ours) - theirs.numpy()).max()))
