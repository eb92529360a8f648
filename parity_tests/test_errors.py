"""The mirror raises what torch raises for the same mistake, with a message that says what is wrong.

Every row runs torch too: the expected exception type is torch's, observed, not assumed. Our error
must also be one of TypeError / ValueError / IndexError (the project's contract).
"""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

import jaxsoftmax
from jaxsoftmax import functional as F
from jaxsoftmax import nn as jnn

X = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
T = np.array([0, 1, 2])


def t(a):
  return torch.from_numpy(np.asarray(a))


# (id, jaxsoftmax call, torch call, regex the message must match)
MISTAKES = [
    ("int-input", lambda: F.softmax(np.array([1, 2, 3]), 0),
     lambda: tF.softmax(t(np.array([1, 2, 3])), 0), r"input|x.*int64|int32"),
    ("bool-input", lambda: F.log_softmax(np.array([True, False]), 0),
     lambda: tF.log_softmax(t(np.array([True, False])), 0), r"bool"),
    ("complex-input", lambda: F.softmin(np.ones(3, np.complex64), 0),
     lambda: tF.softmin(t(np.ones(3, np.complex64)), 0), r"complex"),
    ("dim-out-of-range", lambda: F.softmax(X, 2), lambda: tF.softmax(t(X), 2), r"axis=2.*\[-2, 1\]"),
    ("dim-out-of-range-neg", lambda: F.log_softmax(X, -3), lambda: tF.log_softmax(t(X), -3),
     r"-3"),
    ("dim-out-of-range-0d", lambda: F.softmax(np.float32(1.0), 1),
     lambda: tF.softmax(torch.tensor(1.0), 1), r"\[-1, 0\]"),
    ("dim-float", lambda: F.softmax(X, 1.0), lambda: tF.softmax(t(X), 1.0), r"dim.*float"),
    ("ce-float-target-wrong-shape", lambda: F.cross_entropy(X, T.astype(np.float32)),
     lambda: tF.cross_entropy(t(X), t(T).float()), r"float32"),
    ("ce-target-too-large", lambda: F.cross_entropy(X, np.array([0, 1, 5])),
     lambda: tF.cross_entropy(t(X), t(np.array([0, 1, 5]))), r"target 5 .*5 classes"),
    ("ce-target-negative", lambda: F.cross_entropy(X, np.array([0, 1, -3])),
     lambda: tF.cross_entropy(t(X), t(np.array([0, 1, -3]))), r"target -3"),
    ("ce-batch-mismatch", lambda: F.cross_entropy(X, np.array([0, 1])),
     lambda: tF.cross_entropy(t(X), t(np.array([0, 1]))), r"\(3, 5\).*\(2,\)"),
    ("ce-kdim-mismatch", lambda: F.cross_entropy(np.ones((2, 3, 4), np.float32), np.zeros((2, 5), int)),
     lambda: tF.cross_entropy(torch.ones(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)),
     r"\(2, 4\).*\(2, 5\)"),
    ("ce-weight-shape", lambda: F.cross_entropy(X, T, weight=np.ones(3, np.float32)),
     lambda: tF.cross_entropy(t(X), t(T), weight=torch.ones(3)), r"weight.*\(5,\).*\(3,\)"),
    ("ce-weight-int", lambda: F.cross_entropy(X, T, weight=np.ones(5, np.int64)),
     lambda: tF.cross_entropy(t(X), t(T), weight=torch.ones(5, dtype=torch.long)), r"weight.*int"),
    ("ce-label-smoothing-above-1", lambda: F.cross_entropy(X, T, label_smoothing=1.5),
     lambda: tF.cross_entropy(t(X), t(T), label_smoothing=1.5), r"label_smoothing=1.5"),
    ("ce-reduction", lambda: F.cross_entropy(X, T, reduction="avg"),
     lambda: tF.cross_entropy(t(X), t(T), reduction="avg"), r"avg"),
    ("ce-probs-ignore-index", lambda: F.cross_entropy(X, np.full((3, 5), 0.2, np.float32), ignore_index=3),
     lambda: tF.cross_entropy(t(X), torch.full((3, 5), 0.2), ignore_index=3), r"ignore_index"),
    ("ce-probs-int", lambda: F.cross_entropy(X, np.ones((3, 5), np.int64)),
     lambda: tF.cross_entropy(t(X), torch.ones(3, 5, dtype=torch.long)), r"floating point"),
    ("ce-int-input", lambda: F.cross_entropy(np.ones((3, 5), np.int64), T),
     lambda: tF.cross_entropy(torch.ones(3, 5, dtype=torch.long), t(T)), r"input"),
    ("ce-no-classes", lambda: F.cross_entropy(np.ones((3, 0), np.float32), np.zeros(3, np.int64)),
     lambda: tF.cross_entropy(torch.ones(3, 0), torch.zeros(3, dtype=torch.long)), r"no classes"),
    ("nll-target-too-large", lambda: F.nll_loss(X, np.array([0, 1, 7])),
     lambda: tF.nll_loss(t(X), t(np.array([0, 1, 7]))), r"target 7"),
    ("nll-batch-mismatch", lambda: F.nll_loss(X, np.array([0, 1])),
     lambda: tF.nll_loss(t(X), t(np.array([0, 1]))), r"batch_size"),
    ("nll-float-target", lambda: F.nll_loss(X, np.ones((3, 5), np.float32)),
     lambda: tF.nll_loss(t(X), torch.ones(3, 5)), r"target"),
    ("softmax2d-2d", lambda: jnn.Softmax2d()(X), lambda: torch.nn.Softmax2d()(t(X)), r"2D"),
]


