"""``compare_modules``: a JAX port of a torch model, run from the same weights, compared output,
gradient of every parameter by name, and layer by layer to name where it first goes wrong.

How: the weights (in torch's names and layouts) become an input of both sides, so one
:func:`~jaxsoftmax.parity.compare_functions` call compares outputs and every parameter's
gradient. torch runs through ``torch.func.functional_call``; the JAX side maps each torch tensor
to its parameter (:mod:`~jaxsoftmax.parity.weights`) inside the differentiated function, so its
gradients come back in torch's layout and names. Then one more forward on each side records every
submodule's first input and output (torch forward hooks; :mod:`~jaxsoftmax.parity.sides` on the
JAX side), and in torch's execution order the first submodule whose output leaves tolerance while
its input was within it is named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxsoftmax._src.copies import numpy_copy, torch_copy
from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax.parity import trees
from jaxsoftmax.parity.compare import TOLERANCES, Tolerance, compare
from jaxsoftmax.parity.functions import (compare_functions, float32_torch, layout_permutation,
                                         tolerance_picker, torch_device_for)
from jaxsoftmax.parity.report import LayerCheck, ParityReport, muted, publish
from jaxsoftmax.parity.sides import JaxSide, jax_side
from jaxsoftmax.parity.weights import Link, apply_rules, plan, sequential_name, torch_tensors

__all__ = ["compare_modules", "copy_weights", "weight_links"]


def weight_links(side: JaxSide, torch_model, *, rename=(), mapping=None):
  """``(links, notes)`` pairing the JAX side's parameters with the torch model's; raises
  :class:`~jaxsoftmax.parity.weights.WeightMappingError` listing whatever does not pair up."""
  tensors, buffers = torch_tensors(torch_model)
  return plan(side.shapes, {n: tuple(t.shape) for n, t in tensors.items()}, buffers=buffers,
              rename=rename, mapping=mapping)


def copy_weights(side: JaxSide, torch_model, links: Sequence[Link], direction: str) -> None:
  """Copies every linked value from torch into the JAX side (``"torch"``) or back
  (``"jax"``); nothing is aliased."""
  import torch  # noqa: PLC0415

  tensors, _ = torch_tensors(torch_model)
  if direction == "torch":
    side.load({link.jax_name: link.to_jax(numpy_copy(tensors[link.torch_name]))
               for link in links})
  elif direction == "jax":
    values = side.values()
    with torch.no_grad():
      for link in links:
        target = tensors[link.torch_name]
        target.copy_(torch_copy(np.ascontiguousarray(link.to_torch(values[link.jax_name])),
                                target.dtype, target.device))
  else:
    raise ArgumentError(f"weights must be 'torch' or 'jax' (whose weights both sides use); "
                        f"got {direction!r}")


def _torch_records(torch_model, run, inputs) -> list[tuple[str, object, object]]:
  """Every submodule's first input and output, in the order the calls finished."""
  import torch  # noqa: PLC0415

  records, handles = [], []
  for name, module in torch_model.named_modules():
    if not name:
      continue

    def hook(module, args, output, _name=name):
      first_in = next((a for a in trees.flatten(args).values() if torch.is_tensor(a)), None)
      first_out = next((o for o in trees.flatten(output).values() if torch.is_tensor(o)), None)
      records.append((_name, None if first_in is None else numpy_copy(first_in),
                      None if first_out is None else numpy_copy(first_out)))
    handles.append(module.register_forward_hook(hook))
  try:
    with torch.enable_grad():  # grad on: torch's inference fast paths skip submodules' hooks
      run(*inputs)
  finally:
    for handle in handles:
      handle.remove()
  return records


def _aligned(mine, theirs):
  """JAX's array in torch's layout when it is torch's with the channels last (conv ports)."""
  if mine is None or theirs is None or mine.shape == theirs.shape or mine.ndim < 3:
    return mine
  channels_last = np.moveaxis(theirs, 1, -1).shape
  return np.moveaxis(mine, -1, 1) if mine.shape == channels_last else mine


def _layer_check(name, mine, theirs, kind, tol_of):
  if mine is None or theirs is None:
    return None
  mine = _aligned(np.asarray(mine), theirs)
  dtype = np.asarray(mine).dtype.name
  return compare(mine, theirs, dtype, name, kind=kind, tol=tol_of(dtype))


