"""Nested inputs and outputs as flat, named leaves, the same way for JAX, torch and NumPy values.

A *tree* is a leaf or a container of trees: mappings (by key), named tuples and dataclasses (by
field), lists and tuples (by index; torch's ``return_types`` are tuples). Anything else is a leaf:
arrays, tensors, Python numbers, ``None``. A leaf's *path* is a readable string such as
``out[0]``, ``batch['x']`` or ``aux.lse``, so a report names exactly what differs.

JAX pytrees that are none of these (a registered class) are flattened by ``jax.tree_util`` when
JAX is already imported; torch and NumPy values never need it. No framework is imported here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping

__all__ = ["flatten", "map_leaves", "is_array"]


def is_array(value) -> bool:
  """An array of any framework (it has a shape and a dtype), not a container."""
  return hasattr(value, "shape") and hasattr(value, "dtype")


def _is_namedtuple(value) -> bool:
  return isinstance(value, tuple) and hasattr(value, "_fields")


def _children(tree) -> list[tuple[str, object]] | None:
  """``[(path suffix, child)]`` for a container, None for a leaf."""
  if is_array(tree) or tree is None or isinstance(tree, (str, bytes, int, float, complex)):
    return None
  if isinstance(tree, Mapping):
    return [(f"[{k!r}]", v) for k, v in tree.items()]
  if _is_namedtuple(tree):
    return [(f".{f}", getattr(tree, f)) for f in tree._fields]
  if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
    return [(f".{f.name}", getattr(tree, f.name)) for f in dataclasses.fields(tree)]
  if isinstance(tree, (list, tuple)):
    return [(f"[{i}]", v) for i, v in enumerate(tree)]
  jax = sys.modules.get("jax")  # a registered JAX pytree (flax State, equinox Module, ...)
  if jax is not None:
    pairs, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
    if pairs and not (len(pairs) == 1 and pairs[0][1] is tree):
      return [(jax.tree_util.keystr(path), leaf) for path, leaf in pairs]
  return None


def flatten(tree, root: str = "") -> dict[str, object]:
  """``{path: leaf}`` in a fixed order (mappings in their own order, fields as declared)."""
  children = _children(tree)
  if children is None:
    return {root: tree}
  flat = {}
  for suffix, child in children:
    flat.update(flatten(child, root + suffix))
  return flat


def map_leaves(fn: Callable[[str, object], object], tree, root: str = ""):
  """The same containers with ``fn(path, leaf)`` in place of each leaf (the inverse of
  :func:`flatten`; registered JAX pytrees are rebuilt by ``jax.tree_util``)."""
  if is_array(tree) or tree is None or isinstance(tree, (str, bytes, int, float, complex)):
    return fn(root, tree)
  if isinstance(tree, Mapping):
    items = {k: map_leaves(fn, v, f"{root}[{k!r}]") for k, v in tree.items()}
    return items if type(tree) is dict else type(tree)(items)
  if _is_namedtuple(tree):
    return type(tree)(*(map_leaves(fn, getattr(tree, f), f"{root}.{f}") for f in tree._fields))
  if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
    fields = [f for f in dataclasses.fields(tree) if f.init]
    return dataclasses.replace(
        tree, **{f.name: map_leaves(fn, getattr(tree, f.name), f"{root}.{f.name}") for f in fields})
  if isinstance(tree, (list, tuple)):
    return type(tree)(map_leaves(fn, v, f"{root}[{i}]") for i, v in enumerate(tree))
  jax = sys.modules.get("jax")
  if jax is not None:
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.tree_unflatten(
        treedef, [fn(root + jax.tree_util.keystr(p), leaf) for p, leaf in pairs])
  return fn(root, tree)
