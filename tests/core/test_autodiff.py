"""Transformations: jit, vmap, grad, grad-of-grad, hessian; residuals; numerical gradient checks;
exact weight and temperature gradients against plain-jnp references (torch cannot give those)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsoftmax
from jaxsoftmax._src import checks

try:  # public in some jax versions, private in 0.10
  from jax.ad_checkpoint import saved_residuals
except ImportError:
  from jax._src.ad_checkpoint import saved_residuals

X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6)), jnp.float32)
LABELS = jnp.array([0, 5, 2, 3])
BIG_LABELS = jnp.asarray(np.random.default_rng(5).integers(0, 4096, 256), jnp.int32)
BIG_PROBS = jax.nn.softmax(jnp.asarray(np.random.default_rng(6).normal(size=(256, 4096)),
                                       jnp.float32))


def _ref_log_softmax(x, axis=-1):
  """Plain jnp, differentiated by JAX itself: the reference for custom rules."""
  shifted = x - jax.lax.stop_gradient(x.max(axis=axis, keepdims=True))
  return shifted - jnp.log(jnp.exp(shifted).sum(axis=axis, keepdims=True))


def _ref_cross_entropy(x, labels, weight, ignore_index, eps, reduction):
  lsm = _ref_log_softmax(x)
  num_classes = x.shape[-1]
  w = jnp.ones(num_classes, x.dtype) if weight is None else weight
  kept = labels != ignore_index
  safe = jnp.where(kept, labels, 0)
  nll = -w[safe] * jnp.take_along_axis(lsm, safe[:, None], -1)[:, 0]
  smooth = -(lsm * w[None, :]).sum(-1)
  losses = jnp.where(kept, (1 - eps) * nll + eps / num_classes * smooth, 0.0)
  if reduction == "none":
    return losses
  if reduction == "sum":
    return losses.sum()
  return losses.sum() / jnp.where(kept, w[safe], 0.0).sum()


#: The smallest logits that keep a 16-bit input as the residual (checks.REBUILD_FROM).
BIG = jax.ShapeDtypeStruct((256, checks.REBUILD_FROM // 256), jnp.float32)


def _residuals(fn, shape, dtype):
  return saved_residuals(fn, jnp.zeros(shape, dtype))


@pytest.mark.parametrize("fn", [jaxsoftmax.softmax, jaxsoftmax.log_softmax, jaxsoftmax.softmin])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", [X.shape, BIG.shape], ids=["small", "big"])
def test_softmax_family_keeps_one_logits_sized_array_no_wider_than_the_input(fn, dtype, shape):
  """float32, and 16-bit below REBUILD_FROM elements: softmax / softmin keep their float32 output,
  log_softmax its exponentials and their row sums (its backward then needs no exp:
  benchmarks/NOTES.md). 16-bit from REBUILD_FROM up: the input itself and the row statistics, so
  the residual is as narrow as jax.nn's (issue 17: no more memory than the peer). Per-row values
  besides."""
  residuals = _residuals(fn, shape, dtype)
  big = [(aval, source) for aval, source in residuals if aval.size >= math.prod(shape)]
  assert len(big) == 1, residuals
  aval, source = big[0]
  rebuilt = dtype != jnp.float32 and shape == BIG.shape
  assert aval.shape == shape and aval.dtype == (dtype if rebuilt else jnp.float32)
  assert ("argument" if rebuilt else "output") in source, source
  rows = [aval for aval, _ in residuals if aval.size < math.prod(shape)]
  assert len(rows) == (2 if rebuilt else 1 if fn is jaxsoftmax.log_softmax else 0), residuals
  assert all(a.shape == shape[:-1] + (1,) and a.dtype == jnp.float32 for a in rows), rows


def _fwd_bwd(fn):
  """``x, g -> (fn(x), vjp(g))`` in one program, as a training step runs a loss's two passes."""
  def step(x, g):
    y, vjp = jax.vjp(fn, x)
    return y, vjp(g)
  return step


@pytest.mark.parametrize("ours, peer", [(jaxsoftmax.softmax, jax.nn.softmax),
                                        (jaxsoftmax.softmin, lambda x: jax.nn.softmax(-x))],
                         ids=["softmax", "softmin"])
