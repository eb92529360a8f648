"""Half precision: jaxsoftmax computes in float32 and rounds once; it is never less accurate than
torch's own float16/bfloat16 CPU kernels, measured in ulps against the exact (float64) result.

This is why the parity grid compares half-precision cases with torch run in float32 and rounded
once (see jaxsoftmax.parity): torch's CPU half log_softmax rounds intermediates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxsoftmax

DTYPES = [(np.float16, torch.float16), (jnp.bfloat16, torch.bfloat16)]


def _ulps(value, exact, dtype):
  spacing = np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
  return np.abs(value.astype(np.float64) - exact) / spacing


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("np_dtype, torch_dtype", DTYPES, ids=["float16", "bfloat16"])
def test_never_less_accurate_than_torch_half_kernels(name, np_dtype, torch_dtype):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((256, 37)) * 3).astype(np_dtype)
  g = rng.standard_normal((256, 37)).astype(np_dtype)
  jfn, tfn = getattr(jaxsoftmax, name), getattr(torch, name)

  x64 = torch.from_numpy(x.astype(np.float64)).requires_grad_()
  exact = tfn(x64, -1)
  (exact_grad,) = torch.autograd.grad(exact, x64, torch.from_numpy(g.astype(np.float64)))

  xh = torch.from_numpy(x.astype(np.float32)).to(torch_dtype).requires_grad_()
  theirs = tfn(xh, -1)
  (their_grad,) = torch.autograd.grad(theirs, xh, torch.from_numpy(g.astype(np.float32)).to(torch_dtype))

  ours, vjp = jax.vjp(lambda a: jfn(a, -1), jnp.asarray(x))
  (our_grad,) = vjp(jnp.asarray(g))

  exact, exact_grad = exact.detach().numpy(), exact_grad.numpy()
  our_fwd = _ulps(np.asarray(ours), exact, np_dtype)
  their_fwd = _ulps(theirs.detach().double().numpy(), exact, np_dtype)
  our_bwd = _ulps(np.asarray(our_grad), exact_grad, np_dtype)
  their_bwd = _ulps(their_grad.double().numpy(), exact_grad, np_dtype)
  # Correctly rounded, up to the float32 computation's own error near a rounding tie.
  assert our_fwd.max() <= 0.501
  tie = 0.01  # a value at a rounding tie may go either way by the float32 computation's error
  assert our_fwd.max() <= their_fwd.max() + tie
  assert our_bwd.max() <= their_bwd.max() + tie
  assert np.median(our_bwd) <= 0.501  # a float32 gradient rounded once


@pytest.mark.parametrize("np_dtype, torch_dtype", DTYPES, ids=["float16", "bfloat16"])
def test_a_half_cross_entropy_summed_by_a_dot_is_correctly_rounded(np_dtype, torch_dtype):
  """cross_entropy's 16-bit forward sums its rows with a dot on a CPU from rows.NARROW_DOT_FROM
  elements (rows over rows.SHORT_ROW classes): its losses, each and their mean, are the float64
  answer rounded once, and never further from it than torch's own half kernels."""
  from jaxsoftmax._src import rows  # noqa: PLC0415

  rng = np.random.default_rng(1)
  n, c = 64, 128
  assert n * c >= rows.NARROW_DOT_FROM and c > rows.SHORT_ROW
  x = (rng.standard_normal((n, c)) * 3).astype(np_dtype)
  labels = rng.integers(0, c, n)
  t_labels = torch.from_numpy(labels)
  for reduction in ("none", "mean"):
    exact = torch.nn.functional.cross_entropy(torch.from_numpy(x.astype(np.float64)), t_labels,
                                              reduction=reduction).numpy()
    theirs = torch.nn.functional.cross_entropy(
        torch.from_numpy(x.astype(np.float32)).to(torch_dtype), t_labels, reduction=reduction)
    ours = jaxsoftmax.cross_entropy(jnp.asarray(x), jnp.asarray(labels, jnp.int32),
                                    reduction=reduction)
    our_err = _ulps(np.asarray(ours), exact, np_dtype)
    their_err = _ulps(theirs.double().numpy(), exact, np_dtype)
    assert our_err.max() <= 0.501, reduction
    assert our_err.max() <= their_err.max() + 0.01, reduction
