"""The JAX side of a module comparison, whatever it is written in.

:func:`jax_side` wraps a Flax NNX module, a Flax Linen module with its variables, or a plain
``fn(params, *inputs)`` callable with its params, behind one interface: parameter names and
shapes, a pure ``apply(values, *inputs)``, loading values (copies), and capturing each
submodule's input and output in execution order (NNX: every submodule, each wrapped for the one
call; Linen: every module's ``__call__`` via ``nn.intercept_methods``, which unlike
``capture_intermediates`` also gives each layer's input, the half of "its input agreed, its output
did not"; a callable: the ``intermediates`` function the user names, outputs only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxsoftmax._src.copies import jax_copy, numpy_copy
from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax.parity import trees

__all__ = ["JaxSide", "jax_side", "path_name"]


def path_name(path) -> str:
  """A JAX key path as a dotted name; NNX's ``.value`` on variables is dropped."""
  parts = []
  for key in path:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        value = getattr(key, attr)
        break
    else:
      value = str(key)
    if attr == "name" and value == "value":
      continue
    parts.append(str(value))
  return ".".join(parts)


def _first_array(value):
  return next((v for v in trees.flatten(value).values() if trees.is_array(v)), None)


@dataclasses.dataclass
class JaxSide:
  shapes: dict[str, tuple]
  apply: Callable  # (values: {name: array}, *inputs) -> outputs
  values: Callable  # () -> {name: numpy array}
  load: Callable  # ({name: array}) -> None
  capture: Callable  # (*inputs) -> [(name, input or None, output)]
  variables: Callable | None = None  # () -> the Linen variables / callable's params, as loaded


def _flat(tree):
  import jax  # noqa: PLC0415

  pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [path_name(p) for p, _ in pairs], [leaf for _, leaf in pairs], treedef


def _nnx_side(model, training: bool) -> JaxSide:
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  # Before splitting: the mode (Dropout's deterministic, BatchNorm's use_running_average) is part
  # of the graph definition.
  model.train() if training else model.eval()
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  p_names, p_leaves, p_def = _flat(params)
  s_names, s_leaves, s_def = _flat(stats)
  shapes = {n: tuple(v.shape) for n, v in zip(p_names + s_names, p_leaves + s_leaves)}

  def states(values):
    return (jax.tree_util.tree_unflatten(p_def, [values[n] for n in p_names]),
            jax.tree_util.tree_unflatten(s_def, [values[n] for n in s_names]))

  def apply(values, *inputs):
    return nnx.merge(graphdef, *states(values), rest)(*inputs)

  def values():
    _, p, s, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return {n: numpy_copy(v) for n, v in zip(p_names + s_names, _flat(p)[1] + _flat(s)[1])}

  def load(new):
    current = values()
    nnx.update(model, *states({n: jax_copy(new[n], current[n].dtype) if n in new else current[n]
                               for n in current}))

  def capture(*inputs):
    records = []
    swapped = []
    for path, module in nnx.iter_modules(model):
      if not path:
        continue
      name = ".".join(str(p) for p in path)
      cls = type(module)
      if isinstance(module, nnx.List) or not any("__call__" in vars(k) for k in cls.__mro__[:-1]):
        continue

      def call(self, *args, _name=name, _cls=cls, **kwargs):
        out = _cls.__call__(self, *args, **kwargs)
        records.append((_name, _first_array(args), _first_array(out)))
        return out
      module.__class__ = type(cls.__name__, (cls,), {"__call__": call})
      swapped.append((module, cls))
    try:
      model(*inputs)
    finally:
      for module, cls in swapped:
        module.__class__ = cls
    return records

  return JaxSide(shapes, apply, values, load, capture)


def _linen_side(module, variables) -> JaxSide:
  import jax  # noqa: PLC0415
  from flax import linen  # noqa: PLC0415

  if not isinstance(variables, dict) or "params" not in variables:
    raise ArgumentError("a Linen module needs params=: its variables, {'params': ..., "
                        "'batch_stats': ...} as init returns them")
  state = {"variables": variables}
  collections = [c for c in variables if c in ("params", "batch_stats")]
  flat = {c: _flat(variables[c]) for c in collections}
  shapes = {}
  for c in collections:
    shapes.update({n: tuple(v.shape) for n, v in zip(flat[c][0], flat[c][1])})

  def build(values):
    built = dict(state["variables"])
    for c in collections:
      built[c] = jax.tree_util.tree_unflatten(flat[c][2], [values[n] for n in flat[c][0]])
    return built

  def apply(values, *inputs):
    return module.apply(build(values), *inputs)

  def values():
    return {n: numpy_copy(v) for c in collections
            for n, v in zip(flat[c][0], _flat(state["variables"][c])[1])}

  def load(new):
    current = values()
    state["variables"] = build({n: jax_copy(new[n], current[n].dtype) if n in new
                                else jax_copy(current[n]) for n in current})

  def capture(*inputs):
    records = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.path:
        records.append((".".join(context.module.path), _first_array(args), _first_array(out)))
      return out
    with linen.intercept_methods(interceptor):
      module.apply(state["variables"], *inputs)
    return records

  return JaxSide(shapes, apply, values, load, capture, lambda: state["variables"])


def _callable_side(fn, params, intermediates) -> JaxSide:
  import jax  # noqa: PLC0415

  state = {"params": params}
  names, leaves, treedef = _flat(params)
  shapes = {n: tuple(np.shape(v)) for n, v in zip(names, leaves)}

  def build(values):
    return jax.tree_util.tree_unflatten(treedef, [values[n] for n in names])

  def load(new):
    state["params"] = build({n: jax_copy(new[n], np.asarray(v).dtype) if n in new
                             else v for n, v in zip(names, _flat(state["params"])[1])})

  def capture(*inputs):
    if intermediates is None:
      return []
    found = intermediates(state["params"], *inputs)
    return [(name, None, _first_array(value)) for name, value in found.items()]

  return JaxSide(
      shapes, lambda values, *inputs: fn(build(values), *inputs),
      lambda: {n: numpy_copy(v) for n, v in zip(names, _flat(state["params"])[1])}, load,
      capture, lambda: state["params"])


def jax_side(model, params=None, intermediates=None, training: bool = False) -> JaxSide:
  """The adapter for an NNX module (put in training or eval mode), a Linen module (``params``:
  its variables; its mode is its call's business) or a callable ``fn(params, *inputs)``
  (``params``: its pytree; ``intermediates``: an optional ``fn(params, *inputs) -> {name:
  array}`` naming its layers' outputs)."""
  try:
    from flax import linen, nnx  # noqa: PLC0415
  except ImportError:  # a plain callable needs no flax
    linen = nnx = None
  if nnx is not None and isinstance(model, nnx.Module):
    if params is not None:
      raise ArgumentError("an NNX module holds its own parameters: do not pass params=")
    return _nnx_side(model, training)
  if linen is not None and isinstance(model, linen.Module):
    return _linen_side(model, params)
  if callable(model):
    if params is None:
      raise ArgumentError("a plain JAX callable fn(params, *inputs) needs params=")
    return _callable_side(model, params, intermediates)
  raise TypeError(f"the JAX side must be an nnx.Module, a linen.Module or a callable "
                  f"fn(params, *inputs); got {type(model).__name__}")
