"""Property-based parity with torch (hypothesis): shapes, dims, dtypes and value distributions with
+/-inf and NaN sprinkled in. `make test` runs the bounded "ci" profile; `make fuzz` the long one."""

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
import torch.nn.functional as tF
from hypothesis import example, given
from hypothesis import strategies as st

import jax
from jaxsoftmax import functional as F
from jaxsoftmax import parity

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
