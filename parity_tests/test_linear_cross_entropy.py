"""linear_cross_entropy against torch, beyond the grid (jaxsoftmax.parity runs every option
combination of the mirror, the core API and the module in every dtype): torch's chunked path,
torch's options object, the exact class-weight gradient, the module's initialisation, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from flax import nnx

import jaxsoftmax
from jaxsoftmax import functional as F
from jaxsoftmax import nn
from jaxsoftmax.parity import assert_close

N, D, V = 37, 24, 53  # 37 rows: chunk sizes 7 and 16 leave a padded last chunk
IGNORED = 3


def _inputs(seed, dtype=np.float32, n=N):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, D)).astype(dtype)
  w = (rng.standard_normal((V, D)) / np.sqrt(D) * 3).astype(dtype)  # torch layout (V, D)
  b = rng.standard_normal(V).astype(dtype)
  cw = rng.uniform(0.2, 2.0, V).astype(dtype)
  y = rng.integers(0, V, n)
  y[::5] = IGNORED  # some rows carry the ignored label
  return x, w, b, cw, y


def _torch(x, w, b, cw, y, cotangent, options=None, **kw):
  tx, tw = (torch.from_numpy(a).requires_grad_() for a in (x, w))
  tb = None if b is None else torch.from_numpy(b).requires_grad_()
  tcw = None if cw is None else torch.from_numpy(cw)
  loss = tF.linear_cross_entropy(tx, tw, torch.from_numpy(y), linear_bias=tb, weight=tcw,
                                 options=options, **kw)
  loss.backward(torch.from_numpy(cotangent))
  return loss.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), (
      None if tb is None else tb.grad.numpy())


def _jax(x, w, b, cw, y, cotangent, **kw):
  def f(x_, w_, b_):
    return F.linear_cross_entropy(x_, w_, y, linear_bias=b_, weight=cw, **kw)

  loss, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w), None if b is None else jnp.asarray(b))
  return (loss, *vjp(jnp.asarray(cotangent, loss.dtype)))


def _check(ours, theirs, dtype):
  for name, a, e in zip(("loss", "d input", "d linear_weight", "d linear_bias"), ours, theirs):
    if e is not None:
      assert_close(a, e, dtype, name)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_torch_chunked_path(reduction):
  x, w, b, cw, y = _inputs(100)
  cot = np.ones(N if reduction == "none" else (), np.float32)
  theirs = _torch(x, w, b, None, y, cot, reduction=reduction,
                  options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=8))
  ours = _jax(x, w, b, None, y, cot, reduction=reduction,
              options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=8))  # torch's object too
  _check(ours, theirs, "float32")


def test_float64_with_x64():
  with jax.enable_x64(True):
    x, w, b, cw, y = _inputs(7, np.float64)
    cot = np.array(1.5)
    kw = dict(label_smoothing=0.1, ignore_index=IGNORED)
    ours = _jax(x, w, b, cw, y, cot, **kw)
    assert ours[0].dtype == jnp.float64
    _check(ours, _torch(x, w, b, cw, y, cot, **kw), "float64")


def test_bfloat16_against_torch_float32_on_the_same_values():
  """bf16 inputs: jaxsoftmax accumulates in float32 and rounds once, so it is compared (as the grid
  does for half types) with torch in float32 on the same bf16 values."""
  x, w, b, _, y = _inputs(8)
  xb, wb, bb = (np.asarray(jnp.asarray(a, jnp.bfloat16)) for a in (x, w, b))
  ours = _jax(xb, wb, bb, None, y, np.array(1.0, np.float32))
  assert all(o.dtype == jnp.bfloat16 for o in ours)
  theirs = _torch(*(a.astype(np.float32) for a in (xb, wb, bb)), None, y,
                  np.array(1.0, np.float32))
  _check(ours, theirs, "bfloat16")


def test_core_api_takes_flax_kernel_layout_and_batch_axes():
  x, w, b, cw, y = _inputs(9, n=36)
  theirs = _torch(x, w, b, cw, y, np.ones(36, np.float32), reduction="none")
  loss = jaxsoftmax.linear_cross_entropy(x.reshape(4, 9, D), w.T, y.reshape(4, 9), bias=b,
                                         weight=cw, reduction="none", chunk_size=5)
  assert loss.shape == (4, 9)
  assert_close(loss.reshape(-1), theirs[0], "float32")
  dw = jax.grad(lambda k: jaxsoftmax.linear_cross_entropy(x, k, y, bias=b, reduction="sum"))(w.T)
  assert_close(dw.T, _torch(x, w, b, None, y, np.array(1.0, np.float32), reduction="sum")[2],
               "float32", "d w")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_class_weight_gradient_is_exact(reduction, label_smoothing):
  """torch refuses to differentiate ``weight``; ours equals autodiff through the unfused loss."""
  x, w, b, cw, y = _inputs(10)
  kw = dict(ignore_index=IGNORED, label_smoothing=label_smoothing, reduction=reduction)
  cot = np.random.default_rng(0).standard_normal(N if reduction == "none" else ()).astype(
      np.float32)
  fused = jax.grad(lambda c: jnp.sum(jaxsoftmax.linear_cross_entropy(
      x, w.T, y, bias=b, weight=c, chunk_size=8, **kw) * cot))(cw)
  unfused = jax.grad(lambda c: jnp.sum(jaxsoftmax.cross_entropy(
      jnp.asarray(x) @ w.T + b[None, :], y, weight=c, **kw) * cot))(cw)
  assert_close(fused, unfused, "float32", "d weight")


def test_reference_paths_single_input_kdim_and_probability_targets():
  rng = np.random.default_rng(11)
  x, w, b, _, y = _inputs(11)
  # (in_features) input with a () target.
  ours = F.linear_cross_entropy(x[0], w, y[0], linear_bias=b)
  theirs = tF.linear_cross_entropy(torch.from_numpy(x[0]), torch.from_numpy(w),
                                   torch.tensor(y[0]), linear_bias=torch.from_numpy(b))
  assert_close(ours, theirs.numpy(), "float32")
  # K-dimensional: weight (C, d1, D), target (N, d1).
  wk = rng.standard_normal((5, 3, D)).astype(np.float32)
  yk = rng.integers(0, 5, (N, 3))
  ours = F.linear_cross_entropy(x, wk, yk, reduction="none")
  theirs = tF.linear_cross_entropy(torch.from_numpy(x), torch.from_numpy(wk),
                                   torch.from_numpy(yk), reduction="none")
  assert_close(ours, theirs.numpy(), "float32")
  # Probability targets.
  p = rng.dirichlet(np.ones(V), N).astype(np.float32)
  ours = F.linear_cross_entropy(x, w, p, label_smoothing=0.1)
  theirs = tF.linear_cross_entropy(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(p),
                                   label_smoothing=0.1)
  assert_close(ours, theirs.numpy(), "float32")


@pytest.mark.parametrize("bias", [False, True])
def test_module_matches_torch_module(bias):
  x, _, _, cw, y = _inputs(12)
  ours = nn.LinearCrossEntropyLoss(D, V, bias=bias, weight=cw, ignore_index=IGNORED,
                                   label_smoothing=0.1, rngs=nnx.Rngs(0))
  theirs = torch.nn.LinearCrossEntropyLoss(D, V, bias=bias, weight=torch.from_numpy(cw),
                                           ignore_index=IGNORED, label_smoothing=0.1)
  with torch.no_grad():  # torch's Linear.weight is the NNX kernel transposed
    theirs.linear.weight.copy_(torch.from_numpy(np.array(ours.linear.kernel[...]).T))
    if bias:
      theirs.linear.bias.copy_(torch.from_numpy(np.array(ours.linear.bias[...])))
  expected = theirs(torch.from_numpy(x), torch.from_numpy(y))
  expected.backward()
  loss, grads = nnx.value_and_grad(lambda m: m(x, y))(ours)
  assert_close(loss, expected.detach().numpy(), "float32")
  assert_close(grads.linear.kernel[...].T, theirs.linear.weight.grad.numpy(), "float32", "d kernel")
  # torch's default initialisation: U(-1/sqrt(D), 1/sqrt(D)).
  kernel = np.asarray(ours.linear.kernel[...])
  assert kernel.shape == (D, V) and np.abs(kernel).max() <= 1 / np.sqrt(D)


@pytest.mark.parametrize("call, error, match", [
    (lambda x, w, y: F.linear_cross_entropy(x, w[:, :-1], y), ValueError,
     r"input's feature size 24 .* must equal the D of linear_weight \[V, D\] \(shape \(53, 23\)\)"),
    (lambda x, w, y: F.linear_cross_entropy(x, w, y[:-1]), ValueError,  # torch's wording
     r"Expected input batch_size \(37\) to match target batch_size \(36\)"),
    (lambda x, w, y: jaxsoftmax.linear_cross_entropy(x, w.T, y[:-1]), ValueError,
     r"labels must have x's shape without the feature axis: expected \(37,\), got \(36,\)"),
    (lambda x, w, y: F.linear_cross_entropy(x, jnp.asarray(w, jnp.bfloat16), y), TypeError,
     r"input and linear_weight must have the same dtype"),
    (lambda x, w, y: F.linear_cross_entropy(x, w, y, linear_bias=np.zeros(5, np.float32)),
     ValueError, r"linear_bias must have shape \(53,\) .* got \(5,\)"),
    (lambda x, w, y: F.linear_cross_entropy(x, w, np.full(37, 60)), IndexError, r"60"),
    (lambda x, w, y: F.linear_cross_entropy(x.astype(np.int32), w, y), TypeError, r"input"),
    (lambda x, w, y: jaxsoftmax.linear_cross_entropy(x, w.T, y, chunk_size=0), ValueError,
     r"chunk_size must be a positive int; got 0"),
    (lambda x, w, y: jaxsoftmax.linear_cross_entropy(x, w.T, y, label_smoothing=1.5), ValueError,
     r"label_smoothing"),
])
def test_bad_input_gets_a_clear_error(call, error, match):
  x, w, _, _, y = _inputs(13)
  with pytest.raises(error, match=match):
    call(x, w, y)


def test_out_of_range_label_under_jit_gives_nan():
  x, w, _, _, y = _inputs(14)
  y[4] = V + 2
  f = jax.jit(lambda a, labels: jaxsoftmax.linear_cross_entropy(a, w.T, labels))
  assert np.isnan(f(x, y))
  assert np.isnan(jax.grad(f)(x, y)[4]).all()


def test_empty_batch_is_nan_for_mean_and_zero_for_sum_as_torch():
  x = np.zeros((0, D), np.float32)
  w = np.ones((V, D), np.float32)
  y = np.zeros((0,), np.int64)
  for reduction in ("mean", "sum"):
    expected = tF.linear_cross_entropy(torch.from_numpy(x), torch.from_numpy(w),
                                       torch.from_numpy(y), reduction=reduction)
    assert_close(F.linear_cross_entropy(x, w, y, reduction=reduction), expected.numpy(), "float32")