def _localise(report: ParityReport, side: JaxSide, torch_model, run_torch, torch_inputs,
              jax_inputs, rename, layer_names, tol_of) -> None:
  theirs = _torch_records(torch_model, run_torch, torch_inputs)
  mine = side.capture(*jax_inputs)
  seen: dict[str, int] = {}
  by_name: dict[str, list] = {}
  for name, x, y in mine:
    by_name.setdefault(name, []).append((x, y))
  for torch_name, x, y in theirs:
    k = seen[torch_name] = seen.get(torch_name, -1) + 1
    jax_name = (layer_names or {}).get(torch_name)
    if jax_name is None:
      renamed = apply_rules(torch_name, rename)
      jax_name = next((n for n in (renamed, sequential_name(renamed)) if n in by_name), None)
    if jax_name is None or len(by_name.get(jax_name, ())) <= k:
      continue
    jx, jy = by_name[jax_name][k]
    label = torch_name if k == 0 else f"{torch_name}#{k}"
    out = _layer_check(label, jy, y, "layer output", tol_of)
    if out is None:
      continue
    report.layers.append(LayerCheck(label, jax_name, _layer_check(label, jx, x, "layer input",
                                                                   tol_of), out))
  compared = {layer.torch_name.split("#")[0] for layer in report.layers}
  unmatched = sorted({n for n, _, _ in theirs} - compared)
  if unmatched:
    report.notes.append(f"torch submodules with no JAX counterpart, not compared: {unmatched}")
  first = report.first_divergence
  off = [layer.torch_name for layer in report.layers if not layer.output.ok]
  if report.passed:
    if off:  # rounding that grows through a deep stack, then shrinks (a norm, a softmax)
      report.notes.append(f"layers beyond tolerance while the outputs and gradients pass: {off} "
                          "(intermediate rounding; not a failure)")
    return
  if first is not None:
    tol = f"rtol={first.output.rtol:g}, atol={first.output.atol:g}"
    given = (f"its input agrees (max abs err {first.input.max_abs:.3g})" if first.input
             else "its input was not captured")
    report.divergence = (
        f"first divergence: torch `{first.torch_name}` / JAX `{first.jax_name}`: {given}, its "
        f"output does not (max abs err {first.output.max_abs:.3g}, max rel err "
        f"{first.output.max_rel:.3g}; {first.output.dtype} {tol})")
  elif off:
    at = next(i for i, layer in enumerate(report.layers) if not layer.output.ok)
    off = report.layers[at]
    after = f"after `{report.layers[at - 1].torch_name}` (whose output agrees) and " if at else ""
    report.divergence = (f"divergence begins {after}before `{off.torch_name}` (whose input "
                         "already differs): in code outside the compared submodules")
  elif report.layers:
    report.divergence = (f"every compared submodule agrees in the forward pass (last: "
                         f"`{report.layers[-1].torch_name}`): the difference is in code after it, "
                         "in a submodule with no counterpart, or in a backward pass (see the "
                         "gradients by parameter)")


