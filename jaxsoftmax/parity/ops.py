"""The parity grid's ops: each pairs a jaxsoftmax call with the torch call that defines its
expected result. torch is imported lazily."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

import jaxsoftmax
from jaxsoftmax import functional as F
from jaxsoftmax import nn as jnn
from jaxsoftmax._src import torch_compat

__all__ = ["Op", "OPS", "torch_module", "torch_linear_cross_entropy"]


@dataclasses.dataclass(frozen=True)
class Op:
  name: str
  jax_fn: Callable[[dict, dict], Any]
  torch_fn: Callable[[dict, dict], Any]
  differentiable: tuple[str, ...] = ("x",)  # inputs whose gradients are compared


def torch_module():
  """torch, imported on first use."""
  import torch  # noqa: PLC0415 - lazy on purpose: the package must import without torch
  return torch


def _tF():
  return torch_module().nn.functional


def _masked_ref(x, mask, dim, log):
  """torch's masking idiom, ``masked_fill(~mask, -inf)``, with masked outputs held constant.

  jaxsoftmax's ``where`` makes masked outputs constants (0, or -inf for log_softmax) that pass no
  gradient, as jax.nn does; ``torch.where`` expresses exactly that on the torch side.
  """
  torch = torch_module()
  filled = x.masked_fill(~mask, float("-inf"))
  out = filled.log_softmax(dim) if log else filled.softmax(dim)
  return torch.where(mask, out, float("-inf") if log else 0.0)


def _multiaxis_ref(x, axes, log):
  """torch has no multi-axis softmax: move the axes last, flatten them, softmax, undo."""
  torch = torch_module()
  axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
  rest = [i for i in range(x.ndim) if i not in axes]
  perm = rest + list(axes)
  moved = x.permute(perm)
  flat = moved.reshape(*moved.shape[:len(rest)], -1)
  out = (torch.log_softmax if log else torch.softmax)(flat, -1).reshape(moved.shape)
  return out.permute([perm.index(i) for i in range(x.ndim)])


def _ce_kwargs(p):
  kw = {"reduction": p.get("reduction", "mean"), "label_smoothing": p.get("label_smoothing", 0.0)}
  if "ignore_index" in p:
    kw["ignore_index"] = p["ignore_index"]
  return kw


def _torch_llm_ce(logits, target, weight, p, dim=1):
  """torch composed from its own ops: ``F.cross_entropy`` of the soft-capped logits plus
  ``s * logsumexp^2`` over the kept rows, reduced as the loss (or the lse itself, with
  ``p["out"] == "lse"``)."""
  torch = torch_module()
  cap, z = p.get("softcap"), p.get("z_loss", 0.0)
  x = logits if cap is None else cap * torch.tanh(logits / cap)
  lse = torch.logsumexp(x, dim)
  if p.get("out") == "lse":
    return lse
  loss = _tF().cross_entropy(x, target, weight=weight, **_ce_kwargs(p))
  if target.dtype == torch.int64:
    kept = target != p.get("ignore_index", -100)
  else:
    kept = torch.ones_like(lse, dtype=torch.bool)
  rows = torch.where(kept, z * lse.square(), torch.zeros_like(lse))
  reduction = p.get("reduction", "mean")
  if reduction == "none":
    return loss + rows
  if reduction == "sum":
    return loss + rows.sum()
  return loss + rows.sum() / kept.sum()


def _llm_kwargs(p):
  return dict(z_loss=p.get("z_loss", 0.0), logit_softcap=p.get("softcap"))


def _jax_llm(out, p):
  """The loss, or the returned lse (``p["out"] == "lse"``)."""
  return out[1].lse if p.get("out") == "lse" else out


ASM = dict(in_features=8, n_classes=12, cutoffs=(4, 9), div_value=2.0)  # the grid's adaptive softmax
ASM_WEIGHTS = ("head.weight", "tail.0.0.weight", "tail.0.1.weight", "tail.1.0.weight",
               "tail.1.1.weight")  # torch layouts (out, in); "head.bias" with head_bias


def _asm_state(d):
  state = {k: d[k] for k in ASM_WEIGHTS}
  if "head.bias" in d:
    state["head.bias"] = d["head.bias"]
  return state


def _torch_asm(t, p):
  """torch's module run with the case's weights: ``functional_call`` of a wrapper whose forward is
  the method asked for, so gradients reach the given tensors."""
  torch = torch_module()
  module = torch.nn.AdaptiveLogSoftmaxWithLoss(
      ASM["in_features"], ASM["n_classes"], list(ASM["cutoffs"]), ASM["div_value"],
      head_bias="head.bias" in t).to(device=t["x"].device, dtype=t["x"].dtype)

  class Call(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.m = module

    def forward(self, *args):
      return module.log_prob(*args) if p["out"] == "log_prob" else module(*args)

  state = {f"m.{k}": v for k, v in _asm_state(t).items()}
  args = (t["x"],) if p["out"] == "log_prob" else (t["x"], t["target"])
  out = torch.func.functional_call(Call(), state, args, strict=True)
  return out if p["out"] == "log_prob" else getattr(out, p["out"])


def _jax_asm_module(a):
  """jaxsoftmax.nn.AdaptiveLogSoftmaxWithLoss holding the case's (possibly traced) weights.

  Built abstractly (``nnx.eval_shape``): every parameter is replaced below, so drawing torch's
  initial weights would only cost a random-number program per weight shape and dtype."""
  module = nnx.eval_shape(lambda: jnn.AdaptiveLogSoftmaxWithLoss(
      ASM["in_features"], ASM["n_classes"], ASM["cutoffs"], ASM["div_value"],
      head_bias="head.bias" in a, dtype=a["x"].dtype, rngs=nnx.Rngs(0)))
  module.head.kernel.set_value(a["head.weight"].T)
  if "head.bias" in a:
    module.head.bias.set_value(a["head.bias"])
  for i, pair in enumerate(module.tail):
    for j, layer in enumerate(pair):
      layer.kernel.set_value(a[f"tail.{i}.{j}.weight"].T)
  return module


def _jax_asm(a, p):
  """The functional core (Flax layout: the kernels are torch's weights transposed)."""
  if p["out"] == "log_prob":
    return _jax_asm_module(a).log_prob(a["x"])
  tails = [(a[f"tail.{i}.0.weight"].T, a[f"tail.{i}.1.weight"].T) for i in range(2)]
  out = jaxsoftmax.adaptive_log_softmax_with_loss(a["x"], a["target"], a["head.weight"].T, tails,
                                                  ASM["cutoffs"], head_bias=a.get("head.bias"))
  return getattr(out, p["out"])


def _jax_asm_nn(a, p):
  module = _jax_asm_module(a)
  if p["out"] == "log_prob":
    return module.log_prob(a["x"])
  return getattr(module(a["x"], a["target"]), p["out"])


def _gumbel_torch(t, p):
  # torch.nn.functional.gumbel_softmax's algorithm, with the noise given instead of drawn.
  torch = torch_module()
  y_soft = ((t["x"] + t["noise"]) / p["tau"]).softmax(p["dim"])
  if not p["hard"]:
    return y_soft
  index = y_soft.max(p["dim"], keepdim=True)[1]
  y_hard = torch.zeros_like(t["x"]).scatter_(p["dim"], index, 1.0)
  return y_hard - y_soft.detach() + y_soft


def _lce_kwargs(p):
  kw = _ce_kwargs(p)
  if "ignore_index" not in p and p.get("targets", "index") == "index":
    kw["ignore_index"] = None  # linear_cross_entropy's own default (-100 for indices)
  return kw


def torch_linear_cross_entropy(t, p):
  """torch's linear_cross_entropy; on torch older than 2.13, which lacks it, its documented
  equivalent ``cross_entropy(linear(input, W, b), target)``."""
  tF = _tF()
  kw = _lce_kwargs(p)
  fn = getattr(tF, "linear_cross_entropy", None)
  if fn is not None:
    return fn(t["x"], t["lw"], t["target"], linear_bias=t.get("bias"), weight=t.get("weight"), **kw)
  w = t["lw"]
  logits = t["x"] @ w.reshape(-1, w.shape[-1]).T
  if "bias" in t:
    logits = logits + t["bias"].reshape(-1)
  logits = logits.reshape(t["x"].shape[:-1] + w.shape[:-1])
  kw["ignore_index"] = -100 if kw.get("ignore_index") is None else kw["ignore_index"]
  return tF.cross_entropy(logits, t["target"], weight=t.get("weight"), **kw)


def _torch_lce_module(t, p):
  """torch.nn.LinearCrossEntropyLoss run with the case's weights (functional_call keeps them
  differentiable)."""
  torch = torch_module()
  if not hasattr(torch.nn, "LinearCrossEntropyLoss"):  # torch < 2.13: the module's definition
    return torch_linear_cross_entropy(t, p)
  v, d = t["lw"].shape
  module = torch.nn.LinearCrossEntropyLoss(d, v, bias="bias" in t, weight=t.get("weight"),
                                           **_lce_kwargs(p)).to(t["lw"].device, t["lw"].dtype)
  params = {"linear.weight": t["lw"]} | ({"linear.bias": t["bias"]} if "bias" in t else {})
  return torch.func.functional_call(module, params, (t["x"], t["target"]))


def _jax_lce_module(a, p):
  v, d = a["lw"].shape
  # Built abstractly, as _jax_asm_module is: every array it holds is replaced below.
  module = nnx.eval_shape(lambda: jnn.LinearCrossEntropyLoss(
      d, v, bias="bias" in a, weight=a.get("weight"), rngs=nnx.Rngs(0), **_lce_kwargs(p)))
  module.linear.kernel = nnx.Param(a["lw"].T)  # NNX kernel = torch's Linear.weight transposed
  if "bias" in a:
    module.linear.bias = nnx.Param(a["bias"])
  if "weight" in a:
    module.weight.set_value(a["weight"])
  return module(a["x"], a["target"])


OPS: dict[str, Op] = {op.name: op for op in [
    Op("softmax", lambda a, p: F.softmax(a["x"], p["dim"]), lambda t, p: _tF().softmax(t["x"], p["dim"])),
    Op("log_softmax", lambda a, p: F.log_softmax(a["x"], p["dim"]),
       lambda t, p: _tF().log_softmax(t["x"], p["dim"])),
    Op("softmin", lambda a, p: F.softmin(a["x"], p["dim"]), lambda t, p: _tF().softmin(t["x"], p["dim"])),
    Op("softmax[temperature]",
       lambda a, p: jaxsoftmax.softmax(a["x"], p["dim"], temperature=(
           jnp.asarray(p["T"]) if p.get("traced") else p["T"])),
       lambda t, p: (t["x"] / p["T"]).softmax(p["dim"])),
    Op("log_softmax[temperature]",
       lambda a, p: jaxsoftmax.log_softmax(a["x"], p["dim"], temperature=(
           jnp.asarray(p["T"]) if p.get("traced") else p["T"])),
       lambda t, p: (t["x"] / p["T"]).log_softmax(p["dim"])),
    Op("softmax[where]", lambda a, p: jaxsoftmax.softmax(a["x"], p["dim"], where=a["mask"]),
       lambda t, p: _masked_ref(t["x"], t["mask"], p["dim"], log=False)),
    Op("log_softmax[where]", lambda a, p: jaxsoftmax.log_softmax(a["x"], p["dim"], where=a["mask"]),
       lambda t, p: _masked_ref(t["x"], t["mask"], p["dim"], log=True)),
    Op("softmin[where]", lambda a, p: jaxsoftmax.softmin(a["x"], p["dim"], where=a["mask"]),
       lambda t, p: _masked_ref(-t["x"], t["mask"], p["dim"], log=False)),
    Op("softmax[axes]", lambda a, p: jaxsoftmax.softmax(a["x"], p["axes"]),
       lambda t, p: _multiaxis_ref(t["x"], p["axes"], log=False)),
    Op("log_softmax[axes]", lambda a, p: jaxsoftmax.log_softmax(a["x"], p["axes"]),
       lambda t, p: _multiaxis_ref(t["x"], p["axes"], log=True)),
    Op("cross_entropy",
       lambda a, p: F.cross_entropy(a["x"], a["target"], weight=a.get("weight"), **_ce_kwargs(p)),
       lambda t, p: _tF().cross_entropy(t["x"], t["target"], weight=t.get("weight"), **_ce_kwargs(p)),
       differentiable=("x", "target")),
    Op("cross_entropy[axis=-1]",  # the core API: classes last, JAX-style
       lambda a, p: jaxsoftmax.cross_entropy(
           a["x"], a["target"], weight=a.get("weight"), ignore_index=p.get("ignore_index"),
           label_smoothing=p.get("label_smoothing", 0.0), reduction=p.get("reduction", "mean")),
       lambda t, p: _tF().cross_entropy(
           t["x"].movedim(-1, 1), t["target"] if t["target"].dtype == torch_module().int64
           else t["target"].movedim(-1, 1), weight=t.get("weight"), **_ce_kwargs(p)),
       differentiable=("x", "target")),
    Op("nll_loss",
       lambda a, p: F.nll_loss(a["x"], a["target"], weight=a.get("weight"), **{
           k: v for k, v in _ce_kwargs(p).items() if k != "label_smoothing"}),
       lambda t, p: _tF().nll_loss(t["x"], t["target"], weight=t.get("weight"), **{
           k: v for k, v in _ce_kwargs(p).items() if k != "label_smoothing"})),
    Op("gumbel_softmax",
       lambda a, p: torch_compat.gumbel_softmax_from_noise(a["x"], a["noise"], p["tau"], p["hard"], p["dim"]),
       _gumbel_torch),
    Op("nn.Softmax", lambda a, p: jnn.Softmax(p["dim"])(a["x"]),
       lambda t, p: torch_module().nn.Softmax(p["dim"])(t["x"])),
    Op("nn.LogSoftmax", lambda a, p: jnn.LogSoftmax(p["dim"])(a["x"]),
       lambda t, p: torch_module().nn.LogSoftmax(p["dim"])(t["x"])),
    Op("nn.Softmin", lambda a, p: jnn.Softmin(p["dim"])(a["x"]),
       lambda t, p: torch_module().nn.Softmin(p["dim"])(t["x"])),
    Op("nn.Softmax2d", lambda a, p: jnn.Softmax2d()(a["x"]),
       lambda t, p: torch_module().nn.Softmax2d()(t["x"])),
    Op("nn.CrossEntropyLoss",
       lambda a, p: jnn.CrossEntropyLoss(weight=a.get("weight"), **_ce_kwargs(p))(a["x"], a["target"]),
       lambda t, p: torch_module().nn.CrossEntropyLoss(weight=t.get("weight"), **_ce_kwargs(p))(
           t["x"], t["target"]),
       differentiable=("x", "target")),
    Op("linear_cross_entropy",
       lambda a, p: F.linear_cross_entropy(a["x"], a["lw"], a["target"], linear_bias=a.get("bias"),
                                           weight=a.get("weight"), **_lce_kwargs(p)),
       torch_linear_cross_entropy, differentiable=("x", "lw", "bias", "target")),
    Op("linear_cross_entropy[core]",  # the JAX API: a (D, V) kernel, chunked with a ragged end
       lambda a, p: jaxsoftmax.linear_cross_entropy(
           a["x"], a["lw"].T, a["target"], bias=a.get("bias"), weight=a.get("weight"),
           ignore_index=p.get("ignore_index"), label_smoothing=p.get("label_smoothing", 0.0),
           reduction=p.get("reduction", "mean"), chunk_size=p.get("chunk")),
       torch_linear_cross_entropy, differentiable=("x", "lw", "bias")),
    Op("cross_entropy[llm]",  # z-loss, soft-cap, and the returned lse (differentiable)
       lambda a, p: _jax_llm(F.cross_entropy(
           a["x"], a["target"], weight=a.get("weight"), return_lse=p.get("out") == "lse",
           **_ce_kwargs(p), **_llm_kwargs(p)), p),
       lambda t, p: _torch_llm_ce(t["x"], t["target"], t.get("weight"), p),
       differentiable=("x", "target")),
    Op("linear_cross_entropy[llm]",  # the same on the chunked core, (D, V) kernel
       lambda a, p: _jax_llm(jaxsoftmax.linear_cross_entropy(
           a["x"], a["lw"].T, a["target"], bias=a.get("bias"), weight=a.get("weight"),
           ignore_index=p.get("ignore_index"), label_smoothing=p.get("label_smoothing", 0.0),
           reduction=p.get("reduction", "mean"), chunk_size=p.get("chunk"),
           return_lse=p.get("out") == "lse", filter_eps=p.get("filter_eps"), **_llm_kwargs(p)), p),
       lambda t, p: _torch_llm_ce(torch_module().nn.functional.linear(t["x"], t["lw"], t.get("bias")),
                                  t["target"], t.get("weight"), p),
       differentiable=("x", "lw", "bias")),
    Op("adaptive_log_softmax_with_loss", _jax_asm, _torch_asm,
       differentiable=("x",) + ASM_WEIGHTS + ("head.bias",)),
    Op("nn.AdaptiveLogSoftmaxWithLoss", _jax_asm_nn, _torch_asm,
       differentiable=("x",) + ASM_WEIGHTS + ("head.bias",)),
    Op("nn.LinearCrossEntropyLoss", _jax_lce_module, _torch_lce_module,
       differentiable=("x", "lw", "bias")),
    Op("nn.NLLLoss",
       lambda a, p: jnn.NLLLoss(weight=a.get("weight"), reduction=p["reduction"])(a["x"], a["target"]),
       lambda t, p: torch_module().nn.NLLLoss(weight=t.get("weight"), reduction=p["reduction"])(
           t["x"], t["target"])),
]}
