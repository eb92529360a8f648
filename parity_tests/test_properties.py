"""Property-based parity with torch (hypothesis): shapes, dims, dtypes and value distributions with
+/-inf and NaN sprinkled in. `make test` runs the bounded "ci" profile; `make fuzz` the long one."""

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
import torch.nn.functional as tF
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jax
from jaxsoftmax import parity
from jaxsoftmax.parity import ops
from jaxsoftmax._src import dispatch
from jaxsoftmax import functional as F
from jaxsoftmax._src.kernels import gpu

FLOATS = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}


@st.composite
def logits(draw, min_dims=1, max_dims=3):
  dtype = draw(st.sampled_from(sorted(FLOATS)))
  shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=6))
  scale = draw(st.sampled_from([1.0, 30.0, 1e4]))
  x = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1))) * scale
  specials = draw(st.sampled_from(["none", "neg_inf", "pos_inf", "nan"]))
  if specials != "none":
    mask = draw(hnp.arrays(np.bool_, shape))
    x[mask] = {"neg_inf": -np.inf, "pos_inf": np.inf, "nan": np.nan}[specials]
  return dtype, x


def _grad_pair(jax_fn, torch_fn, x, dtype):
  np_dtype, torch_dtype = FLOATS[dtype]
  with jax.enable_x64(dtype == "float64"):
    out, vjp = jax.vjp(jax_fn, x.astype(np_dtype))
    cot = np.random.default_rng(0).standard_normal(out.shape).astype(np_dtype)
    (grad,) = vjp(cot)
    out, grad = np.asarray(out), np.asarray(grad)
  xt = torch.tensor(x, dtype=torch_dtype, requires_grad=True)
  t_out = torch_fn(xt)
  (t_grad,) = torch.autograd.grad(t_out, xt, torch.from_numpy(cot))
  parity.assert_close(out, t_out.detach().numpy(), dtype, "forward")
  parity.assert_close(grad, t_grad.numpy(), dtype, "grad")


@given(data=logits(), op=st.sampled_from(["softmax", "log_softmax", "softmin"]), dim_seed=st.integers(0, 99))
def test_softmax_family(data, op, dim_seed):
  dtype, x = data
  dim = dim_seed % (2 * x.ndim) - x.ndim
  _grad_pair(lambda a: getattr(F, op)(a, dim), lambda a: getattr(tF, op)(a, dim), x, dtype)


# Found by `make fuzz`: with logits [1e4, 1e4] the loss came out 0.69336, not log 2, because the
# log-sum-exp was rounded at the logits' magnitude before the label's logit was subtracted.
@example(data=("float32", np.array([[1e4, 1e4]])), weighted=False, ignore=False, smoothing=0.0,
         reduction="mean", probs=False, seed=0)
@example(data=("float32", np.array([[1e4, 1e4, 9999.0]])), weighted=True, ignore=False,
         smoothing=0.3, reduction="none", probs=True, seed=0)
# Found by `make fuzz`: 30 rows of equal losses summed 19 ulps off (merged float32 reductions).
@example(data=("float32", np.zeros((5, 6, 6))), weighted=False, ignore=False, smoothing=1.0,
         reduction="sum", probs=True, seed=0)