def compare_modules(jax_model, torch_model, *inputs, params=None, weights: str = "torch",
                    rename: Sequence[tuple[str, str]] = (), mapping: Mapping | None = None,
                    layer_names: Mapping[str, str] | None = None,
                    intermediates: Callable | None = None, names: Sequence[str] | None = None,
                    train: bool = False, localize: bool = True, grad=True,
                    rtol: float | None = None, atol: float | None = None,
                    tolerances: Mapping[str, Tolerance] | None = None,
                    anchor: str | None = None, layouts: Mapping | None = None,
                    output_layouts: Mapping | None = None, seed: int = 0, jax_device=None,
                    torch_device: str | None = None, check_dtype: bool = True,
                    title: str | None = None) -> ParityReport:
  """Compares a JAX port with its torch original from the same weights.

  Args:
    jax_model: an ``nnx.Module``; a ``linen.Module`` (``params``: its variables); or a callable
      ``fn(params, *inputs)`` (``params``: its pytree).
    torch_model: the ``torch.nn.Module``.
    *inputs: as :func:`~jaxsoftmax.parity.compare_functions`, in torch's layout.
    weights: ``"torch"`` copies torch's weights into the JAX side (an NNX module is updated in
      place), ``"jax"`` the other way; values are copied, never shared.
    rename: ``[(torch regex, replacement)]`` applied in order to torch's parameter and module
      names before matching; ``mapping``: ``{jax path: torch name or (torch name, layout)}``.
    layer_names: ``{torch module name: JAX module name}`` for layers the rules do not pair.
    intermediates: for a plain callable, ``fn(params, *inputs) -> {layer name: output}``.
    train: compare in training mode (dropout would make the sides differ; default eval).
    localize: also compare every submodule's input and output to find the first divergence.
    grad, rtol, atol, tolerances, anchor, layouts, output_layouts, seed, jax_device,
      torch_device, check_dtype: as :func:`~jaxsoftmax.parity.compare_functions`; the
      parameters are differentiated as the input ``params`` (``grad=["params"]`` for them
      alone).

  Raises:
    WeightMappingError: before anything runs, naming unmatched and mis-shaped parameters.

  Returns:
    A :class:`~jaxsoftmax.parity.ParityReport` whose ``grad params['fc1.weight']`` checks name
    each parameter, and whose ``layers`` / ``divergence`` localise a forward difference.
  """
  import jax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  if not isinstance(torch_model, torch.nn.Module):
    raise TypeError(f"torch_model must be a torch.nn.Module; got {type(torch_model).__name__}")
  side = jax_side(jax_model, params, intermediates, training=train)
  links, notes = weight_links(side, torch_model, rename=rename, mapping=mapping)
  was_training = torch_model.training
  torch_model.train(train)
  try:
    copy_weights(side, torch_model, links, weights)
    tensors, _ = torch_tensors(torch_model)
    params_in = {link.torch_name: numpy_copy(tensors[link.torch_name])
                 for link in links if not link.buffer}
    buffers_in = {link.torch_name: numpy_copy(tensors[link.torch_name])
                  for link in links if link.buffer}
    names = list(names) if names is not None else [f"input{i}" for i in range(len(inputs))]

    def jax_fn(params, buffers, *xs):
      given = {**params, **buffers}  # a torch tensor tied to two JAX parameters feeds both
      return side.apply({link.jax_name: link.to_jax(given[link.torch_name]) for link in links},
                        *xs)

    def torch_fn(params, buffers, *xs):
      return torch.func.functional_call(torch_model, {**params, **buffers}, tuple(xs))

    if grad is True:
      grad = ["params", *names]
      grad = [g for g in grad if g == "params" or any(
          trees.is_array(v) and str(v.dtype) in TOLERANCES
          for v in trees.flatten(inputs[names.index(g)], g).values())]
    with muted():
      report = compare_functions(
          jax_fn, torch_fn, params_in, buffers_in, *inputs, grad=grad,
          names=["params", "buffers", *names], rtol=rtol, atol=atol, tolerances=tolerances,
          anchor=anchor, layouts=layouts, output_layouts=output_layouts, seed=seed,
          jax_device=jax_device, torch_device=torch_device, check_dtype=check_dtype,
          title=title or f"{type(jax_model).__name__} (JAX) vs {type(torch_model).__name__} "
                         "(torch)")
    report.meta["weights"] = f"from {weights}"
    report.notes += notes
    if localize:
      perms = {k: layout_permutation(v) for k, v in (layouts or {}).items()}
      device = jax_device or jax.devices()[0]
      t_device = torch_device or torch_device_for(device)
      # Parameters that require grad: torch's inference fast paths (TransformerEncoderLayer in
      # eval mode) would otherwise bypass the submodules and their hooks.
      on_device = {k: torch_copy(v, device=t_device).requires_grad_(k in params_in)
                   for k, v in {**params_in, **buffers_in}.items()}
      torch_inputs = [trees.map_leaves(
          lambda p, v: torch_copy(v, device=t_device) if trees.is_array(v) else v, x, n)
          for x, n in zip(inputs, names)]
      jax_inputs = [trees.map_leaves(
          lambda p, v: jax.device_put(np.transpose(numpy_copy(v), perms[n]) if n in perms
                                      else numpy_copy(v), device) if trees.is_array(v) else v,
          x, n) for x, n in zip(inputs, names)]

      def run_torch(*xs):
        return torch.func.functional_call(torch_model, on_device, tuple(xs))

      with jax.default_matmul_precision("highest"), jax.default_device(device), float32_torch():
        _localise(report, side, torch_model, run_torch, torch_inputs, jax_inputs, rename,
                  layer_names, tolerance_picker(rtol, atol, tolerances))
  finally:
    torch_model.train(was_training)
  if side.variables is not None:
    report.jax_variables = side.variables()
  return publish(report)
