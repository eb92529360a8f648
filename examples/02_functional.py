"""The functional form: F.softmax(x, dim=1), in the torch mirror and in JAX idiom."""

import numpy as np
import torch
import torch.nn.functional as tF

import jaxsoftmax
from jaxsoftmax import functional as F

torch.manual_seed(0)
logits = torch.randn(3, 5)

print("torch F.softmax(x, dim=1)       :", tF.softmax(logits, dim=1)[0].numpy().round(4).tolist())
print("jaxsoftmax.functional.softmax   :", np.asarray(F.softmax(logits.numpy(), dim=1))[0].round(4).tolist())
print("jaxsoftmax.softmax(x, axis=1)   :", np.asarray(jaxsoftmax.softmax(logits.numpy(), axis=1))[0].round(4).tolist())
print("dtype= casts first, as in torch :",
      F.softmax(np.array([[1, 2, 3]]), dim=1, dtype=torch.float32).dtype)