@pytest.mark.parametrize("ours, theirs, message", [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_same_exception_type_as_torch(ours, theirs, message):
  with pytest.raises(Exception) as torch_error:
    theirs()
  with pytest.raises(Exception) as our_error:
    ours()
  assert isinstance(our_error.value, type(torch_error.value)), (
      f"torch raised {type(torch_error.value).__name__}, jaxsoftmax {type(our_error.value).__name__}")
  assert isinstance(our_error.value, (TypeError, ValueError, IndexError))
  assert re.search(message, str(our_error.value), re.IGNORECASE), str(our_error.value)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_raises_value_error(temperature):
  with pytest.raises(ValueError, match="temperature"):
    jaxsoftmax.softmax(X, temperature=temperature)
  with pytest.raises(ValueError, match="temperature"):
    jaxsoftmax.log_softmax(X, temperature=jnp.asarray(temperature))


def test_traced_temperature_is_not_checked_but_documented():
  # Under jit the value is unknown; the op computes x / T as written (no error, no silent clamp).
  out = jax.jit(lambda T: jaxsoftmax.softmax(X, temperature=T))(jnp.float32(2.0))
  np.testing.assert_allclose(out, tF.softmax(t(X) / 2.0, -1).numpy(), rtol=1.3e-6, atol=1e-5)


def test_negative_label_smoothing_is_an_error_unlike_torch():
  # torch ignores label_smoothing < 0 silently; a silent wrong number is worse than an error.
  assert torch.isfinite(tF.cross_entropy(t(X), t(T), label_smoothing=-0.1))
  with pytest.raises(ValueError, match="label_smoothing"):
    F.cross_entropy(X, T, label_smoothing=-0.1)


@pytest.mark.parametrize("bad, error", [
    (dict(where=np.ones((3, 5), np.int32)), TypeError),
    (dict(where=np.ones((4,), bool)), ValueError),
    (dict(axis=(0, 0)), ValueError),
    (dict(axis=(0, 5)), IndexError),
    (dict(axis=1.5), TypeError),
    (dict(temperature="2"), TypeError),
    (dict(temperature=np.ones(2, np.float32)), ValueError),
])
def test_core_argument_errors(bad, error):
  with pytest.raises(error):
    jaxsoftmax.softmax(X, **bad)


def test_out_of_range_label_under_jit_gives_nan_not_a_number():
  f = jax.jit(lambda x, y: jaxsoftmax.cross_entropy(x, y, reduction="none"))
  losses = np.asarray(f(X, jnp.array([0, 9, 2])))
  assert np.isnan(losses[1]) and np.isfinite(losses[[0, 2]]).all()
  bad = jnp.array([0, -5, 2])  # -5 is no index from the end: out of range
  for loss in (jaxsoftmax.nll_loss, jaxsoftmax.cross_entropy):
    grads = np.asarray(jax.grad(lambda x: jax.jit(loss)(x, bad))(X))
    # The bad row carries NaN, never a silent 0 (nll_loss's gradient touches one entry per row).
    assert np.isnan(grads[1]).any() and np.isfinite(grads[[0, 2]]).all(), loss
    options = {"label_smoothing": 0.1} if loss is jaxsoftmax.cross_entropy else {}
    w_grad = jax.grad(jax.jit(lambda w, y: loss(X, y, weight=w, **options)))
    assert np.isnan(np.asarray(w_grad(jnp.ones(5), bad))).any()


@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmin"])
def test_implicit_dim_rule_and_warning_match_torch(name, ndim):
  x = np.random.default_rng(ndim).standard_normal((2, 3, 4, 5)[:ndim]).astype(np.float32)
  with warnings.catch_warnings(record=True) as theirs:
    warnings.simplefilter("always")
    expected = getattr(tF, name)(t(x))
  with warnings.catch_warnings(record=True) as ours:
    warnings.simplefilter("always")
    actual = getattr(F, name)(x)
  assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
  assert ours[0].category is UserWarning and ours[0].filename == __file__  # points at the caller
  np.testing.assert_allclose(actual, expected.numpy(), rtol=1.3e-6, atol=1e-5)


@pytest.mark.parametrize("size_average, reduce", [(None, False), (False, None), (True, True),
                                                  (False, True), (True, False)])
def test_legacy_reduction_flags_match_torch(size_average, reduce):
  with warnings.catch_warnings(record=True) as theirs:
    warnings.simplefilter("always")
    expected = tF.cross_entropy(t(X), t(T), size_average=size_average, reduce=reduce)
  with warnings.catch_warnings(record=True) as ours:
    warnings.simplefilter("always")
    actual = F.cross_entropy(X, T, size_average=size_average, reduce=reduce)
  assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
  np.testing.assert_allclose(actual, expected.numpy(), rtol=1.3e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, "float32", jnp.float64])
def test_dtype_argument_casts_first_like_torch(dtype):
  ints = np.array([[1, 2, 3], [4, 5, 9]])
  torch_dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, jnp.dtype(dtype).name)
  with jax.enable_x64(True):
    actual = F.log_softmax(ints, 1, dtype=dtype)
    assert actual.dtype == jnp.dtype(str(torch_dtype).removeprefix("torch."))
    expected = tF.log_softmax(t(ints), 1, dtype=torch_dtype)
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1.3e-6, atol=1e-7)


