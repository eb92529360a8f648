"""The CPU-speed building blocks of issue 17 give the values of the plain formulations they
replace: the row max of a 16-bit input taken in its own dtype, the label term added by a select
instead of a scatter, the loss's batch sum without its barrier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax._src import rows, xent

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("num_classes", [3, 8, 10, 300])  # unrolled on a CPU up to 8 classes
def test_row_max_of_a_narrow_input_is_the_max_of_its_upcast(dtype, num_classes):
  x = RNG.standard_normal((5, num_classes)).astype(np.float32) * 30
  x[1, 2] = np.nan
  x[2, :] = -np.inf
  x = jnp.asarray(x, dtype)
  where = jnp.asarray(RNG.random((5, num_classes)) > 0.3).at[3].set(False)  # row 3: all masked
  for mask in (None, where):
    got = jax.jit(lambda v, w: rows.row_max_of(v, jnp.float32, 1, w))(x, mask)
    want = rows.row_max(x.astype(jnp.float32), 1, mask)
    assert got.dtype == jnp.float32 and got.shape == (5, 1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert np.isnan(np.asarray(rows.row_max_of(x, jnp.float32, 1)[1, 0]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("axis", [0, 1])
def test_adding_at_the_labels_is_a_scatter_then_one_rounding(dtype, axis):
  dense = jnp.asarray(RNG.standard_normal((6, 7)), jnp.float32)
  num_classes = dense.shape[axis]
  labels = jnp.asarray(RNG.integers(0, num_classes, dense.shape[1 - axis]))
  labels = labels.at[0].set(num_classes + 4)  # out of range: clipped, lands in its own row
  values = jnp.asarray(RNG.standard_normal(labels.shape), jnp.float32)
  got = jax.jit(lambda d, l, v: xent.add_at_labels(d, l, v, num_classes, axis, dtype))(
      dense, labels, values)
  want = xent.scatter_add(dense, labels, values, num_classes, axis).astype(dtype)
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_the_batch_sum_adds_every_term():
  v = jnp.asarray(RNG.standard_normal((64, 3)), jnp.float32)
  np.testing.assert_allclose(jax.jit(rows.total_sum)(v), np.asarray(v, np.float64).sum(),
                             rtol=1e-6)
  assert jax.jit(rows.total_sum)(jnp.zeros((0,), jnp.float32)) == 0.0


def _reduces(f, *args) -> bool:
  return "stablehlo.reduce" in jax.jit(f).lower(*args).as_text()


def test_forward_statistics_unroll_up_to_short_stats_and_gradient_sums_up_to_short_row():
  """On a CPU: the row max and the sum of exponentials unroll up to rows.SHORT_STATS classes, other
  row sums up to rows.SHORT_ROW (benchmarks/NOTES.md, thirteenth pass); past those, reductions."""
  if jax.default_backend() != "cpu":
    pytest.skip("the unrolled forms are chosen for a CPU only")
  short, longer = (jnp.ones((4, n), jnp.float32) for n in (rows.SHORT_STATS, rows.SHORT_ROW))
  assert rows.SHORT_STATS < rows.SHORT_ROW
  assert not _reduces(lambda v: rows.row_max(v, 1), short)
  assert not _reduces(lambda v: rows.row_sum(v, 1, stats=True), short)
  assert _reduces(lambda v: rows.row_max(v, 1), longer)
  assert _reduces(lambda v: rows.row_sum(v, 1, stats=True), longer)
  assert not _reduces(lambda v: rows.row_sum(v, 1), longer)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_log_softmax_reads_its_short_row_max_once_and_keeps_torch_order(dtype):
  """The output loop of a short-row log_softmax reads the row max as a vector (rows.max_once)
  instead of recomputing the unrolled chain per element, and its values are still
  ``(x - m) - log s`` bit for bit."""
  from jaxsoftmax._src.family import _log_softmax_xla  # noqa: PLC0415 (the rule itself)

  x = RNG.standard_normal((64, rows.SHORT_STATS)).astype(np.float32) * 8
  x[3, 1] = np.nan
  x[4, :] = -np.inf
  x[5, 2] = np.inf
  x = jnp.asarray(x, dtype)
  got = jax.jit(lambda v: _log_softmax_xla(v, None, (1,), 1.0, False))(x)
  xc = x.astype(jnp.float32)
  # The same row helpers (so the same summation order); what is checked is m's value and the
  # order (x - m) - log s, not how a sum of 8 terms rounds.
  want = jax.jit(lambda v: (v - rows.row_max(v, 1))
                 - jnp.log(rows.row_sum(jnp.exp(v - rows.row_max(v, 1)), 1, stats=True)))(xc)
  want = want.astype(dtype)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  if jax.default_backend() == "cpu":
    hlo = jax.jit(lambda v: _log_softmax_xla(v, None, (1,), 1.0, False)).lower(x).compile()
    text = hlo.as_text()
    root = next(line for line in text.splitlines() if line.lstrip().startswith("ROOT")
                and " fusion(" in line and "ENTRY" not in line)
    body = text.split("%" + root.split("calls=%")[1].split(",")[0] + " ")[1].split("\n}")[0]
    assert "maximum(" not in body, body
