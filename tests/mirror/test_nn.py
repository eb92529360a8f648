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
