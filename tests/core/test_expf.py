"""expf.exp, the ``exp`` a 16-bit backward rebuilds its exponentials with: its accuracy against
float64, beside XLA's own ``exp`` on the same points; its edges; where it is used."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoftmax
from jaxsoftmax._src import checks, expf


def _ulps(values, t):
  exact = np.exp(t.astype(np.float64))
  spacing = np.spacing(exact.astype(np.float32)).astype(np.float64)
  return np.abs(np.asarray(values, np.float64) - exact) / spacing


def test_within_1_3_ulps_of_the_exact_exp_on_the_whole_normal_range():
  # Every float32 t whose exp is a normal float32, sampled densely, plus the range's ends.
  grid = np.linspace(expf.UNDERFLOW, 0.0, 2**20, dtype=np.float32)
  rng = np.random.default_rng(0)
  t = np.concatenate([grid, rng.uniform(expf.UNDERFLOW, 0.0, 2**18).astype(np.float32),
                      -rng.exponential(1.0, 2**16).astype(np.float32)])
  t = t[t >= expf.UNDERFLOW]
  ours = _ulps(jax.jit(expf.exp)(jnp.asarray(t)), t)
  xla = _ulps(jax.jit(jnp.exp)(jnp.asarray(t)), t)
  assert ours.max() <= 1.3, (ours.max(), t[ours.argmax()])
  assert np.median(ours) <= 0.5  # most values correctly rounded, as XLA's
  # Not a claim about XLA, a check that the comparison can tell: XLA's exp is measured too.
  assert xla.max() < 8


def test_edges_underflow_to_zero_and_keep_nan():
  t = jnp.asarray([0.0, -0.0, -1e-30, -87.33, expf.UNDERFLOW - 0.01, -100.0, -1e30, -np.inf,
                   np.nan, 1e-30, 3.0, np.inf], jnp.float32)
  got = np.asarray(jax.jit(expf.exp)(t))
  np.testing.assert_array_equal(got[:3], [1.0, 1.0, 1.0])
  assert 1.17e-38 < got[3] < 1.2e-38  # the smallest normals still come out
  np.testing.assert_array_equal(got[4:8], [0.0, 0.0, 0.0, 0.0])
  assert np.isnan(got[8])
  np.testing.assert_array_equal(got[9:], [1.0, 1.0, 1.0])  # t > 0 is clipped (never used)


def test_refuses_anything_but_float32():
  with pytest.raises(TypeError, match="t must be float32, got bfloat16"):
    expf.exp(jnp.zeros(3, jnp.bfloat16))


def test_a_rebuilt_16_bit_backward_uses_it_on_a_cpu_and_the_forward_does_not():
  x = jnp.zeros((256, checks.REBUILD_FROM // 256), jnp.bfloat16)
  _, vjp = jax.vjp(jaxsoftmax.log_softmax, x)  # the residuals are the program's arguments
  backward = jax.jit(lambda fn, g: fn(g)).lower(vjp, x).compile().as_text()
  forward = jax.jit(jaxsoftmax.log_softmax).lower(x).compile().as_text()
  assert "exponential(" not in backward and "round-nearest-even(" in backward
  assert "exponential(" in forward
