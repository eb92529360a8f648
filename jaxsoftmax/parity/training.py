"""``compare_training``: K optimizer steps on both sides from the same weights and batches.

The JAX side trains with optax, the torch side with ``torch.optim``, each built from one
specification (``"adam"``, ``"adamw"``, ``"sgd"`` with torch's hyper-parameter names) so the two
cannot silently differ. After every step the report records both losses and the parameter drift

.. math:: \\mathrm{drift}_k = \\max_p \\frac{\\max |\\theta^{jax}_{p,k} - \\theta^{torch}_{p,k}|}
   {\\max(\\max |\\theta^{torch}_{p,k}|, 10^{-12})}

(per parameter tensor, in torch's layout); it passes when every step's losses agree within
``loss_tolerance`` and the drift stays within ``drift_budget``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from jaxsoftmax._src.copies import jax_copy, numpy_copy, torch_copy
from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax.parity.compare import Comparison, Tolerance, compare
from jaxsoftmax.parity.functions import float32_torch, layout_permutation, torch_device_for
from jaxsoftmax.parity.modules import copy_weights, weight_links
from jaxsoftmax.parity.report import ParityReport, publish
from jaxsoftmax.parity.sides import jax_side

__all__ = ["compare_training", "optimizers"]

_KNOWN = {"adam": {"lr", "betas", "eps"}, "adamw": {"lr", "betas", "eps", "weight_decay"},
          "sgd": {"lr", "momentum", "nesterov", "weight_decay"}}


def optimizers(name: str, **hyper) -> tuple[object, Callable]:
  """``(optax transformation, torch factory(params) -> optimizer)`` with the same
  hyper-parameters, named as torch names them (``lr``, ``betas``, ``eps``, ``weight_decay``,
  ``momentum``, ``nesterov``); torch's defaults where one is left out."""
  import optax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  if name not in _KNOWN:
    raise ArgumentError(f"optimizer must be one of {sorted(_KNOWN)} or a pair (optax "
                        f"transformation, torch factory); got {name!r}")
  unknown = set(hyper) - _KNOWN[name]
  if unknown:
    raise ArgumentError(f"optimizer {name!r} takes {sorted(_KNOWN[name])}; got {sorted(unknown)}")
  lr = hyper.get("lr", 1e-3)
  b1, b2 = hyper.get("betas", (0.9, 0.999))
  eps = hyper.get("eps", 1e-8)
  if name == "adam":
    return (optax.adam(lr, b1=b1, b2=b2, eps=eps),
            lambda p: torch.optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps))
  if name == "adamw":
    wd = hyper.get("weight_decay", 1e-2)  # torch's default, not optax's 1e-4
    return (optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd),
            lambda p: torch.optim.AdamW(p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))
  momentum, nesterov = hyper.get("momentum", 0.0), hyper.get("nesterov", False)
  wd = hyper.get("weight_decay", 0.0)
  # torch adds weight_decay * p to the gradient before momentum, as add_decayed_weights does.
  tx = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
  if wd:
    tx = optax.chain(optax.add_decayed_weights(wd), tx)
  return tx, lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, nesterov=nesterov,
                                       weight_decay=wd)


def _cross_entropy():
  import torch  # noqa: PLC0415

  import jaxsoftmax  # noqa: PLC0415

  return (lambda logits, target: jaxsoftmax.cross_entropy(logits, target),
          lambda logits, target: torch.nn.functional.cross_entropy(logits, target))


def _plot(path, steps: list[dict], title: str) -> None:
  from jaxsoftmax._src.plotting import pyplot, save_png  # noqa: PLC0415

  plt = pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
  k = [s["step"] for s in steps]
  ax1.plot(k, [s["jax loss"] for s in steps], "o-", label="JAX (optax)")
  ax1.plot(k, [s["torch loss"] for s in steps], "x--", label="torch (torch.optim)")
  ax1.set(xlabel="step", ylabel="loss", title="loss per step")
  ax1.legend()
  ax2.semilogy(k, [max(s["drift"], 1e-16) for s in steps], "o-")
  ax2.set(xlabel="step", ylabel="max relative parameter difference", title="parameter drift")
  fig.suptitle(title)
  fig.tight_layout()
  save_png(fig, path, dpi=110)


