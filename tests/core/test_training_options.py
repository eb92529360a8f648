"""Large-vocabulary options beyond the parity grid: argmax/accuracy against torch, filtering,
accumulation precision against torch's linear_cross_entropy, bad values, a bounded fuzz."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxsoftmax

RNG = np.random.default_rng(15)


def test_argmax_and_accuracy_match_torch():
  x = RNG.normal(size=(9, 6)).astype(np.float32)
  x[2, [1, 4]] = 5.0  # a tie: the first class, as torch.argmax
  y = np.array([0, 1, 1, 3, -100, 5, 2, 2, 0])
  _, aux = jaxsoftmax.cross_entropy(x, y, ignore_index=-100, return_argmax=True,
                                    return_accuracy=True, logit_softcap=30.0)
  t = torch.from_numpy(x)
  arg = (30.0 * torch.tanh(t / 30.0)).argmax(1).numpy()
  np.testing.assert_array_equal(aux.argmax, arg)
  kept = y != -100
  assert float(aux.accuracy) == pytest.approx(float(np.mean(arg[kept] == y[kept])))
  w = RNG.normal(size=(6, 5)).astype(np.float32)
  _, lin = jaxsoftmax.linear_cross_entropy(x, w, np.clip(y, 0, 4), return_argmax=True,
                                           return_accuracy=True, chunk_size=4)
  np.testing.assert_array_equal(lin.argmax, (t @ torch.from_numpy(w)).argmax(1).numpy())


def test_returned_z_loss_is_the_term_inside_the_loss():
  x, y = RNG.normal(size=(7, 5)) * 4, np.array([0, 1, 2, 3, 4, 0, -1])
  plain = jaxsoftmax.cross_entropy(x, y, ignore_index=-1)
  loss, aux = jaxsoftmax.cross_entropy(x, y, ignore_index=-1, z_loss=1e-3, return_z_loss=True)
  np.testing.assert_allclose(loss, plain + aux.z_loss, rtol=1e-6)


def test_filter_eps_zero_is_exact_and_auto_error_is_small():
  n, d, v = 64, 16, 3000
  x = jnp.asarray(RNG.normal(size=(n, d)), jnp.float32)
  w = jnp.asarray(RNG.normal(size=(d, v)) * 3, jnp.float32)  # peaked predictions
  y = jnp.asarray(RNG.integers(0, v, n))

  def grads(eps):
    return jax.grad(lambda x, w: jaxsoftmax.linear_cross_entropy(
        x, w, y, filter_eps=eps, chunk_size=32), (0, 1))(x, w)

  exact, zero, loose = grads(None), grads(0.0), grads(1e-3)
  for a, b in zip(exact, zero):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-7)  # blockwise sums: another order
  for a, b in zip(exact, loose):  # skipped entries are each below 1e-3 / n of the gradient
    assert float(jnp.max(jnp.abs(a - b))) < 1e-3 * v / n * float(jnp.max(jnp.abs(x)))


def test_bfloat16_weight_gradient_over_64_chunks_is_no_worse_than_torch():
  n, d, v = 512, 32, 257
  x64 = RNG.normal(size=(n, d))
  w64 = RNG.normal(size=(v, d)) * 0.3
  y = RNG.integers(0, v, n)
  xb = torch.from_numpy(x64).bfloat16().requires_grad_()
  wb = torch.from_numpy(w64).bfloat16().requires_grad_()
  torch.nn.functional.linear_cross_entropy(
      xb, wb, torch.from_numpy(y), options=torch.nn.LinearCrossEntropyOptions(
          batch_chunk_size=8)).backward()
  xr = torch.from_numpy(xb.detach().double().numpy()).requires_grad_()
  wr = torch.from_numpy(wb.detach().double().numpy()).requires_grad_()
  torch.nn.functional.cross_entropy(xr @ wr.T, torch.from_numpy(y)).backward()
  reference = wr.grad.numpy()
  xj, wj = jnp.asarray(xb.detach().float().numpy(), jnp.bfloat16), jnp.asarray(
      wb.detach().float().numpy(), jnp.bfloat16)
  dw = jax.grad(lambda w: jaxsoftmax.linear_cross_entropy(xj, w.T, y, chunk_size=8))(wj)
  ours = np.abs(np.asarray(dw, np.float64) - reference).max()
  theirs = np.abs(wb.grad.double().numpy() - reference).max()
  assert n // 8 >= 64
  print(f"bfloat16 dw max error vs float64, {n // 8} chunks: ours {ours:.3g}, torch {theirs:.3g}")
  assert ours <= theirs, (ours, theirs)


@pytest.mark.parametrize("kw, error, match", [
    (dict(z_loss=-1.0), ValueError, "z_loss"),
    (dict(z_loss=float("nan")), ValueError, "z_loss"),
    (dict(z_loss="big"), TypeError, "z_loss"),
    (dict(logit_softcap=0.0), ValueError, "logit_softcap"),
    (dict(logit_softcap=-3.0), ValueError, "logit_softcap"),
    (dict(logit_softcap=float("inf")), ValueError, "logit_softcap"),
    (dict(return_lse=1), TypeError, "return_lse"),
])
def test_bad_values_raise_naming_the_argument(kw, error, match):
  x, y = np.zeros((2, 3), np.float32), np.array([0, 1])
  with pytest.raises(error, match=match):
    jaxsoftmax.cross_entropy(x, y, **kw)
  with pytest.raises(error, match=match):
    jaxsoftmax.linear_cross_entropy(x, np.zeros((3, 4), np.float32), y, **kw)


@pytest.mark.parametrize("kw, error", [(dict(filter_eps=-1.0), ValueError),
                                       (dict(filter_eps="sometimes"), ValueError),
                                       (dict(accumulation_dtype=jnp.float16), ValueError)])
def test_bad_linear_options_raise(kw, error):
  with pytest.raises(error):
    jaxsoftmax.linear_cross_entropy(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32),
                                    np.array([0, 1]), **kw)


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(z=st.sampled_from([0.0, 1e-4, 0.1]), cap=st.sampled_from([None, 1.0, 30.0]),
                  reduction=st.sampled_from(["mean", "sum", "none"]),
                  smoothing=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**16))
def test_fuzz_linear_matches_the_logits_path(z, cap, reduction, smoothing, seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(11, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 9)) * 3, jnp.float32)
  y = jnp.asarray(rng.integers(-1, 9, 11))
  kw = dict(ignore_index=-1, z_loss=z, logit_softcap=cap, reduction=reduction,
            label_smoothing=smoothing)

  def fused(x, w):
    return jnp.sum(jaxsoftmax.linear_cross_entropy(x, w, y, chunk_size=4, **kw))

  def logits(x, w):
    return jnp.sum(jaxsoftmax.cross_entropy(x @ w, y, **kw))

  np.testing.assert_allclose(fused(x, w), logits(x, w), rtol=2e-5, atol=1e-6)
  for a, b in zip(jax.grad(fused, (0, 1))(x, w), jax.grad(logits, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(z=st.sampled_from([0.0, 1e-3, 0.1]), cap=st.sampled_from([None, 2.0, 30.0]),
                  reduction=st.sampled_from(["mean", "sum", "none"]),
                  probs=st.booleans(), weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz_mirror_matches_torch_composed(z, cap, reduction, probs, weighted, seed):
  """The mirror's keywords against torch composed from its own ops, probability targets too."""
  from jaxsoftmax import functional as F

  rng = np.random.default_rng(seed)
  x = rng.normal(size=(7, 5)) * 3
  target = rng.dirichlet(np.ones(5), 7) if probs else rng.integers(0, 5, 7)
  weight = rng.uniform(0.5, 2.0, 5) if weighted else None
  ignore = -100 if probs else int(target[0])  # an ignored class, with integer labels

  def theirs(t):
    capped = t if cap is None else cap * torch.tanh(t / cap)
    tt = torch.from_numpy(target)
    loss = torch.nn.functional.cross_entropy(
        capped, tt, weight=None if weight is None else torch.from_numpy(weight),
        ignore_index=ignore, reduction=reduction, label_smoothing=0.1)
    lse = torch.logsumexp(capped, 1)
    kept = torch.ones(7, dtype=torch.bool) if probs else tt != ignore
    rows = torch.where(kept, z * lse**2, torch.zeros_like(lse))
    extra = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / kept.sum()}[reduction]
    return loss + extra

  tx = torch.from_numpy(x).requires_grad_()
  expected = theirs(tx)
  expected.sum().backward()
  with jax.enable_x64(True):
    def ours(x):
      return F.cross_entropy(x, jnp.asarray(target), weight=weight, ignore_index=ignore,
                             reduction=reduction, label_smoothing=0.1, z_loss=z,
                             logit_softcap=cap)
    got = ours(jnp.asarray(x))
    grad = jax.grad(lambda x: jnp.sum(ours(x)))(jnp.asarray(x))
  np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-7, atol=1e-10)
  np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-7, atol=1e-10)
