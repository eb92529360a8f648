"""nn.AdaptiveLogSoftmaxWithLoss against torch's: outputs, loss, log_prob, predict, every
gradient, weights both ways, and torch's errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxsoftmax import nn as jnn
from jaxsoftmax.tutorial import interop

TOL = {"float32": dict(rtol=1.3e-6 * 10, atol=1e-5), "float64": dict(rtol=1e-7, atol=1e-7)}


def _pair(dtype, head_bias):
  torch.manual_seed(0)
  t = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 12], div_value=2.0, head_bias=head_bias)
  t = t.to(getattr(torch, dtype))
  m = jnn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 12], div_value=2.0, head_bias=head_bias,
                                     dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
  return t, interop.from_torch(m, t.state_dict())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("head_bias", [False, True])
def test_matches_torch_values_and_gradients(dtype, head_bias):
  with jax.enable_x64(dtype == "float64"):
    t, m = _pair(dtype, head_bias)
    x = np.random.default_rng(1).normal(size=(9, 16)).astype(dtype)
    y = np.array([0, 4, 5, 11, 12, 19, 3, 7, 15])
    out = t(torch.from_numpy(x), torch.from_numpy(y))
    out.loss.backward()
    ours = m(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(ours.output, out.output.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(ours.loss, out.loss.item(), **TOL[dtype])
    np.testing.assert_allclose(m.log_prob(x), t.log_prob(torch.from_numpy(x)).detach().numpy(),
                               **TOL[dtype])
    np.testing.assert_array_equal(m.predict(x), t.predict(torch.from_numpy(x)).numpy())
    grads = nnx.grad(lambda m: m(jnp.asarray(x), jnp.asarray(y)).loss)(m)
    theirs = {k: p.grad.numpy() for k, p in t.named_parameters()}
    ours = interop.torch_layout(nnx.merge(nnx.graphdef(m), grads))
    assert set(ours) == set(theirs)
    for key in theirs:
      np.testing.assert_allclose(ours[key], theirs[key], err_msg=key, **TOL[dtype])
    x0 = torch.from_numpy(x[0])
    np.testing.assert_allclose(m(x[0], y[0]).output, t(x0, torch.tensor(y[0])).output.item(),
                               **TOL[dtype])


def test_weights_round_trip_to_torch():
  t, m = _pair("float32", True)
  fresh = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 12], div_value=2.0, head_bias=True)
  fresh.load_state_dict(interop.to_torch(m), strict=True)
  for (k, a), (_, b) in zip(t.state_dict().items(), fresh.state_dict().items()):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


@pytest.mark.parametrize("cutoffs", [[], [5, 3], [0, 5], [5, 20], [5, 5], [2.5]])
def test_bad_cutoffs_raise_as_torch(cutoffs):
  with pytest.raises(ValueError):
    torch.nn.AdaptiveLogSoftmaxWithLoss(16, 20, cutoffs)
  with pytest.raises(ValueError, match="cutoffs"):
    jnn.AdaptiveLogSoftmaxWithLoss(16, 20, cutoffs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("target", [[0, 20], [-1, 3]])
def test_bad_targets_raise_as_torch(target):
  t, m = _pair("float32", False)
  x = np.zeros((2, 16), np.float32)
  with pytest.raises(RuntimeError):
    t(torch.from_numpy(x), torch.tensor(target))
  with pytest.raises(RuntimeError, match=r"\[0, 19\]"):
    m(x, np.array(target))
  with pytest.raises(IndexError):
    m(x, np.array(target))
  assert np.isnan(jax.jit(lambda x, y: m(x, y).output)(x, np.array(target))).any()


def test_bad_shapes_raise_as_torch():
  t, m = _pair("float32", False)
  for x, y in ((np.zeros((3, 16)), [0, 1]), (np.zeros((2, 2, 16)), [[0]]), (np.zeros(16), [0])):
    with pytest.raises(RuntimeError):
      t(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    with pytest.raises(RuntimeError):
      m(np.asarray(x, np.float32), np.array(y))
