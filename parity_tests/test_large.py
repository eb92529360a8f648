"""Programs that only inputs of many megabytes compile, against torch: on a CPU, a float32
soft-target cross_entropy of rows.FENCE_FROM_BYTES or more forms its exponentials in each fusion
from fenced operands (rows.fenced_on_cpu) instead of sharing one temporary. The grid's inputs are
far smaller, so this checks that program's values and gradients, jitted as a training step
(one fwd+bwd program) and as jax.vjp (the forward's residual and the backward apart)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

import jaxsoftmax
from jaxsoftmax._src import rows
from jaxsoftmax.parity import assert_close

C = 128
N = rows.FENCE_FROM_BYTES // (4 * C)


def _inputs(seed):
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal((N, C)) * 4).astype(np.float32)
  x[::7] += 1e4  # rows whose x - m must not cancel against an lse of 1e4
  t = rng.uniform(0.0, 1.0, (N, C)).astype(np.float32)
  t[1::2] /= t[1::2].sum(axis=1, keepdims=True)  # half the rows are distributions
  w = rng.uniform(0.2, 2.0, C).astype(np.float32)
  return x, t, w


def _torch(x, t, w, cot, **kw):
  tx = torch.from_numpy(x).requires_grad_()
  loss = tF.cross_entropy(tx, torch.from_numpy(t), weight=torch.from_numpy(w), **kw)
  loss.backward(torch.from_numpy(cot))
  return loss.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("reduction", ["sum", "none"])  # gradients of O(1), not O(1/N)
def test_a_fenced_soft_target_loss_matches_torch(reduction):
  x, t, w = _inputs(3)
  kw = dict(reduction=reduction, label_smoothing=0.1)
  cot = (np.random.default_rng(4).uniform(0.5, 2.0, N).astype(np.float32)
         if reduction == "none" else np.array(1.5, np.float32))
  want = _torch(x, t, w, cot, **kw)

  def f(v):
    return jaxsoftmax.cross_entropy(v, jnp.asarray(t), weight=jnp.asarray(w), **kw)

  def loss_and_grad(v):
    loss, vjp = jax.vjp(f, v)
    return loss, vjp(jnp.asarray(cot))[0]

  x = jnp.asarray(x)
  for name, got in (("training step", jax.jit(loss_and_grad)(x)), ("vjp", loss_and_grad(x))):
    assert_close(got[0], want[0], "float32", f"{name}: loss")
    assert_close(got[1], want[1], "float32", f"{name}: d input")
