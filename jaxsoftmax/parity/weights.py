"""Which torch parameter is which JAX parameter, in which layout: the weight map of a port.

Names: a torch name (``encoder.0.linear1.weight``) is matched to a JAX parameter path written the
same way (``encoder.0.linear1.kernel``: NNX attributes and list indices, Linen module names and
collection keys, or a plain pytree's keys, joined by dots). The last part may differ as Flax
names it: ``weight`` is ``kernel`` (Linear, Conv), ``scale`` (LayerNorm, BatchNorm, GroupNorm,
RMSNorm) or ``embedding`` (Embedding); ``running_mean``/``running_var`` are ``mean``/``var``.
``nnx.Sequential`` adds ``layers`` before an index. Anything else is named by the user, with
``rename`` rules (regular expressions applied in order to torch names) or a ``mapping``
``{jax path: torch name}``.

Layouts follow from the JAX name and the shapes: a 2-D ``kernel`` is torch's ``(out, in)``
transposed, an N-D ``kernel`` is torch's ``(O, I, *window)`` as ``(*window, I, O)``; everything
else keeps its layout. A mapping entry may give its own layout (``"same"``, ``"transpose"``,
``"conv"`` or a permutation).

Every value that crosses is copied (:mod:`jaxsoftmax._src.copies`), in both directions.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from jaxsoftmax._src.errors import ArgumentError

__all__ = ["Link", "WeightMappingError", "plan", "torch_tensors", "apply_rules", "sequential_name"]

_LEAF_NAMES = {"weight": ("kernel", "scale", "embedding", "weight"),
               "running_mean": ("mean", "running_mean"), "running_var": ("var", "running_var")}
_IGNORED_BUFFERS = ("num_batches_tracked",)


class WeightMappingError(ArgumentError):
  """The two models' parameters do not pair up; raised before anything runs, naming them all."""


@dataclasses.dataclass(frozen=True)
class Link:
  """``jax value = torch value.transpose(perm)`` (``perm`` None: the same layout)."""

  jax_name: str
  torch_name: str
  perm: tuple[int, ...] | None
  buffer: bool = False

  def to_jax(self, value):
    return value if self.perm is None else value.transpose(self.perm)

  def to_torch(self, value):
    return value if self.perm is None else value.transpose(tuple(np.argsort(self.perm)))


def _layout(jax_name: str, torch_shape: tuple, layout) -> tuple[int, ...] | None:
  if layout is None:  # inferred from the JAX name
    if jax_name.rsplit(".", 1)[-1] != "kernel" or len(torch_shape) < 2:
      return None
    layout = "transpose" if len(torch_shape) == 2 else "conv"
  if layout == "same":
    return None
  if layout == "transpose":
    return tuple(range(len(torch_shape)))[::-1]
  if layout == "conv":  # (O, I, *window) -> (*window, I, O)
    return (*range(2, len(torch_shape)), 1, 0)
  perm = tuple(int(i) for i in layout)
  if sorted(perm) != list(range(len(torch_shape))):
    raise ArgumentError(f"mapping[{jax_name!r}]: layout {layout!r} is not a permutation of "
                        f"torch's {len(torch_shape)} axes")
  return perm


def sequential_name(name: str) -> str:
  """The name as ``nnx.Sequential`` spells it: ``layers`` before each index."""
  return re.sub(r"(^|\.)(\d+)(?=\.|$)", r"\1layers.\2", name)


def _candidates(torch_name: str) -> list[str]:
  prefix, _, leaf = torch_name.rpartition(".")
  leaves = _LEAF_NAMES.get(leaf, (leaf,))
  prefixes = [prefix]
  sequential = sequential_name(prefix)
  if sequential != prefix:
    prefixes.append(sequential)
  return [f"{p}.{name}" if p else name for p in prefixes for name in leaves]


def apply_rules(name: str, rename: Sequence[tuple[str, str]]) -> str:
  for pattern, replacement in rename:
    name = re.sub(pattern, replacement, name)
  return name


def plan(jax_shapes: Mapping[str, tuple], torch_shapes: Mapping[str, tuple], *,
         buffers: Sequence[str] = (), rename: Sequence[tuple[str, str]] = (),
         mapping: Mapping[str, object] | None = None) -> tuple[list[Link], list[str]]:
  """Pairs every JAX parameter with a torch parameter or buffer.

  Returns:
    ``(links, notes)``: one :class:`Link` per JAX parameter, and notes on torch buffers left out.

  Raises:
    WeightMappingError: naming every JAX parameter without a torch match, every torch parameter
      without a JAX match, and every pair whose shapes disagree (both shapes, and the layout).
  """
  mapping = dict(mapping or {})
  for key in mapping:
    if key not in jax_shapes:
      raise WeightMappingError(f"mapping names JAX parameter {key!r}, which the JAX model does "
                               f"not have; it has {sorted(jax_shapes)}")
  links, taken, bad = [], {}, []
  for torch_name in torch_shapes:
    renamed = apply_rules(torch_name, rename)
    jax_name = next((c for c in _candidates(renamed) if c in jax_shapes and c not in mapping),
                    None)
    if jax_name is not None and jax_name not in taken:
      taken[jax_name] = (torch_name, None)
  for jax_name, entry in mapping.items():
    torch_name, layout = (entry, None) if isinstance(entry, str) else entry
    if torch_name not in torch_shapes:
      raise WeightMappingError(f"mapping[{jax_name!r}] names torch parameter {torch_name!r}, "
                               f"which the torch model does not have")
    taken[jax_name] = (torch_name, layout)
  for jax_name, (torch_name, layout) in taken.items():
    shape = tuple(torch_shapes[torch_name])
    perm = _layout(jax_name, shape, layout)
    want = shape if perm is None else tuple(shape[i] for i in perm)
    if want != tuple(jax_shapes[jax_name]):
      how = "" if perm is None else f", {want} in JAX's layout"
      bad.append(f"{jax_name} <- {torch_name}: torch {shape}{how}, JAX {tuple(jax_shapes[jax_name])}")
    links.append(Link(jax_name, torch_name, perm, torch_name in buffers))
  used = {link.torch_name for link in links}
  jax_left = sorted(set(jax_shapes) - set(taken))
  torch_left = sorted(n for n in torch_shapes if n not in used and n not in buffers)
  if jax_left or torch_left or bad:
    parts = []
    if jax_left:
      parts.append(f"JAX parameters with no torch match: {jax_left}")
    if torch_left:
      parts.append(f"torch parameters with no JAX match: {torch_left}")
    if bad:
      parts.append("shapes that disagree: " + "; ".join(bad))
    raise WeightMappingError(
        "the weights do not pair up:\n  " + "\n  ".join(parts) + "\nName the rest with "
        "rename=[(torch regex, replacement)] or mapping={jax path: torch name}.")
  notes = [f"torch buffers with no JAX counterpart, left as they are: {sorted(left)}"
           for left in [set(buffers) - used] if left]
  order = {name: i for i, name in enumerate(jax_shapes)}
  return sorted(links, key=lambda link: order[link.jax_name]), notes


def torch_tensors(torch_model) -> tuple[dict, list[str]]:
  """``({name: tensor}, buffer names)``: parameters and floating buffers, torch's order."""
  tensors = dict(torch_model.named_parameters())
  buffers = [n for n, b in torch_model.named_buffers()
             if b.is_floating_point() and n.rsplit(".", 1)[-1] not in _IGNORED_BUFFERS]
  named = dict(torch_model.named_buffers())
  tensors.update({n: named[n] for n in buffers})
  return tensors, buffers