@given(data=logits(min_dims=2), weighted=st.booleans(), ignore=st.booleans(),
       smoothing=st.sampled_from([0.0, 0.3, 1.0]), reduction=st.sampled_from(["mean", "sum", "none"]),
       probs=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy(data, weighted, ignore, smoothing, reduction, probs, seed):
  dtype, x = data
  rng = np.random.default_rng(seed)
  num_classes = x.shape[1]
  batch = x.shape[:1] + x.shape[2:]
  kw = dict(reduction=reduction, label_smoothing=smoothing)
  np_dtype, torch_dtype = FLOATS[dtype]
  if probs:
    target = rng.dirichlet(np.ones(num_classes), batch)
    target = np.moveaxis(target, -1, 1).astype(np_dtype)
    t_target = torch.from_numpy(target)
  else:
    target = rng.integers(0, num_classes, batch)
    if ignore and target.size:
      target.flat[0] = kw["ignore_index"] = num_classes - 1
    t_target = torch.from_numpy(target)
  weight = rng.uniform(0.1, 2.0, num_classes).astype(np_dtype) if weighted else None
  t_weight = None if weight is None else torch.from_numpy(weight)
  _grad_pair(lambda a: F.cross_entropy(a, target, weight=weight, **kw),
             lambda a: tF.cross_entropy(a, t_target, weight=t_weight, **kw), x, dtype)


# x and w hold small multiples of 1/2 and 1/4, so every logit is exact whatever order either
# framework sums the matmul in: what is compared is the loss and its gradients, not BLAS rounding.
@given(dtype=st.sampled_from(sorted(FLOATS)), n=st.integers(0, 12), d=st.integers(1, 6),
       v=st.integers(1, 10), chunk=st.one_of(st.none(), st.integers(1, 14)), bias=st.booleans(),
       weighted=st.booleans(), ignore=st.booleans(), smoothing=st.sampled_from([0.0, 0.3, 1.0]),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       special=st.sampled_from(["none", "nan_row", "inf_row"]), seed=st.integers(0, 2**16))
def test_linear_cross_entropy(dtype, n, d, v, chunk, bias, weighted, ignore, smoothing, reduction,
                              special, seed):
  rng = np.random.default_rng(seed)
  np_dtype, torch_dtype = FLOATS[dtype]
  x = (rng.integers(-8, 9, (n, d)) / 2).astype(np_dtype)
  if special != "none" and n:
    x[rng.integers(n)] = np.nan if special == "nan_row" else np.inf
  w = (rng.integers(-4, 5, (v, d)) / 4).astype(np_dtype)  # torch's (V, D) layout
  b = (rng.integers(-4, 5, v) / 4).astype(np_dtype) if bias else None
  cw = rng.uniform(0.1, 2.0, v).astype(np_dtype) if weighted else None
  target = rng.integers(0, v, n)
  kw = dict(reduction=reduction, label_smoothing=smoothing)
  if ignore and n:
    target[0] = kw["ignore_index"] = v - 1
  with jax.enable_x64(dtype == "float64"):
    def f(a, c, bb):
      return F.linear_cross_entropy(a, c, target, linear_bias=bb, weight=cw,
                                    options=F.LinearCrossEntropyOptions(chunk), **kw)
    out, vjp = jax.vjp(f, x, w, b)
    cot = rng.standard_normal(out.shape).astype(np_dtype)
    grads = [None if g is None else np.asarray(g) for g in vjp(cot)]
    out = np.asarray(out)
  tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
  tb = None if b is None else torch.tensor(b, requires_grad=True)
  tensors = {"x": tx, "lw": tw, "target": torch.from_numpy(target)}
  tensors |= ({"bias": tb} if tb is not None else {}) | (
      {"weight": torch.from_numpy(cw)} if cw is not None else {})
  t_out = ops.torch_linear_cross_entropy(tensors, kw)  # the grid's torch reference, old-torch fallback included
  inputs = [tx, tw] + ([tb] if tb is not None else [])
  t_grads = torch.autograd.grad(t_out, inputs, torch.from_numpy(cot), allow_unused=True)
  parity.assert_close(out, t_out.detach().numpy(), dtype, "forward")
  for name, g, tg in zip(("d input", "d weight", "d bias"), grads, t_grads):
    expected = np.zeros_like(g) if tg is None else tg.numpy()
    parity.assert_close(g, expected, dtype, name)


# The Pallas kernels (Triton, in Pallas' interpreter here) against torch, one pass and two passes.
# Each example recompiles (the two-pass threshold is a trace-time constant), so the long profile
# caps this property at 500 examples.
@settings(max_examples=min(settings.default.max_examples, 500))
@given(data=logits(min_dims=2, max_dims=2), op=st.sampled_from(
           ["softmax", "log_softmax", "softmin", "cross_entropy"]),
       two_pass=st.booleans(), smoothing=st.sampled_from([0.0, 0.2]),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_pallas_kernels(data, op, two_pass, smoothing, reduction, seed):
  _, x = data  # the kernels cover float32 and half precision: float64 draws run in float32
  rng = np.random.default_rng(seed)
  if op == "cross_entropy":
    target = rng.integers(0, x.shape[1], x.shape[0])
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    jax_fn = lambda a: F.cross_entropy(a, target, **kw)
    torch_fn = lambda a: tF.cross_entropy(a, torch.from_numpy(target), **kw)
  else:
    jax_fn, torch_fn = (lambda a: getattr(F, op)(a, -1)), (lambda a: getattr(tF, op)(a, -1))
  limit = gpu.ONE_PASS_MAX
  gpu.ONE_PASS_MAX = 2 if two_pass else limit  # two-pass over 2-column blocks
  jax.clear_caches()
  try:
    with dispatch.prefer("pallas"):
      _grad_pair(jax_fn, torch_fn, x, "float32")
  finally:
    gpu.ONE_PASS_MAX = limit
    jax.clear_caches()