@pytest.mark.parametrize("shape", [BIG.shape, (4095, 512), (4096, 256)])
def test_a_large_half_softmax_step_holds_no_more_memory_than_jax_nn(ours, peer, shape):
  """Issue 17's memory rule for the whole fwd+bwd program, not only the residual: left to
  itself, XLA merged the backward's rebuilt float32 y with the forward's and wrote it out for
  both passes (8 MiB of temp memory at 2^20 bfloat16 elements against jax.nn's 4.1; 512 MiB
  against 0 on an H200). The rule fences the rebuilt residual off where XLA:CPU would merge
  (family._apart: below 4096 rows), and leaves it where it does not."""
  x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  temp = {name: jax.jit(_fwd_bwd(fn)).lower(x, x).compile().memory_analysis().temp_size_in_bytes
          for name, fn in (("ours", ours), ("peer", peer))}
  assert temp["ours"] <= temp["peer"], temp


@pytest.mark.parametrize("platform, classes, fenced, log_fenced", [
    ("cpu", BIG.shape[1], True, False), ("cpu", 256, False, False), ("cuda", 8192, False, True),
    ("cuda", 16384, True, False), ("rocm", 8192, False, False), ("tpu", 8192, False, False)])
def test_the_rebuilt_residual_is_fenced_where_measured_to_pay(platform, classes, fenced,
                                                              log_fenced):
  """softmax: on a CPU below 4096 rows (2^20 elements of 256 classes are 4096 rows: not fenced);
  on a GPU from 16384 classes, where XLA:GPU stops fitting a row in one Triton fusion per pass
  (family._apart). log_softmax: on a CUDA GPU below 16384 classes, where its shared row sum cost
  XLA:GPU a kernel of its own (family._log_apart). Both measured on an H200."""
  x = jax.ShapeDtypeStruct((checks.REBUILD_FROM // classes, classes), jnp.bfloat16)

  def lowered(fn):
    return jax.jit(_fwd_bwd(fn)).trace(x, x).lower(lowering_platforms=(platform,)).as_text()

  assert ("optimization_barrier" in lowered(jaxsoftmax.softmax)) == fenced
  assert ("optimization_barrier" in lowered(jaxsoftmax.log_softmax)) == log_fenced
  masked = lowered(lambda x: jaxsoftmax.log_softmax(x, temperature=2.0, where=x > -1))
  assert ("optimization_barrier" in masked) == log_fenced
  # Soft targets, summed here (off a CPU rows.total_sum fences a mean's batch sum too).
  targets = jnp.full(x.shape, 1 / classes, x.dtype)
  loss = lambda x: jaxsoftmax.cross_entropy(x, targets, reduction="none").sum()
  soft = jax.jit(jax.value_and_grad(loss)).trace(x).lower(lowering_platforms=(platform,))
  assert ("optimization_barrier" in soft.as_text()) == log_fenced


def _as_lowered_for_cuda(*operands, **branches):
  """``lax.platform_dependent`` as when a program is lowered for a CUDA GPU, run on this CPU."""
  return branches.get("cuda", branches["default"])(*operands)


@pytest.mark.parametrize("temperature, masked", [(1.0, False), (0.5, True)])
def test_log_softmaxs_fenced_rebuild_gives_the_forwards_row_statistics(temperature, masked,
                                                                       monkeypatch):
  """The CUDA branch of family._log_apart, run here: the row max and sum it rebuilds from the
  fenced x are the forward's (the max exactly, the sum up to float32 summation order), with a
  temperature and a mask, so the backward it feeds is the shipped one's."""
  from jaxsoftmax._src import family

  rng = np.random.default_rng(7)
  x = jnp.asarray(3 * rng.standard_normal((128, checks.REBUILD_FROM // 128)), jnp.bfloat16)
  where = jnp.asarray(rng.random(x.shape) > 0.3) if masked else None
  where = None if where is None else where.at[0].set(False)  # one row masked whole
  _, ((kept_x, m), s, _) = family._log_softmax_xla_fwd(x, where, (1,), temperature, False)
  # Take the CUDA branch on this CPU.
  monkeypatch.setattr(family.lax, "platform_dependent", _as_lowered_for_cuda)
  rx, rm, rs = family._log_apart((kept_x, m, s * 2), where, (1,), temperature, False)
  np.testing.assert_array_equal(rx, x)  # and m, s rebuilt, not passed through (s * 2 above)
  np.testing.assert_array_equal(rm, m)
  np.testing.assert_allclose(rs, s, rtol=1e-6)


@pytest.mark.parametrize("op", ["log_softmax", "cross_entropy[probs]"])
def test_a_step_as_lowered_for_cuda_gives_the_cpu_programs_values_and_gradient(op, monkeypatch):
  """Every ``lax.platform_dependent`` taking its CUDA branch, run here: the backward that rebuilds
  its row statistics from a fenced x (rows.rebuilt_apart) gives the values and gradient of the
  program this CPU runs, to float32 summation order (one bfloat16 ulp)."""
  rng = np.random.default_rng(8)
  x = jnp.asarray(3 * rng.standard_normal((128, checks.REBUILD_FROM // 128)), jnp.bfloat16)
  if op == "log_softmax":
    mask = jnp.asarray(rng.random(x.shape) > 0.2)
    fn = lambda x: jaxsoftmax.log_softmax(x, temperature=0.5, where=mask)
    g = jnp.asarray(rng.standard_normal(x.shape), jnp.bfloat16)
  else:
    t = rng.random(x.shape, np.float32)
    targets = jnp.asarray(t / t.sum(-1, keepdims=True), jnp.bfloat16)
    fn = lambda x: jaxsoftmax.cross_entropy(x, targets, label_smoothing=0.1)
    g = jnp.asarray(1.0, jnp.bfloat16)

  def step(x, g):
    y, vjp = jax.vjp(fn, x)
    return y, vjp(g)[0]

  jax.clear_caches()
  want = jax.jit(step)(x, g)
  with monkeypatch.context() as patch:
    patch.setattr(jax.lax, "platform_dependent", _as_lowered_for_cuda)
    jax.clear_caches()
    assert "optimization_barrier" in str(jax.make_jaxpr(step)(x, g))
    got = jax.jit(step)(x, g)
  jax.clear_caches()
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=2.0**-7, atol=1e-6)


@pytest.mark.parametrize("fn", [
    jaxsoftmax.softmax, jaxsoftmax.log_softmax, jaxsoftmax.softmin,
    lambda x: jaxsoftmax.softmax(x, temperature=0.7),
    lambda x: jaxsoftmax.log_softmax(x, temperature=3.0),
    lambda x: jaxsoftmax.softmax(x, where=x > -0.5),
    lambda x: jaxsoftmax.log_softmax(x, where=x > -0.5, axis=0),
    lambda x: jaxsoftmax.cross_entropy(x, BIG_LABELS, reduction="none"),
    lambda x: jaxsoftmax.cross_entropy(x, BIG_LABELS, weight=jnp.linspace(0.5, 2.0, BIG.shape[1]),
                                       ignore_index=2, label_smoothing=0.1, reduction="none"),
    lambda x: jaxsoftmax.cross_entropy(x, BIG_PROBS, label_smoothing=0.2, reduction="none"),
], ids=["softmax", "log_softmax", "softmin", "softmax_T", "log_softmax_T", "softmax_where",
        "log_softmax_where_axis0", "ce_labels", "ce_labels_options", "ce_probs"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_a_half_gradient_rebuilt_from_the_input_is_the_kept_one(fn, dtype, monkeypatch):
  """From REBUILD_FROM elements up the 16-bit backward rebuilds the forward's float32 values from
  x and the row statistics, by the forward's operations but in another fusion, where XLA:CPU may
  contract or vectorise a float32 step differently. So its gradient is the one from the kept
  float32 values (the path below REBUILD_FROM) but for rare one-ulp flips (measured: at most
  247 of 2^20 elements, float16 softmax at T = 0.7), except where g - <g, y> cancels to far
  below its row's scale: there the two float32 sums round differently, by up to 22 ulps of the
  tiny result (bfloat16 softmax at T = 0.7), still under 2^-16 of the largest gradient. (The
  precision tests against torch, parity_tests/test_half.py, run below REBUILD_FROM, on the kept
  path; this test carries their guarantee over.)"""
  x = jnp.asarray(np.random.default_rng(4).normal(size=BIG.shape) * 4, dtype)
  shape = jax.eval_shape(fn, x).shape
  g = jnp.asarray(np.random.default_rng(3).normal(size=shape), dtype)
  assert checks.rebuilds_from_input(x)  # the rebuilt path is the one under test
  rebuilt = jax.vjp(fn, x)[1](g)[0]
  jax.clear_caches()  # the residual is chosen when the function is traced
  monkeypatch.setattr(checks, "REBUILD_FROM", 2 * x.size)
  kept = jax.vjp(fn, x)[1](g)[0]
  jax.clear_caches()
  assert rebuilt.dtype == kept.dtype == dtype
  ulp = jnp.abs(jnp.nextafter(kept, jnp.asarray(jnp.inf, dtype)).astype(jnp.float32)
                - kept.astype(jnp.float32))
  off = jnp.abs(rebuilt.astype(jnp.float32) - kept.astype(jnp.float32))
  # One ulp; or, where g - <g, y> cancels to far below the row's scale, float32 rounding there.
  row = jnp.max(jnp.abs(kept.astype(jnp.float32)))
  assert bool(jnp.all(off <= jnp.maximum(ulp, row * 2.0**-16))), float(jnp.max(off / ulp))
  assert int(jnp.sum(rebuilt != kept)) <= 2**20 // 1000


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("targets", ["labels", "probs"])
@pytest.mark.parametrize("shape", [X.shape, BIG.shape], ids=["small", "big"])
def test_cross_entropy_keeps_at_most_one_logits_sized_array_no_wider_than_the_logits(
    dtype, targets, shape):
  """float32, and 16-bit below REBUILD_FROM elements: the float32 exponentials; 16-bit from there
  up: nothing logits-sized but the logits themselves, from which the backward rebuilds them, as
  narrow as optax's autodiff keeps (issue 17's memory rule). (Probability targets, a constant
  here, are kept as they are.)"""
  labels = jnp.zeros(shape[:1], jnp.int32)
  t = labels if targets == "labels" else jnp.full(shape, 1.0 / shape[1], jnp.float32)
  residuals = _residuals(lambda x: jaxsoftmax.cross_entropy(x, t), shape, dtype)
  big = [(aval, source) for aval, source in residuals
         if aval.size >= math.prod(shape) and "constant" not in source]
  made = [aval for aval, source in big if "argument x" not in source]
  if dtype == jnp.float32 or shape != BIG.shape:
    assert len(made) == 1 and made[0].shape == shape and made[0].dtype == jnp.float32, residuals
  else:
    assert not made and big and all(a.dtype == dtype for a, _ in big), residuals


def test_nll_loss_keeps_no_logits_sized_array():
  nll = saved_residuals(lambda x: jaxsoftmax.nll_loss(x, LABELS), X)
  assert not [aval for aval, _ in nll if aval.size >= X.size], nll


@pytest.mark.parametrize("fn", [
    jaxsoftmax.softmax, jaxsoftmax.log_softmax, jaxsoftmax.softmin,
    lambda x: jaxsoftmax.softmax(x, temperature=0.7),
    lambda x: jaxsoftmax.log_softmax(x, 0, where=X > -1.0),
    lambda x: jaxsoftmax.cross_entropy(x, LABELS, label_smoothing=0.2),
    lambda x: jaxsoftmax.cross_entropy(x, jax.nn.softmax(X), weight=jnp.arange(1.0, 7.0)),
    lambda x: jaxsoftmax.nll_loss(x, LABELS, reduction="sum"),
])
def test_numerical_gradients_to_second_order(fn):
  with jax.enable_x64(True):
    check_grads(fn, (X.astype(jnp.float64),), order=2, modes=["rev"])


def test_hessian_grad_of_grad_vmap_jit_agree_with_reference():
  x = X.astype(jnp.float32)
  ce = lambda v: jaxsoftmax.cross_entropy(v, LABELS[0])
  ref = lambda v: -_ref_log_softmax(v)[LABELS[0]]
  np.testing.assert_allclose(jax.hessian(ce)(x[0]), jax.hessian(ref)(x[0]), atol=1e-6)
  g2 = jax.grad(lambda v: jax.grad(lambda u: jaxsoftmax.softmax(u)[1])(v).sum())
  g2_ref = jax.grad(lambda v: jax.grad(lambda u: jax.nn.softmax(u)[1])(v).sum())
  np.testing.assert_allclose(g2(x[0]), g2_ref(x[0]), atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jaxsoftmax.log_softmax)(x), jax.jit(jaxsoftmax.log_softmax)(x),
                             atol=1e-6)
  per_row = jax.vmap(lambda v, y: jaxsoftmax.cross_entropy(v, y))(x, LABELS)
  np.testing.assert_allclose(per_row, jaxsoftmax.cross_entropy(x, LABELS, reduction="none"), atol=1e-6)


def test_forward_mode_is_not_supported_and_says_so():
  # A custom_vjp function has no JVP rule: jax.jvp / jacfwd raise TypeError (documented).
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(jaxsoftmax.softmax, (X,), (X,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("ignore_index", [None, 2])
def test_weight_gradient_is_exact(reduction, eps, ignore_index):
  weight = jnp.linspace(0.5, 2.0, 6)
  cot = jnp.ones(4) if reduction == "none" else 1.0

  def ours(w):
    out = jaxsoftmax.cross_entropy(X, LABELS, weight=w, ignore_index=ignore_index,
                                   label_smoothing=eps, reduction=reduction)
    return (out * cot).sum()

  def ref(w):
    out = _ref_cross_entropy(X, LABELS, w, -1 if ignore_index is None else ignore_index, eps,
                             reduction)
    return (out * cot).sum()

  np.testing.assert_allclose(ours(weight), ref(weight), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(weight), jax.grad(ref)(weight), rtol=1e-5, atol=1e-6)


def test_nll_weight_gradient_is_exact():
  weight = jnp.linspace(0.5, 2.0, 6)
  lp = _ref_log_softmax(X)
  ours = jax.grad(lambda w: jaxsoftmax.nll_loss(lp, LABELS, weight=w))(weight)
  ref = jax.grad(lambda w: _ref_cross_entropy(X, LABELS, w, -1, 0.0, "mean"))(weight)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_traced_temperature_is_differentiable():
  # Temperature scaling fits T by gradient descent on the NLL.
  def nll(t):
    return -jnp.take_along_axis(jaxsoftmax.log_softmax(X, temperature=t), LABELS[:, None], 1).mean()

  def ref(t):
    return -jnp.take_along_axis(_ref_log_softmax(X / t), LABELS[:, None], 1).mean()

  t = jnp.float32(1.7)
  np.testing.assert_allclose(nll(t), ref(t), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(nll)(t), jax.grad(ref)(t), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.grad(nll))(t), jax.grad(ref)(t), rtol=1e-5)


def test_fully_masked_rows_are_zero_not_nan():
  mask = jnp.array([[True, False, True], [False, False, False]])
  x = jnp.ones((2, 3))
  np.testing.assert_array_equal(jaxsoftmax.softmax(x, where=mask),
                                jax.nn.softmax(x, where=mask))
  assert np.isneginf(np.asarray(jaxsoftmax.log_softmax(x, where=mask)[1])).all()
  grads = jax.grad(lambda v: jaxsoftmax.log_softmax(v, where=mask)[0, 0])(x)
  assert np.isfinite(grads).all() and (np.asarray(grads)[~np.asarray(mask)] == 0).all()


def test_probability_targets_keep_the_logits_only_when_the_targets_are_differentiated():
  """The exponentials serve the logits' gradient; the logits themselves (for the exact
  log-softmax) are kept only when the targets' or the class weights' gradient needs them."""
  t = jax.nn.softmax(X[::-1])
  only_x = saved_residuals(lambda x: jaxsoftmax.cross_entropy(x, t), X)
  assert not [s for a, s in only_x if "argument x" in s], only_x  # the logits: not kept
  assert len([a for a, s in only_x if a.size >= X.size and "output" in s]) == 1, only_x
  both = saved_residuals(lambda x, t: jaxsoftmax.cross_entropy(x, t), X, t)
  assert [s for a, s in both if "argument x" in s], both
  got = jax.grad(lambda x, t: jaxsoftmax.cross_entropy(x, t), argnums=(0, 1))(X, t)
  want = jax.grad(lambda x, t: -(t * jax.nn.log_softmax(x)).sum(-1).mean(), argnums=(0, 1))(X, t)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)


def test_the_soft_target_backward_takes_its_row_statistics_as_one_argument():
  """Every residual is an argument of the backward's executable (about 0.25 us each on a CPU):
  the row max and sum travel as one array and the lse is formed again from them, so a backward
  run on its own takes one row-sized argument, as optax's autodiff does (with m, total and lse
  apart, bwd at (1, 128) ran 0.953x of optax; benchmarks/NOTES.md, twelfth pass)."""
  t = jax.nn.softmax(X[::-1])
  _, vjp = jax.jit(lambda x: jax.vjp(lambda v: jaxsoftmax.cross_entropy(v, t), x))(X)
  rows = [leaf for leaf in jax.tree_util.tree_leaves(vjp) if 0 < leaf.size < X.size]
  assert [r.shape for r in rows] == [(X.shape[0], 2)], rows
  got = vjp(jnp.ones((), X.dtype))[0]
  want = jax.grad(lambda x: -(t * _ref_log_softmax(x)).sum(-1).mean())(X)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("loss", "eps"), [("cross_entropy", 0.0), ("cross_entropy", 0.3),
                                           ("nll_loss", 0.0)])
def test_label_losses_keep_what_only_the_weight_gradient_needs_only_with_weights(loss, eps):
  """Every residual is an argument of the backward (at (64, 128) two spare row-sized ones cost
  nll_loss 0.9x of the JAX idiom): without class weights only the labels and per-row values are
  kept; the logits never, except for the smoothed cross-entropy's weight gradient."""
  weight = jnp.linspace(0.5, 2.0, 6)
  kw = {} if loss == "nll_loss" else {"label_smoothing": eps}  # nll_loss has no smoothing
  fn = getattr(jaxsoftmax, loss)
  plain = saved_residuals(lambda x: fn(x, LABELS, **kw), X)
  weighted = saved_residuals(lambda x, w: fn(x, LABELS, weight=w, **kw), X, weight)
  assert not [s for _, s in plain if "argument x" in s]
  assert len(weighted) > len(plain)
  assert bool([s for _, s in weighted if "argument x" in s]) == (loss == "cross_entropy" and eps > 0)
  assert len([a for a, _ in plain if a.size >= X.size]) == (loss == "cross_entropy")


@pytest.mark.parametrize("loss", ["cross_entropy", "cross_entropy[probs]", "nll_loss"])
def test_gradients_hold_whichever_inputs_were_differentiated_before(loss):
  """jax memoises a custom_vjp forward per pattern of differentiated inputs but keeps one
  residual tree per call: residuals whose structure followed the pattern failed an assertion
  inside jax once a second pattern had been traced (xent.absent). Every pattern, in turn, gives
  the plain-jnp reference's gradients."""
  weight = jnp.linspace(0.5, 2.0, 6)
  lp = _ref_log_softmax(X)
  target = jax.nn.softmax(X[::-1]) if loss.endswith("[probs]") else LABELS
  if loss == "nll_loss":
    inp = lp
    ours = lambda x, w: jaxsoftmax.nll_loss(x, LABELS, weight=w)
    ref = lambda x, w: -(w[LABELS] * jnp.take_along_axis(x, LABELS[:, None], -1)[:, 0]).sum() / (
        w[LABELS].sum())
  elif loss == "cross_entropy":
    inp = X
    ours = lambda x, w: jaxsoftmax.cross_entropy(x, LABELS, weight=w, label_smoothing=0.2)
    ref = lambda x, w: _ref_cross_entropy(x, LABELS, w, -1, 0.2, "mean")
  else:
    inp = X
    ours = lambda x, w: jaxsoftmax.cross_entropy(x, target, weight=w)
    ref = lambda x, w: -(target * w[None, :] * _ref_log_softmax(x)).sum(-1).mean()
  for argnums in [(0,), (0, 1), (1,), (0,), (0, 1)]:
    saved_residuals(ours, inp, weight)
    got = jax.grad(ours, argnums=argnums)(inp, weight)
    want = jax.grad(ref, argnums=argnums)(inp, weight)
    for g, w in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1023, 1024, 32767, 32768])  # 4 classes: both edges of the band
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_half_gradient_is_the_same_by_select_and_by_scatter(rows, weighted):
  # Around losses._SCATTER_BAND the 16-bit gradient switches between a one-hot select (1023,
  # 32768 rows), a scatter of 16-bit patterns (1024: below losses._BITS_BELOW_ROWS) and a float32
  # scatter plus a conversion (32767): the same entries, each one term rounded once to bfloat16.
  rng = np.random.default_rng(rows)
  x = jnp.asarray(rng.standard_normal((rows, 4)), jnp.bfloat16)
  labels = jnp.asarray(rng.integers(-1, 4, rows))  # -1: ignored
  weight = jnp.asarray([0.5, 1.0, 2.0, 3.0], jnp.bfloat16) if weighted else None
  grad = jax.grad(lambda v: jaxsoftmax.nll_loss(v, labels, weight=weight, ignore_index=-1))(x)
  w = np.ones(4, np.float32) if weight is None else np.asarray(weight, np.float32)
  kept = np.asarray(labels) != -1
  safe = np.where(kept, np.asarray(labels), 0)
  w_y = np.where(kept, w[safe], 0.0).astype(np.float32)
  expected = np.zeros((rows, 4), np.float32)
  expected[np.arange(rows), safe] = -w_y / w_y.sum(dtype=np.float32)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(grad, np.float32),
                                np.asarray(jnp.asarray(expected, jnp.bfloat16), np.float32))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, -1])
def test_nll_loss_tiny_half_gradient_is_the_selects_values_by_a_scatter(monkeypatch, weighted,
                                                                       ignore_index):
  """Above rows.TINY elements, while a float32 scatter keeps the program under XLA:CPU's 1000 flops
  (losses._CALLER_THREAD_FLOPS), nll_loss's 16-bit gradient is that scatter: the select's values
  bit for bit, the NaN of an out-of-range label and the zeros of ignored ones included. Each rule
  is traced afresh through losses._nll_bwd, so no cached trace holds the bound."""
  from jaxsoftmax._src import losses  # noqa: PLC0415

  n, c = 64, 10
  rng = np.random.default_rng(n + weighted)
  labels = rng.integers(0, c, n)
  labels[::9] = -1  # ignored where ignore_index is -1, out of range otherwise
  labels[5] = c  # out of range
  labels = jnp.asarray(labels, jnp.int32)
  weight = jnp.linspace(0.5, 2.0, c).astype(jnp.bfloat16) if weighted else None
  res = (labels, weight, None, jnp.asarray(37.0, jnp.float32), None)

  def bwd(reduction, g):
    rule = lambda l, w, g_: losses._nll_bwd(1, ignore_index, reduction, c, (l, w, *res[2:]), g_)
    program = jax.jit(rule).lower(labels, weight, g).compile()
    return program(labels, weight, g)[0], program.cost_analysis()["flops"]

  for reduction, g in (("mean", jnp.asarray(1.5, jnp.bfloat16)),
                       ("none", jnp.asarray(rng.uniform(-2, 2, n), jnp.bfloat16))):
    scatter, flops = bwd(reduction, g)
    monkeypatch.setattr(losses, "_CALLER_THREAD_FLOPS", 0)
    select, select_flops = bwd(reduction, g)
    monkeypatch.undo()
    assert scatter.dtype == select.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(scatter, np.float32), np.asarray(select, np.float32))
    assert np.isnan(np.asarray(scatter, np.float32)[5]).sum() == 1
    if not weighted and ignore_index is None:  # per example, "none" costs two flops more
      want = (lambda f: f < 1000) if reduction == "mean" else (lambda f: f == select_flops)
      assert want(flops) and select_flops >= 1000, (reduction, flops, select_flops)


def test_an_eager_gradient_takes_the_input_as_it_is_without_a_conversion_program():
  """``jnp.asarray`` of a JVP tracer binds a ``convert_element_type`` to its own dtype, and in an
  eager ``jax.grad`` that is a program of its own, compiled per shape and dtype. The inputs of the
  ops and of the mirror are taken as they are when they are already arrays."""
  from jaxsoftmax import functional  # noqa: PLC0415

  x = jnp.linspace(-1.0, 1.0, 15).reshape(3, 5)
  seen = []

  def probe(v):
    seen.append(checks.as_float_array(v, "x", "probe") is v)
    seen.append(checks.as_array(v) is v)
    return functional.softmax(v, dim=-1)

  jax.vjp(probe, x)
  assert seen == [True, True]
  from_numpy = checks.as_float_array(np.ones((2, 3), np.float32), "x", "probe")
  assert isinstance(from_numpy, jax.Array) and from_numpy.dtype == jnp.float32


def test_softmins_backward_folds_its_sign_into_the_subtraction():
  """softmin's gradient -(y (g - sum g y)) is formed as y (sum g y - g): no negation per element
  (one operation more in the backward's fusion: fwd+bwd float32 (64, 128) 0.97x of jax.nn with it,
  0.99x without), and the same values as the softmax rule's of -x, negated."""
  x = jnp.linspace(-3.0, 3.0, 8 * 16, dtype=jnp.float32).reshape(8, 16)
  g = jnp.cos(x)
  _, vjp = jax.vjp(jaxsoftmax.softmin, x)
  assert "negate(" not in jax.jit(vjp).lower(g).compile().as_text()
  _, vjp_softmax = jax.vjp(lambda v: jaxsoftmax.softmax(-v), x)
  np.testing.assert_array_equal(vjp(g)[0], vjp_softmax(g)[0])
