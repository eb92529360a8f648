import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxsoftmax import nn


def test_class_weight_is_state_but_not_a_trainable_param():
  loss = nn.CrossEntropyLoss(weight=jnp.array([1.0, 2.0, 3.0]))
  assert "weight" in nnx.state(loss)
  assert not jax.tree.leaves(nnx.state(loss, nnx.Param))
  assert isinstance(loss.weight, nn.Buffer)


def test_modules_work_inside_an_nnx_training_step():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(4, 3, rngs=rngs)
      self.loss = nn.CrossEntropyLoss(label_smoothing=0.1)

    def __call__(self, x, y):
      return self.loss(self.linear(x), y)

  model = Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 4)), jnp.float32)
  y = jnp.arange(16) % 3

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: m(x, y))(model)
    optimizer.update(model, grads)
    return loss

  # optax's adam mixes Python floats with int32 counts, which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    losses = [float(step(model, optimizer)) for _ in range(20)]
  assert losses[-1] < losses[0]


def test_softmax2d_and_reprs():
  with pytest.raises(ValueError, match="3D or 4D"):
    nn.Softmax2d()(jnp.ones((2, 3)))
  assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
  np.testing.assert_allclose(nn.Softmax2d()(jnp.zeros((2, 4, 3, 3))).sum(-3), 1.0, rtol=1e-6)


def test_loss_modules_pass_the_training_options_through():
  """The modules' JAX-side keywords reach the core: each equals the functional call."""
  import numpy as np
  from flax import nnx

  from jaxsoftmax import functional as F
  from jaxsoftmax import nn as jnn

  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(6, 9)).astype(np.float32) * 3, rng.integers(0, 9, 6)
  module = jnn.CrossEntropyLoss(z_loss=0.01, logit_softcap=2.0)
  np.testing.assert_allclose(module(x, y), F.cross_entropy(x, y, z_loss=0.01, logit_softcap=2.0),
                             rtol=1e-6)
  assert abs(float(module(x, y)) - float(F.cross_entropy(x, y))) > 1e-3  # the options act
  head = jnn.LinearCrossEntropyLoss(5, 9, z_loss=0.01, logit_softcap=2.0, filter_eps=0.0,
                                    rngs=nnx.Rngs(0))
  h = rng.normal(size=(6, 5)).astype(np.float32)
  expected = F.linear_cross_entropy(h, head.linear.kernel[...].T, y, z_loss=0.01,
                                    logit_softcap=2.0)
  np.testing.assert_allclose(head(h, y), expected, rtol=1e-5)