def compare_training(jax_model, torch_model, batches: Iterable, *, params=None,
                     optimizer="adam", loss: tuple[Callable, Callable] | None = None,
                     steps: int | None = None, weights: str = "torch",
                     rename: Sequence[tuple[str, str]] = (), mapping: Mapping | None = None,
                     layouts: Mapping[int, object] | None = None, order: str = "interleaved",
                     loss_tolerance: Tolerance = Tolerance(rtol=1e-4, atol=1e-5),
                     drift_budget: float = 1e-4, plot=None, jax_device=None,
                     torch_device: str | None = None, title: str | None = None,
                     **hyper) -> ParityReport:
  """Trains the port and the original side by side and compares them step by step.

  Args:
    jax_model, torch_model, params, weights, rename, mapping: as
      :func:`~jaxsoftmax.parity.compare_modules` (an NNX model is trained in place; both run in
      eval mode, so dropout is off and BatchNorm uses its running statistics).
    batches: ``(inputs, target)`` pairs in torch's layout; ``inputs`` an array or a tuple of
      them. ``steps`` takes the first ``steps`` of them (default: all).
    optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` with ``**hyper`` in torch's names (``lr``,
      ``betas``, ``eps``, ``weight_decay``, ``momentum``, ``nesterov``), or a pair
      ``(optax transformation, torch factory(parameters) -> optimizer)``.
    loss: ``(jax_loss(outputs, target), torch_loss(outputs, target))``; default: cross-entropy
      with integer labels (``jaxsoftmax.cross_entropy`` and ``F.cross_entropy``).
    layouts: ``{input position: "NCHW->NHWC" or a permutation}`` for the JAX side's inputs.
    order: ``"interleaved"`` (torch step, then JAX step, each batch: a shared buffer would carry
      torch's in-place update into the JAX step) or ``"jax-first"`` (all JAX steps, then torch's).
    loss_tolerance: per-step losses, ``|l_jax - l_torch| <= atol + rtol |l_torch|``.
    drift_budget: the largest relative parameter difference allowed at any step.
    plot: a path for a PNG of both loss curves and the drift.

  Returns:
    A :class:`~jaxsoftmax.parity.ParityReport` with a per-step table (``.steps``).
  """
  import jax  # noqa: PLC0415
  import optax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  if order not in ("interleaved", "jax-first"):
    raise ArgumentError(f"order must be 'interleaved' or 'jax-first'; got {order!r}")
  if isinstance(optimizer, str):
    tx, make_torch_opt = optimizers(optimizer, **hyper)
  elif hyper:
    raise ArgumentError(f"hyper-parameters {sorted(hyper)} go with a named optimizer; a pair "
                        "carries its own")
  else:
    tx, make_torch_opt = optimizer
  jax_loss, torch_loss = loss or _cross_entropy()
  batches = list(batches)[:steps]
  if not batches:
    raise ArgumentError("batches is empty: nothing to train on")
  side = jax_side(jax_model, params, training=False)
  links, notes = weight_links(side, torch_model, rename=rename, mapping=mapping)
  torch_model.eval()
  copy_weights(side, torch_model, links, weights)
  jax_device = jax_device or jax.devices()[0]
  torch_device = torch_device or torch_device_for(jax_device)
  perms = {int(k): layout_permutation(v) for k, v in (layouts or {}).items()}
  trainable = [link for link in links if not link.buffer]
  values = side.values()
  state = {"params": {link.jax_name: jax_copy(values[link.jax_name], device=jax_device)
                      for link in trainable},
           "fixed": {link.jax_name: jax_copy(values[link.jax_name], device=jax_device)
                     for link in links if link.buffer}}
  with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 counts
    state["opt"] = tx.init(state["params"])

  @jax.jit
  def jax_step(params, fixed, opt_state, inputs, target):
    def objective(p):
      return jax_loss(side.apply({**p, **fixed}, *inputs), target)
    with jax.numpy_dtype_promotion("standard"):
      value, grads = jax.value_and_grad(objective)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return value, optax.apply_updates(params, updates), opt_state

  torch_model.to(torch_device)
  tensors = dict(torch_model.named_parameters())
  torch_params = [tensors[link.torch_name] for link in trainable]
  torch_opt = make_torch_opt(torch_params)

  def split(batch):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
      raise ArgumentError("each batch must be an (inputs, target) pair")
    inputs, target = batch
    return (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)), target

  def step_jax(batch):
    inputs, target = split(batch)
    xs = tuple(jax_copy(np.transpose(numpy_copy(x), perms[i]) if i in perms else x,
                        device=jax_device) for i, x in enumerate(inputs))
    value, state["params"], state["opt"] = jax_step(
        state["params"], state["fixed"], state["opt"], xs, jax_copy(target, device=jax_device))
    return float(value)

  def step_torch(batch):
    inputs, target = split(batch)
    torch_opt.zero_grad()
    out = torch_model(*(torch_copy(x, device=torch_device) for x in inputs))
    value = torch_loss(out, torch_copy(target, device=torch_device))
    value.backward()
    torch_opt.step()
    return value.item()

  def drift():
    worst, worst_name = 0.0, ""
    for link in trainable:
      mine = link.to_torch(np.asarray(state["params"][link.jax_name], np.float64))
      theirs = numpy_copy(tensors[link.torch_name]).astype(np.float64)
      rel = np.abs(mine - theirs).max(initial=0.0) / max(np.abs(theirs).max(initial=0.0), 1e-12)
      if rel >= worst:
        worst, worst_name = float(rel), link.torch_name
    return worst, worst_name

  rows = []
  with float32_torch(), jax.default_matmul_precision("highest"):
    if order == "interleaved":
      for k, batch in enumerate(batches, 1):
        theirs = step_torch(batch)
        mine = step_jax(batch)
        rows.append((k, mine, theirs, *drift()))
    else:
      mine_all = [step_jax(b) for b in batches]
      theirs_all = [step_torch(b) for b in batches]
      rows = [(k, m, t, float("nan"), "") for k, (m, t) in enumerate(zip(mine_all, theirs_all), 1)]
      rows[-1] = (*rows[-1][:3], *drift())
  steps_table = [{"step": k, "jax loss": m, "torch loss": t, "|diff|": abs(m - t), "drift": d,
                  "worst parameter": name} for k, m, t, d, name in rows]
  report = ParityReport(title or f"{len(rows)} training steps: {type(jax_model).__name__} "
                                 f"(JAX, optax) vs {type(torch_model).__name__} (torch)")
  report.steps = steps_table
  report.notes += notes
  report.meta = {"devices": f"JAX {jax_device} · torch {torch_device}",
                 "optimizer": optimizer if isinstance(optimizer, str) else "given pair",
                 "order": order, "drift budget": drift_budget}
  losses = compare([m for _, m, *_ in rows], [t for _, _, t, *_ in rows], "float64",
                   "losses per step", kind="training", tol=loss_tolerance)
  report.checks.append(losses)
  final = max((r for r in rows if not np.isnan(r[3])), key=lambda r: r[3])  # jax-first: last only
  report.checks.append(Comparison(
      "parameter drift", final[3] <= drift_budget, max_abs=final[3], max_rel=final[3],
      kind="training", rtol=drift_budget, atol=0.0, dtype="",
      problem="" if final[3] <= drift_budget else
      f"relative parameter difference {final[3]:.3g} at step {final[0]} ({final[4]}) exceeds the "
      f"budget {drift_budget:g}"))
  side.load(state["params"])  # an NNX model trained in place; Linen / callables: jax_variables
  if side.variables is not None:
    report.jax_variables = side.variables()
  if plot is not None:
    _plot(plot, steps_table, report.title)
    report.meta["plot"] = str(plot)
  return publish(report)
