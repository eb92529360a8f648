"""LogSoftmax vs log(softmax): the first underflows to -inf, log_softmax stays finite."""

import jax.numpy as jnp
import numpy as np
import torch

import jaxsoftmax

x = np.array([0.0, 200.0], np.float32)
print("log(softmax(x))   jaxsoftmax:", np.asarray(jnp.log(jaxsoftmax.softmax(x))).tolist(),
      " torch:", torch.log(torch.softmax(torch.from_numpy(x), 0)).tolist())
print("log_softmax(x)    jaxsoftmax:", np.asarray(jaxsoftmax.log_softmax(x)).tolist(),
      " torch:", torch.log_softmax(torch.from_numpy(x), 0).tolist())
