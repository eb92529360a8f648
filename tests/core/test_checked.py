"""checked=True: under jit, out-of-range labels reported through jax.experimental.checkify."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxsoftmax

LOGITS = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3, 5)), jnp.float32)


def _ce(labels, **kw):
  return jaxsoftmax.cross_entropy(LOGITS, labels, checked=True, **kw)


CALLS = {
    "cross_entropy": _ce,
    "nll_loss": lambda y: jaxsoftmax.nll_loss(jaxsoftmax.log_softmax(LOGITS), y, checked=True),
    "linear_cross_entropy": lambda y: jaxsoftmax.linear_cross_entropy(
        LOGITS, jnp.ones((5, 5)), y, checked=True),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_first_offending_label_and_index_are_reported(name):
  labels = np.zeros((4, 3), np.int32)
  labels[1, 2], labels[3, 0] = 7, -1
  err, out = checkify.checkify(jax.jit(CALLS[name]))(labels)
  assert np.isnan(out)  # the unchecked result: NaN, never a silent number
  with pytest.raises(checkify.JaxRuntimeError,
                     match=rf"{name}: target 7 at flat index 5 of labels with shape \(4, 3\) is "
                           r"out of bounds for 5 classes"):
    err.throw()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_valid_labels_pass(name):
  err, out = checkify.checkify(jax.jit(CALLS[name]))(np.full((4, 3), 4, np.int32))
  assert err.get() is None and np.isfinite(out)


def test_ignore_index_is_not_an_error():
  labels = np.full((4, 3), -100, np.int32)
  labels[0, 0] = 2
  err, _ = checkify.checkify(jax.jit(lambda y: _ce(y, ignore_index=-100)))(labels)
  assert err.get() is None


def test_without_checkify_jax_says_what_to_do():
  with pytest.raises(ValueError, match="checkify"):
    jax.jit(_ce)(np.zeros((4, 3), np.int32))


def test_concrete_labels_raise_index_error_even_when_checked():
  with pytest.raises(IndexError, match=r"target 9 at index \(0, 0\)"):
    _ce(np.full((4, 3), 9, np.int32))
