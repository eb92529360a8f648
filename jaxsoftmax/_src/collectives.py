"""Mesh axes for the sharded ops: validation, the one-collective combine, and gradient reduction.

Inside ``jax.shard_map`` an op given ``axis_name=`` sees one contiguous block of the class axis per
shard. Each shard reduces its block to row statistics (its max ``m_p``, its sum of exponentials
``s_p = sum_c exp(x_c - m_p)`` and whatever additive row sums the op needs), and one all-gather of
those O(rows) values lets every shard combine them locally with the online-softmax rule:

.. math:: M = \\max_p m_p,\\qquad S = \\sum_p s_p\\, e^{m_p - M}

exactly the unsharded ``max`` and ``sum(exp(x - max))`` (a shard whose row is empty or all ``-inf``
has ``m_p = -inf`` and contributes 0). Megatron-LM and torch's ``loss_parallel`` spend three
all-reduces here (max, sum, target logit); the all-gather carries the same numbers in one step.

Gradients: inside ``shard_map`` a custom VJP must return, for each input, a cotangent that varies
over exactly the mesh axes its input varies over (its ``manual_axis_type``). :func:`reduce_like`
sums each cotangent over the axes it varies over beyond its input's: ``dx`` over the class axes
(the rows' contributions from every vocabulary block), ``dw`` and class weights over the batch axes.
Cotangents that need the same reduction travel in one all-reduce.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxsoftmax._src import rows
from jaxsoftmax._src.errors import ArgumentError

__all__ = ["Axes", "axis_names", "size", "index", "gather_stats", "combine_max_sum",
           "batch_sum", "varying", "reduce_like", "vary_like", "reduce_rows", "Reduced", "untyped", "block_argmax", "combine_argmax",
           "block_labels", "check_axes", "entry_names", "explicit_layout", "laid_out",
           "run_on_mesh", "class_mask", "check_num_classes", "auto_mesh", "spec_of"]

Names = tuple[str, ...]


class Axes(tuple):
  """``(classes, batch, total)``: the mesh axes the class axis and the rows are split over, and the
  true number of classes when the blocks are padded (None: every class is real). Hashable."""

  __slots__ = ()

  def __new__(cls, classes: Names = (), batch: Names = (), total: int | None = None):
    return super().__new__(cls, (tuple(classes), tuple(batch), total))

  @property
  def classes(self) -> Names:
    return self[0]

  @property
  def batch(self) -> Names:
    return self[1]

  @property
  def total(self) -> int | None:
    return self[2]

  def num_classes(self, block: int) -> int:
    """The number of real classes, for blocks of ``block`` classes per shard."""
    return block * size(self.classes) if self.total is None else self.total

  def class_mask(self, block: int):
    """Which classes of this shard's block are real (None when all are); padding classes sit at
    the end of the class axis, past ``total``."""
    return class_mask(self.classes, block, self.total)

  def __bool__(self) -> bool:
    return bool(self[0] or self[1])


def _bound(name: str) -> bool:
  try:
    lax.axis_size(name)
  except NameError:
    return False
  return True


def axis_names(value, arg: str, op: str) -> Names:
  """``None``, a mesh axis name or a sequence of names, as a tuple of names bound by an enclosing
  ``shard_map`` (ArgumentError naming ``arg`` otherwise)."""
  if value is None:
    return ()
  names = (value,) if isinstance(value, str) else value
  if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
    raise TypeError(f"{op}: {arg} must be a mesh axis name or a tuple of names; got {value!r}.")
  names = tuple(names)
  if len(set(names)) != len(names):
    raise ArgumentError(f"{op}: {arg}={value!r} names an axis twice.")
  for name in names:
    if not _bound(name):
      raise ArgumentError(
          f"{op}: {arg}={value!r}, but mesh axis {name!r} is not bound here. Call the op inside "
          f"jax.shard_map over a mesh that has an axis {name!r} (or leave {arg} unset).")
  return names


def class_mask(names: Names, block: int, total: int | None):
  """``[block]`` booleans: this shard's classes whose global index is below ``total`` (None when
  ``total`` is None)."""
  if total is None:
    return None
  return index(names) * block + jnp.arange(block) < total


def check_num_classes(num_classes, block: int, names: Names, op: str) -> int | None:
  """Validates ``num_classes=`` (the true class count of padded blocks): an int in
  ``(block (P - 1), block P]``; None when it is ``block P`` (nothing padded) or not given."""
  if num_classes is None:
    return None
  if not names:
    raise ArgumentError(f"{op}: num_classes={num_classes!r} describes padded class blocks and needs "
                        "axis_name (the mesh axis the classes are split over).")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int):
    raise TypeError(f"{op}: num_classes must be an int; got {num_classes!r}.")
  full = block * size(names)
  if not full - block < num_classes <= full:
    raise ArgumentError(
        f"{op}: num_classes={num_classes} does not fit {size(names)} blocks of {block} classes "
        f"(padding must be less than one block: expected {full - block} < num_classes <= {full}).")
  return None if num_classes == full else num_classes


def check_axes(classes: Names, batch: Names, op: str, sequence_ok: bool = False) -> Axes:
  """The two sets of axes must be disjoint, except that with ``sequence_ok`` the rows may be
  split over every class axis too (sequence parallelism)."""
  both = set(classes) & set(batch)
  if both and sequence_ok:
    if not set(classes) <= set(batch):
      raise ArgumentError(f"{op}: sequence parallelism splits the rows over every class axis; "
                          f"axis_name={classes!r} but batch_axis_name={batch!r}.")
    return Axes(classes, batch)
  if both:
    raise ArgumentError(f"{op}: axis_name and batch_axis_name share {sorted(both)}; the classes "
                        "and the rows cannot be split over the same mesh axis here.")
  return Axes(classes, batch)


def size(names: Names) -> int:
  """The number of shards along ``names`` (1 for none)."""
  return lax.axis_size(names) if names else 1


def index(names: Names):
  """This shard's position along ``names`` (row-major over the tuple, as ``P((a, b))`` lays out
  blocks); 0 for none."""
  return lax.axis_index(names) if names else 0


def gather_stats(columns, names: Names):
  """One all-gather of row statistics: ``columns`` (each of the rows' shape) as ``[P, K, *rows]``,
  the same on every shard. With no names, ``[1, K, *rows]`` and no collective."""
  stacked = jnp.stack(columns)
  if not names:
    return stacked[None]
  if _UNTYPED.get() is not None:
    return lax.all_gather(stacked, names)
  return lax.all_gather(stacked, names, to="invarying")


def combine_max_sum(m, s):
  """``(M, S, scale)`` from per-shard maxima and sums ``[P, *rows]``: ``M = max_p m_p``,
  ``scale_p = exp(m_p - M)`` (0 where a shard's row is empty or all ``-inf``), ``S = sum_p
  scale_p s_p``. NaN in any shard's row makes ``M`` and ``S`` NaN, as the unsharded op."""
  big = jnp.max(m, axis=0, keepdims=True)
  scale = jnp.where(m == -jnp.inf, 0.0, jnp.exp(m - big))
  return big[0], jnp.sum(scale * s, axis=0), scale


def block_argmax(x, names: Names):
  """This block's row argmax along the last axis as a global class id, in ``x``'s dtype (a column
  for :func:`gather_stats`; exact below 2^24 classes in float32)."""
  return (jnp.argmax(x, axis=-1) + index(names) * x.shape[-1]).astype(x.dtype)


def combine_argmax(m, arg, big):
  """The global argmax from each block's row max ``m`` and :func:`block_argmax` ``arg``
  (``[P, *rows]``) and the global max ``big``: the first block holding ``big`` (blocks are in
  class order, so ties resolve to the first class, as ``torch.argmax``)."""
  first = jnp.argmax(m == big[None], axis=0)
  return jnp.take_along_axis(arg, first[None], axis=0)[0].astype(jnp.int32)


def batch_sum(values, names: Names):
  """``values`` (a scalar or a small vector) summed over the batch axes: one all-reduce."""
  return lax.psum(values, names) if names else values


# Inside custom_partitioning's lower_fn (Auto meshes) the per-shard program carries no
# manual-axis types: there every value is taken to vary over every axis in play, and the rules'
# ``like`` (what each input varies over) comes from the operands' PartitionSpecs instead.
_UNTYPED: contextvars.ContextVar[frozenset | None] = contextvars.ContextVar(
    "jaxsoftmax_untyped_axes", default=None)


@contextlib.contextmanager
def untyped(axes):
  """Within: collectives without manual-axis types, every value varying over ``axes``."""
  token = _UNTYPED.set(frozenset(axes))
  try:
    yield
  finally:
    _UNTYPED.reset(token)


def varying(x) -> frozenset:
  """The mesh axes ``x`` varies over (empty outside ``shard_map``)."""
  axes = _UNTYPED.get()
  return axes if axes is not None else jax.typeof(x).manual_axis_type.varying


def reduce_like(cotangents, like):
  """Each cotangent summed over the axes it varies over beyond the matching entry of ``like``
  (a frozenset of axes, or None for a None cotangent); made varying where it varies less.
  Cotangents that need the same sum share one all-reduce."""
  out = list(cotangents)
  groups: dict[tuple[str, ...], list[int]] = {}
  for i, (ct, axes) in enumerate(zip(cotangents, like)):
    if ct is None:
      continue
    extra = tuple(sorted(varying(ct) - axes))
    if extra:
      groups.setdefault(extra, []).append(i)
  for extra, members in groups.items():
    summed = lax.psum([out[i] for i in members], extra)
    for i, v in zip(members, summed):
      out[i] = v
  for i, (ct, axes) in enumerate(zip(out, like)):
    if ct is not None and axes - varying(ct) and _UNTYPED.get() is None:
      out[i] = lax.pcast(ct, tuple(sorted(axes - varying(ct))), to="varying")
  return out


def vary_like(a, *arrays):
  """``a`` made to vary over every mesh axis any of ``arrays`` varies over (scan carries)."""
  if _UNTYPED.get() is not None:
    return a
  axes = frozenset().union(*(varying(b) for b in arrays if b is not None)) - varying(a)
  return lax.pcast(a, tuple(sorted(axes)), to="varying") if axes else a


class Reduced(NamedTuple):
  """A sharded loss reduced: ``out`` (with the z-loss), the global ``denominator``, the loss without
  the z-loss ``ce`` and the global count of kept rows ``count`` (None without a z-loss)."""

  out: jax.Array
  denominator: jax.Array
  ce: jax.Array
  count: jax.Array | None


def reduce_rows(losses, denominator, reduction: str, batch: Names, z=None, kept=None) -> Reduced:
  """Per-row losses (and z-losses ``z`` over the ``kept`` rows) reduced over this shard's rows and
  then over the batch axes, in one all-reduce of ``[sum, denominator(, z sum, kept count)]`` for
  ``"mean"``; ``"none"`` stays local. See :func:`jaxsoftmax._src.xent.reduce_with_z`."""
  count = None
  if z is not None:
    count = jnp.sum(kept.astype(losses.dtype))
  if reduction == "none":
    return Reduced(losses if z is None else losses + z, denominator, losses, count)
  # Per-row losses finished before the sum, as xent.reduce does (rows.total_sum says why).
  total = rows.total_sum(losses)
  if reduction == "sum":
    if z is None:
      out = batch_sum(total, batch)
      return Reduced(out, denominator, out, count)
    both = batch_sum(jnp.stack([total, rows.total_sum(z)]), batch)
    return Reduced(both[0] + both[1], denominator, both[0], count)
  parts = [total, jnp.asarray(denominator, total.dtype)]
  if z is not None:
    parts += [rows.total_sum(z), count]
  both = batch_sum(jnp.stack(parts), batch)
  ce = both[0] / both[1]
  if z is None:
    return Reduced(ce, both[1], ce, None)
  return Reduced(ce + both[2] / both[3], both[1], ce, both[3])


def block_labels(labels, names: Names, block: int):
  """``(local, owns)``: global class ids as indices into this shard's block of ``block`` classes,
  clipped into it, and whether this shard holds each label's class."""
  local = labels - index(names) * block
  owns = (local >= 0) & (local < block)
  return jnp.clip(local, 0, max(block - 1, 0)), owns


# ------------------------------------------------------------------------------------------------
# Plain jit over an Explicit mesh: the ops read the layout from the argument's type and run the
# sharded path inside a shard_map they open themselves.


def entry_names(entry) -> Names:
  """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def explicit_layout(x):
  """``(mesh, spec)`` when ``x`` is laid out over Explicit mesh axes (outside any shard_map), with
  ``spec`` one entry per dimension; None otherwise (unsharded, Auto axes, or inside shard_map)."""
  aval = jax.typeof(x)
  sharding = getattr(aval, "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or not getattr(mesh, "axis_names", ()) or varying(x):
    return None
  explicit = {n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit}
  spec = tuple(sharding.spec) + (None,) * (aval.ndim - len(sharding.spec))
  if not any(set(entry_names(e)) & explicit for e in spec):
    return None
  return mesh, spec


def laid_out(a, spec):
  """``a`` with the PartitionSpec ``spec`` (resharded only if it differs)."""
  if a is None:
    return None
  current = tuple(jax.typeof(a).sharding.spec)
  current += (None,) * (a.ndim - len(current))
  return a if current == tuple(spec) else jax.reshard(a, P(*spec))


def run_on_mesh(fn, mesh, args, specs, out_spec):
  """``fn(*args)`` inside a shard_map over ``mesh``; None arguments pass through untouched.
  ``out_spec``: the entries of one output's PartitionSpec, or a pytree of ``PartitionSpec``."""
  present = [i for i, a in enumerate(args) if a is not None]

  def body(*given):
    full = [None] * len(args)
    for i, a in zip(present, given):
      full[i] = a
    return fn(*full)

  placed = [laid_out(args[i], specs[i]) for i in present]
  return jax.shard_map(body, mesh=mesh, in_specs=tuple(P(*specs[i]) for i in present),
                       out_specs=P(*out_spec) if _is_entries(out_spec) else out_spec)(*placed)


def _is_entries(spec) -> bool:
  """Whether ``spec`` is one PartitionSpec's entries (names, None, tuples of names), not a pytree
  of specs."""
  return type(spec) is tuple and all(
      e is None or isinstance(e, str) or (type(e) is tuple and all(isinstance(n, str) for n in e))
      for e in spec)


def auto_mesh(x):
  """The mesh of ``x`` when it is laid out over Auto axes of more than one device (GSPMD decides
  the partitioning: the ops then partition themselves with ``custom_partitioning``); else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or not getattr(mesh, "axis_names", ()) or varying(x) or mesh.size == 1:
    return None
  if any(t != AxisType.Auto for t in mesh.axis_types):
    return None
  return mesh


def spec_of(shape, ndim: int) -> tuple:
  """One PartitionSpec entry per dimension of an operand in a partition callback."""
  spec = tuple(shape.sharding.spec)
  return spec + (None,) * (ndim - len(spec))