def test_all_ignored_and_empty_follow_torch():
  ignored = np.full(3, -100)
  assert np.isnan(np.asarray(F.cross_entropy(X, ignored)))
  assert np.isnan(tF.cross_entropy(t(X), t(ignored)).item())
  assert float(F.cross_entropy(X, ignored, reduction="sum")) == 0.0
  # nll_loss negates its sum, not each term: an ignored example's loss is still +0, as torch's.
  log_probs = tF.log_softmax(t(X), 1)
  some_ignored = np.array([-100, 1, -100])
  for labels, reduction in ((ignored, "sum"), (some_ignored, "none"), (some_ignored, "sum")):
    ours = np.asarray(F.nll_loss(log_probs.numpy(), labels, reduction=reduction))
    theirs = tF.nll_loss(log_probs, t(labels), reduction=reduction).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(np.signbit(ours), np.signbit(theirs))
  grads = jax.grad(lambda x: F.cross_entropy(x, ignored))(X)
  x_t = t(X).requires_grad_()
  tF.cross_entropy(x_t, t(ignored)).backward()
  np.testing.assert_array_equal(grads, x_t.grad.numpy())
  assert F.softmax(np.zeros((4, 0), np.float32), 1).shape == (4, 0)
  assert float(F.softmax(np.float32(3.0), 0)) == 1.0
