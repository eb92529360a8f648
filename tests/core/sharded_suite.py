"""The sharded ops on 8 host devices: run by tests/core/test_sharded.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (skipped when fewer devices are present).

Every sharded result is compared with the unsharded op on the concatenated arrays and with torch
on the same arrays, values and gradients (one random cotangent), with the project's one tolerance
table. Collective counts and sizes are read from the compiled HLO.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsoftmax
from jaxsoftmax.parity import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (run through "
                                "tests/core/test_sharded.py)")

EXPLICIT, AUTO = AxisType.Explicit, AxisType.Auto
MESHES = {"8": ((8,), ("tp",)), "2x4": ((2, 4), ("dp", "tp")), "4x2": ((4, 2), ("dp", "tp"))}


def make_mesh(name="2x4", axis_type=EXPLICIT):
  shape, names = MESHES[name]
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


def batch_of(mesh):
  return "dp" if "dp" in mesh.axis_names else None


def run(fn, mesh, args, specs, out_spec, argnums, cotangent_seed=0):
  """``fn`` under shard_map and jit: its output and the gradients (a seeded cotangent) w.r.t.
  ``args[i]`` for i in ``argnums``."""
  body = jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=out_spec)
  with jax.set_mesh(mesh):
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    # Blocked before the next dispatch: one execution in flight at a time on host devices (see
    # examples/11_sharded_lm_head.py for the starvation that queued ones can cause).
    out = jax.block_until_ready(jax.jit(body)(*placed))
    cot = np.random.default_rng(cotangent_seed).normal(size=out.shape).astype(np.float32)

    def loss(*diff):
      full = list(placed)
      for i, d in zip(argnums, diff):
        full[i] = d
      y = body(*full)
      return jnp.sum(y.astype(jnp.float32) * cot)

    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(argnums)))))(
        *[placed[i] for i in argnums])
  grads = [np.asarray(g.astype(jnp.float32)) for g in grads]
  return np.asarray(out.astype(jnp.float32)), grads, cot


def full_grads(fn, args, argnums, cot):
  """The unsharded op's output and gradients with the same cotangent."""
  def loss(*diff):
    full = list(args)
    for i, d in zip(argnums, diff):
      full[i] = d
    return jnp.sum(fn(*full).astype(jnp.float32) * cot)
  out = fn(*args)
  grads = jax.grad(loss, argnums=tuple(range(len(argnums))))(*[args[i] for i in argnums])
  return np.asarray(out.astype(jnp.float32)), [np.asarray(g.astype(jnp.float32)) for g in grads]


def torch_grads(fn, args, argnums, cot):
  """torch's output and gradients of ``fn`` on the same arrays (float inputs in argnums)."""
  ts = []
  for i, a in enumerate(args):
    a = np.asarray(a)
    t = torch.from_numpy(a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a.copy())
    if i in argnums:
      t.requires_grad_(True)
    ts.append(t)
  out = fn(*ts)
  out.backward(torch.from_numpy(cot).reshape(out.shape))
  return out.detach().numpy(), [ts[i].grad.numpy() for i in argnums]


def check_all(sharded, full, reference, dtype="float32", names=("out",)):
  out, grads = sharded
  for label, (ref_out, ref_grads) in (("unsharded", full), ("torch", reference)):
    if ref_out is None:
      continue
    assert_close(out, ref_out, dtype, f"value vs {label}")
    for k, (g, r) in enumerate(zip(grads, ref_grads)):
      if r is not None:
        assert_close(g, r, dtype, f"grad {names[k] if k < len(names) else k} vs {label}")


# ------------------------------------------------------------------------------------------------
# The family: softmax, log_softmax, softmin with the class axis split.

FAMILY = {"softmax": (jaxsoftmax.softmax, F.softmax), "log_softmax": (jaxsoftmax.log_softmax,
                                                                      F.log_softmax),
          "softmin": (jaxsoftmax.softmin, F.softmin)}


def logits(rows=8, classes=16, seed=0, dtype=np.float32):
  x = np.random.default_rng(seed).normal(size=(rows, classes)).astype(dtype)
  x[0, : classes // 2] = -np.inf  # a row whose first blocks are all -inf
  x[1, 3] = 40.0  # a dominant logit on one shard
  return x


# Every op on dp x tp; one op on every other mesh and axis type (compiles are the suite's cost).
FAMILY_CASES = ([(name, "2x4", EXPLICIT) for name in FAMILY]
                + [("log_softmax", m, t) for m, t in (("8", EXPLICIT), ("4x2", EXPLICIT),
                                                      ("2x4", AUTO), ("8", AUTO), ("4x2", AUTO))])


@pytest.mark.parametrize(("name", "mesh_name", "axis_type"), FAMILY_CASES,
                         ids=[f"{n}-{m}-{t.name.lower()}" for n, m, t in FAMILY_CASES])
def test_family_equals_unsharded_and_torch(name, mesh_name, axis_type):
  op, torch_op = FAMILY[name]
  mesh = make_mesh(mesh_name, axis_type)
  x = logits()
  spec = P(batch_of(mesh), "tp")
  out, grads, cot = run(lambda x: op(x, axis_name="tp"), mesh, [x], [spec], spec, (0,))
  check_all((out, grads), full_grads(lambda x: op(x), [jnp.asarray(x)], (0,), cot),
            torch_grads(lambda x: torch_op(x, dim=-1), [x], (0,), cot))


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_family_temperature_and_mask(temperature):
  mesh = make_mesh()
  x = logits()
  mask = np.random.default_rng(1).random(x.shape) > 0.3
  mask[2] = False  # a row masked everywhere
  mask[3, :8] = False  # masked on half of the shards
  spec = P("dp", "tp")
  for op in (jaxsoftmax.softmax, jaxsoftmax.log_softmax):
    fn = functools.partial(op, temperature=temperature)
    out, grads, cot = run(lambda x, m: fn(x, where=m, axis_name="tp"), mesh, [x, mask],
                          [spec, spec], spec, (0,))
    ref = full_grads(lambda x, m: fn(x, where=m), [jnp.asarray(x), jnp.asarray(mask)], (0,), cot)
    check_all((out, grads), ref, (None, None))


def test_family_class_axis_first():
  mesh = make_mesh()
  x = logits().T.copy()  # classes along axis 0
  spec = P("tp", "dp")
  out, grads, cot = run(lambda x: jaxsoftmax.log_softmax(x, axis=0, axis_name="tp"), mesh, [x],
                        [spec], spec, (0,))
  check_all((out, grads), full_grads(lambda x: jaxsoftmax.log_softmax(x, axis=0),
                                     [jnp.asarray(x)], (0,), cot),
            torch_grads(lambda x: F.log_softmax(x, dim=0), [x], (0,), cot))


def test_family_bfloat16():
  mesh = make_mesh()
  x = jnp.asarray(logits(), jnp.bfloat16)
  spec = P("dp", "tp")
  for op in (jaxsoftmax.softmax, jaxsoftmax.log_softmax):
    out, grads, cot = run(lambda x: op(x, axis_name="tp"), mesh, [x], [spec], spec, (0,))
    check_all((out, grads), full_grads(op, [x], (0,), cot), (None, None), dtype="bfloat16")


def test_family_grad_of_grad_and_vmap_inside_shard_map():
  mesh = make_mesh()
  x = logits()
  x[0] = 0.5  # finite everywhere for second derivatives
  c = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  spec = P("dp", "tp")

  def local_loss(x, c):
    return lax.psum(jnp.sum(jaxsoftmax.log_softmax(x, axis_name="tp") ** 2 * c), ("dp", "tp"))

  def second(x, c):  # d/dx of <grad f(x), c>: a Hessian-vector product, inside shard_map
    return jax.grad(lambda x: lax.psum(jnp.sum(jax.grad(local_loss)(x, c) * c), ("dp", "tp")))(x)

  def vmapped(x):
    return jax.vmap(lambda row: jaxsoftmax.softmax(row, axis_name="tp"))(x)

  body = jax.shard_map(second, mesh=mesh, in_specs=(spec, spec), out_specs=spec)
  vbody = jax.shard_map(vmapped, mesh=mesh, in_specs=spec, out_specs=spec)
  with jax.set_mesh(mesh):
    xs, cs = (jax.device_put(a, NamedSharding(mesh, spec)) for a in (x, c))
    hvp, vm = jax.jit(body)(xs, cs), jax.jit(vbody)(xs)

  def full_loss(x):
    return jnp.sum(jaxsoftmax.log_softmax(x) ** 2 * c)

  expected = jax.grad(lambda x: jnp.sum(jax.grad(full_loss)(x) * c))(jnp.asarray(x))
  assert_close(hvp, expected, "float32", "Hessian-vector product")
  assert_close(vm, jaxsoftmax.softmax(jnp.asarray(x)), "float32", "vmap")


# ------------------------------------------------------------------------------------------------
# cross_entropy and nll_loss: classes over tp, rows over dp, every option.

N, C = 16, 32


def labels_for(n=N, classes=C, ignore=None, seed=3):
  y = np.random.default_rng(seed).integers(0, classes, size=n)
  y[:4] = [classes // 2, classes // 4 - 1, 0, classes - 1]  # on shard boundaries (tp=4)
  if ignore is not None:
    y[4] = ignore
    y[8:10] = ignore  # with dp=2, rows 8..15 are one dp shard: two of its rows ignored
  return y


def ce_case(reduction, smoothing, weighted, ignore, probs, mesh_name="2x4", dtype=np.float32):
  mesh = make_mesh(mesh_name)
  batch = batch_of(mesh)
  x = logits(N, C).astype(dtype)
  if smoothing > 0.0:  # smoothing over a -inf logit makes the loss inf (as in torch): keep finite
    x[np.isinf(x)] = -30.0
  weight = np.random.default_rng(4).uniform(0.5, 2.0, size=C).astype(np.float32)
  if probs:
    t = np.asarray(jax.nn.softmax(np.random.default_rng(5).normal(size=(N, C)) * 2), np.float32)
    t_spec = P(batch, "tp")
  else:
    t, t_spec = labels_for(ignore=ignore), P(batch)
  kw = dict(reduction=reduction, label_smoothing=smoothing)
  if ignore is not None:
    kw["ignore_index"] = ignore
  args = [x, t] + ([weight] if weighted else [])
  specs = [P(batch, "tp"), t_spec] + ([P("tp")] if weighted else [])
  out_spec = P(batch) if reduction == "none" else P()

  def sharded(x, t, w=None):
    return jaxsoftmax.cross_entropy(x, t, weight=w, axis_name="tp", batch_axis_name=batch, **kw)

  def full(x, t, w=None):
    return jaxsoftmax.cross_entropy(x, t, weight=w, **kw)

  def reference(x, t, w=None):
    tw = None if w is None else w.detach()
    return F.cross_entropy(x, t, weight=tw, **{"ignore_index": -100, **kw})

  argnums = (0, 1) if probs else (0,)
  all_argnums = argnums + ((2,) if weighted else ())
  out, grads, cot = run(sharded, mesh, args, specs, out_spec, all_argnums)
  full_out = full_grads(full, [jnp.asarray(a) for a in args], all_argnums, cot)
  torch_out = torch_grads(reference, args, argnums, cot)
  return (out, grads), full_out, torch_out


# Option combinations chosen so that every pair of (reduction, smoothing, weight, ignore_index)
# values meets at least once: the full product (36 compiles) adds minutes, not coverage of pairs.
LABEL_CASES = [("mean", 0.0, False, None), ("mean", 0.2, True, -100), ("mean", 0.2, False, 7),
               ("sum", 0.0, True, 7), ("sum", 0.2, False, -100), ("sum", 0.2, True, None),
               ("none", 0.0, True, -100), ("none", 0.2, True, 7), ("none", 0.0, False, None)]


@pytest.mark.parametrize(("reduction", "smoothing", "weighted", "ignore"), LABEL_CASES)
def test_cross_entropy_labels(reduction, smoothing, weighted, ignore):
  sharded, full, reference = ce_case(reduction, smoothing, weighted, ignore, probs=False)
  check_all(sharded, full, (None, None))  # the weight gradient: against the unsharded op
  check_all((sharded[0], sharded[1][:1]), reference, (None, None))


@pytest.mark.parametrize(("reduction", "smoothing", "weighted"),
                         [("mean", 0.0, False), ("mean", 0.2, True), ("sum", 0.2, False),
                          ("sum", 0.0, True), ("none", 0.2, True), ("none", 0.0, False)])
def test_cross_entropy_probabilities(reduction, smoothing, weighted):
  sharded, full, reference = ce_case(reduction, smoothing, weighted, None, probs=True)
  check_all(sharded, full, (None, None))
  check_all((sharded[0], sharded[1][:2]), reference, (None, None))


@pytest.mark.parametrize("mesh_name", ["8", "4x2"])
def test_cross_entropy_other_meshes(mesh_name):
  sharded, full, reference = ce_case("mean", 0.1, True, -100, probs=False, mesh_name=mesh_name)
  check_all(sharded, full, (None, None))
  check_all((sharded[0], sharded[1][:1]), reference, (None, None))


def test_cross_entropy_bfloat16():
  (out, grads), full, _ = ce_case("mean", 0.1, True, -100, probs=False)
  check_all((out, grads), full, (None, None))
  mesh = make_mesh()
  x = jnp.asarray(logits(N, C), jnp.bfloat16)
  y = labels_for()
  out, grads, cot = run(lambda x, y: jaxsoftmax.cross_entropy(x, y, axis_name="tp",
                                                              batch_axis_name="dp"),
                        mesh, [x, y], [P("dp", "tp"), P("dp")], P(), (0,))
  check_all((out, grads), full_grads(jaxsoftmax.cross_entropy, [x, jnp.asarray(y)], (0,), cot),
            (None, None), dtype="bfloat16")


def test_cross_entropy_all_rows_of_a_shard_ignored():
  mesh = make_mesh()
  x, y = logits(N, C), labels_for()
  y[N // 2:] = -100  # the second dp shard has no kept row; the global mean is still defined
  spec = [P("dp", "tp"), P("dp")]
  out, grads, cot = run(lambda x, y: jaxsoftmax.cross_entropy(
      x, y, ignore_index=-100, axis_name="tp", batch_axis_name="dp"), mesh, [x, y], spec, P(), (0,))
  assert np.all(grads[0][N // 2:] == 0.0)
  check_all((out, grads), full_grads(lambda x, y: jaxsoftmax.cross_entropy(x, y, ignore_index=-100),
                                     [jnp.asarray(x), jnp.asarray(y)], (0,), cot),
            torch_grads(lambda x, y: F.cross_entropy(x, y), [x, y], (0,), cot))


@pytest.mark.parametrize(("reduction", "weighted"),
                         [("mean", True), ("mean", False), ("sum", False), ("none", True)])
def test_nll_loss(reduction, weighted):
  mesh = make_mesh()
  lp = np.array(jax.nn.log_softmax(logits(N, C)), np.float32)
  lp[0] = np.array(jax.nn.log_softmax(np.arange(C, dtype=np.float32)))
  y = labels_for(ignore=-100)
  weight = np.random.default_rng(4).uniform(0.5, 2.0, size=C).astype(np.float32)
  args = [lp, y] + ([weight] if weighted else [])
  specs = [P("dp", "tp"), P("dp")] + ([P("tp")] if weighted else [])
  out_spec = P("dp") if reduction == "none" else P()
  kw = dict(reduction=reduction, ignore_index=-100)
  argnums = (0, 2) if weighted else (0,)
  out, grads, cot = run(lambda lp, y, w=None: jaxsoftmax.nll_loss(
      lp, y, weight=w, axis_name="tp", batch_axis_name="dp", **kw), mesh, args, specs, out_spec,
      argnums)
  full = full_grads(lambda lp, y, w=None: jaxsoftmax.nll_loss(lp, y, weight=w, **kw),
                    [jnp.asarray(a) for a in args], argnums, cot)
  ref = torch_grads(lambda lp, y, w=None: F.nll_loss(
      lp, y, weight=None if w is None else w.detach(), **kw), args, (0,), cot)
  check_all((out, grads), full, (None, None))
  check_all((out, grads[:1]), ref, (None, None))


# ------------------------------------------------------------------------------------------------
# linear_cross_entropy: w's V axis over tp, rows over dp.

D, V = 8, 40  # V / 4 = 10 per shard: the chunks and blocks are not powers of two


def lce_arrays(n=24, seed=6, ignore=-100):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, D)).astype(np.float32)
  w = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
  b = rng.normal(size=(V,)).astype(np.float32)
  y = rng.integers(0, V, size=n)
  y[:4] = [9, 10, 0, V - 1]  # shard boundaries at tp=4
  if ignore is not None:
    y[5] = ignore
    y[12:18] = ignore
  weight = rng.uniform(0.5, 2.0, size=V).astype(np.float32)
  return x, w, b, y, weight


LINEAR_CASES = [("mean", 0.2, True, -100), ("mean", 0.0, False, None), ("sum", 0.2, False, -100),
                ("sum", 0.0, True, None), ("none", 0.2, True, -100), ("none", 0.0, False, -100),
                ("none", 0.2, False, None)]


@pytest.mark.parametrize(("reduction", "smoothing", "weighted", "ignore"), LINEAR_CASES)
def test_linear_cross_entropy(reduction, smoothing, weighted, ignore):
  mesh = make_mesh()
  x, w, b, y, weight = lce_arrays(ignore=ignore)
  kw = dict(reduction=reduction, label_smoothing=smoothing, chunk_size=5)
  if ignore is not None:
    kw["ignore_index"] = ignore
  cw = weight if weighted else np.ones_like(weight)
  args = [x, w, b, y, cw]
  specs = [P("dp", None), P(None, "tp"), P("tp"), P("dp"), P("tp")]
  out_spec = P("dp") if reduction == "none" else P()

  def sharded(x, w, b, y, cw):
    return jaxsoftmax.linear_cross_entropy(x, w, y, bias=b, weight=cw if weighted else None,
                                           axis_name="tp", batch_axis_name="dp", **kw)

  def full(x, w, b, y, cw):
    return jaxsoftmax.linear_cross_entropy(x, w, y, bias=b, weight=cw if weighted else None, **kw)

  def reference(x, w, b, y, cw):
    kw_t = {k: v for k, v in kw.items() if k != "chunk_size"}
    return F.cross_entropy(x @ w + b, y, weight=cw.detach() if weighted else None, **kw_t)

  argnums = (0, 1, 2, 4) if weighted else (0, 1, 2)
  out, grads, cot = run(sharded, mesh, args, specs, out_spec, argnums)
  check_all((out, grads), full_grads(full, [jnp.asarray(a) for a in args], argnums, cot),
            (None, None), names=("x", "w", "bias", "weight"))
  check_all((out, grads[:3]), torch_grads(reference, args, (0, 1, 2), cot), (None, None),
            names=("x", "w", "bias"))


def test_linear_cross_entropy_vocab_only_mesh_and_bfloat16():
  mesh = make_mesh("8")
  x, w, b, y, _ = lce_arrays(ignore=None)
  w = np.concatenate([w, w[:, :8] * 0.5], axis=1)  # V = 48: 6 per shard
  b = np.concatenate([b, b[:8]])
  specs = [P(None, None), P(None, "tp"), P("tp"), P(None)]
  for dtype, name in ((np.float32, "float32"), (jnp.bfloat16, "bfloat16")):
    args = [jnp.asarray(a, dtype) if a.dtype.kind == "f" else a for a in (x, w, b, y)]
    out, grads, cot = run(lambda x, w, b, y: jaxsoftmax.linear_cross_entropy(
        x, w, y, bias=b, chunk_size=8, axis_name="tp"), mesh, args, specs, P(), (0, 1, 2))
    full = full_grads(lambda x, w, b, y: jaxsoftmax.linear_cross_entropy(x, w, y, bias=b),
                      args, (0, 1, 2), cot)
    check_all((out, grads), full, (None, None), dtype=name)


# ------------------------------------------------------------------------------------------------
# Communication, read from the compiled HLO.

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")


def collectives_of(compiled_text):
  """``[(kind, elements)]`` for every collective in an HLO module (async starts counted once)."""
  found = []
  for line in compiled_text.splitlines():
    for kind in COLLECTIVES:
      match = re.search(rf"=\s*(.*?)\s{kind}(-start)?\(", line)
      if match:
        shapes = re.findall(r"\w+\[([\d,]*)\]", match.group(1))
        found.append((kind, max(int(np.prod([int(d) for d in s.split(",") if d] or [1]))
                                for s in shapes)))
  return found


def compiled(fn, mesh, args, specs):
  with jax.set_mesh(mesh):
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    return jax.jit(fn).lower(*placed).compile()


WIDE = 256  # classes in the communication tests: a device's block (8 x 64) dwarfs the row stats


def test_collectives_cross_entropy_one_gather_forward_none_backward():
  mesh = make_mesh()
  x, y = logits(N, WIDE), labels_for(classes=WIDE)
  specs = [P("dp", "tp"), P("dp")]
  block = (N // 2) * (WIDE // 4)

  def forward(batch, reduction, out):
    return jax.shard_map(lambda x, y: jaxsoftmax.cross_entropy(
        x, y, label_smoothing=0.1, reduction=reduction, axis_name="tp", batch_axis_name=batch),
        mesh=mesh, in_specs=tuple(specs), out_specs=out)

  # Per-row losses, class axis split: exactly one all-gather, of a few numbers per row.
  fwd = collectives_of(compiled(forward(None, "none", P("dp")), mesh, [x, y], specs).as_text())
  assert [k for k, _ in fwd] == ["all-gather"], fwd
  assert fwd[0][1] <= 4 * 6 * (N // 2) < block, fwd  # P x 6 statistics x local rows
  # value_and_grad of the global mean: that gather, one all-reduce of [sum, denominator], and
  # nothing in the backward.
  vg = collectives_of(compiled(jax.value_and_grad(forward("dp", "mean", P())), mesh, [x, y],
                               specs).as_text())
  assert sorted(k for k, _ in vg) == ["all-gather", "all-reduce"], vg
  assert max(e for _, e in vg) < block, vg


def test_collectives_softmax_backward_one_row_sized_all_reduce():
  mesh = make_mesh()
  x = logits(N, WIDE)
  spec = P("dp", "tp")
  for op in (jaxsoftmax.softmax, jaxsoftmax.log_softmax):
    body = jax.shard_map(lambda x: op(x, axis_name="tp"), mesh=mesh, in_specs=spec,
                         out_specs=spec)
    found = collectives_of(compiled(lambda x: jax.vjp(body, x)[1](x)[0], mesh, [x], [spec])
                           .as_text())
    assert sorted(k for k, _ in found) == ["all-gather", "all-reduce"], found
    gathered, reduced = dict(found)["all-gather"], dict(found)["all-reduce"]
    assert gathered == 4 * 2 * (N // 2) and reduced == N // 2, found  # (m, s) per row; one sum


def test_collectives_linear_cross_entropy_at_most_four():
  mesh = make_mesh()
  n = 64
  x, w, b, y, weight = lce_arrays(n=n)
  specs = [P("dp", None), P(None, "tp"), P("tp"), P("dp"), P("tp")]
  body = jax.shard_map(lambda x, w, b, y, cw: jaxsoftmax.linear_cross_entropy(
      x, w, y, bias=b, weight=cw, ignore_index=-100, label_smoothing=0.1, chunk_size=8,
      axis_name="tp", batch_axis_name="dp"), mesh=mesh, in_specs=tuple(specs), out_specs=P())
  vg = jax.value_and_grad(body, argnums=(0, 1, 2, 4))
  found = collectives_of(compiled(vg, mesh, [x, w, b, y, weight], specs).as_text())
  assert len(found) <= 4, found
  assert [k for k, _ in found].count("all-gather") == 1, found
  x_block = (n // 2) * D  # one device's block of x: the largest thing any collective carries
  assert max(e for _, e in found) <= max(x_block, D * V // 4 + 2 * V // 4), found
  assert all(e < (n // 2) * (V // 4) or kind == "all-reduce" for kind, e in found), found


def test_linear_cross_entropy_memory_falls_with_the_vocabulary_split():
  n, d, v = 512, 64, 8192
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=(d, v)).astype(np.float32) * 0.05
  y = rng.integers(0, v, size=n)
  temps = {}
  for p in (1, 2, 4, 8):
    mesh = jax.make_mesh((p,), ("tp",), axis_types=(EXPLICIT,), devices=jax.devices()[:p])
    specs = [P(None, None), P(None, "tp"), P(None)]
    body = jax.shard_map(lambda x, w, y: jaxsoftmax.linear_cross_entropy(
        x, w, y, chunk_size=128, axis_name="tp"), mesh=mesh, in_specs=tuple(specs),
        out_specs=P())
    stats = compiled(jax.value_and_grad(body, argnums=(0, 1)), mesh, [x, w, y],
                     specs).memory_analysis()
    temps[p] = stats.temp_size_in_bytes
  # Chunk logits (128 x V/P), dw (d x V/P) and its accumulator fall as 1/P; dx (n x d) does not.
  assert temps[2] < 0.65 * temps[1] and temps[4] < 0.65 * temps[2], temps
  assert temps[8] < 0.25 * temps[1], temps


# ------------------------------------------------------------------------------------------------
# Bad input: errors that name the argument.


def test_unbound_axis_name_is_a_clear_error():
  with pytest.raises(ValueError, match="axis_name='tp'.*not bound"):
    jaxsoftmax.softmax(jnp.ones((2, 4)), axis_name="tp")
  with pytest.raises(ValueError, match="batch_axis_name='dp'.*not bound"):
    jaxsoftmax.cross_entropy(jnp.ones((2, 4)), jnp.zeros(2, jnp.int32), batch_axis_name="dp")
  with pytest.raises(TypeError, match="axis_name must be a mesh axis name"):
    jaxsoftmax.log_softmax(jnp.ones((2, 4)), axis_name=3)


def _inside(mesh, fn, *args, specs):
  body = jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=P())
  with jax.set_mesh(mesh):
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    return jax.jit(body)(*placed)


def test_axis_name_on_a_layout_that_cannot_honour_it():
  mesh = make_mesh()
  x = np.ones((8, 16), np.float32)
  spec = [P("dp", "tp")]
  with pytest.raises(ValueError, match="splits one class axis"):
    _inside(mesh, lambda x: jnp.sum(jaxsoftmax.softmax(x, axis=None, axis_name="tp")), x,
            specs=spec)
  with pytest.raises(ValueError, match="implementation='pallas' cannot take axis_name"):
    _inside(mesh, lambda x: jnp.sum(jaxsoftmax.softmax(x, axis_name="tp",
                                                       implementation="pallas")), x, specs=spec)
  with pytest.raises(ValueError, match="share"):
    _inside(mesh, lambda x: jaxsoftmax.cross_entropy(x, jnp.zeros(4, jnp.int32), axis_name="tp",
                                                     batch_axis_name="tp"), x, specs=spec)


def test_weight_must_be_the_local_block():
  mesh = make_mesh()
  x, y = logits(N, C), labels_for()
  weight = np.ones(C, np.float32)  # the whole weight, given replicated: wrong with axis_name
  with pytest.raises(ValueError, match="weight"):
    _inside(mesh, lambda x, y, w: jaxsoftmax.cross_entropy(x, y, weight=w, axis_name="tp",
                                                           batch_axis_name="dp"),
            x, y, weight, specs=[P("dp", "tp"), P("dp"), P(None)])


def test_out_of_range_labels_are_nan_not_silent():
  mesh = make_mesh()
  x, y = logits(N, C), labels_for()
  y[6] = C  # one past the last class: no shard holds it
  out = _inside(mesh, lambda x, y: jaxsoftmax.cross_entropy(x, y, axis_name="tp",
                                                            batch_axis_name="dp"),
                x, y, specs=[P("dp", "tp"), P("dp")])
  assert np.isnan(out)



# ------------------------------------------------------------------------------------------------
# The torch mirror takes the same keywords (torch's dim 1 and [V, D] weight).


def test_mirror_functional_and_modules():
  from jaxsoftmax import functional as JF
  from jaxsoftmax import nn as jnn

  mesh = make_mesh()
  x, y = logits(N, C), labels_for(ignore=-100)
  specs = [P("dp", "tp"), P("dp")]
  cases = {
      "F.cross_entropy": (lambda x, y: JF.cross_entropy(x, y, label_smoothing=0.1, axis_name="tp",
                                                        batch_axis_name="dp"),
                          lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1)),
      "nn.CrossEntropyLoss": (lambda x, y: jnn.CrossEntropyLoss(
          reduction="sum", axis_name="tp", batch_axis_name="dp")(x, y),
                              lambda x, y: F.cross_entropy(x, y, reduction="sum")),
      "F.nll_loss": (lambda x, y: JF.nll_loss(JF.log_softmax(x, 1, axis_name="tp"), y,
                                              axis_name="tp", batch_axis_name="dp"),
                     lambda x, y: F.nll_loss(F.log_softmax(x, 1), y)),
  }
  for name, (sharded, reference) in cases.items():
    out, grads, cot = run(sharded, mesh, [x, y], specs, P(), (0,))
    check_all((out, grads), (None, None), torch_grads(reference, [x, y], (0,), cot),
              names=(name,))
  module = jnn.Softmax(dim=1, axis_name="tp")
  out, grads, cot = run(module, mesh, [x], [specs[0]], specs[0], (0,))
  check_all((out, grads), (None, None), torch_grads(lambda x: F.softmax(x, 1), [x], (0,), cot))
  # linear_cross_entropy with torch's [V, D] weight split over its first axis.
  xs, w, b, ys, _ = lce_arrays()
  wt = np.ascontiguousarray(w.T)
  out, grads, cot = run(lambda x, w, b, y: JF.linear_cross_entropy(
      x, w, y, linear_bias=b, axis_name="tp", batch_axis_name="dp"), mesh, [xs, wt, b, ys],
      [P("dp", None), P("tp", None), P("tp"), P("dp")], P(), (0, 1, 2))
  check_all((out, grads), (None, None), torch_grads(
      lambda x, w, b, y: F.cross_entropy(x @ w.T + b, y), [xs, wt, b, ys], (0, 1, 2), cot))


# ------------------------------------------------------------------------------------------------
# Plain jit over an Explicit mesh: no axis_name; the ops read the layout from the types.


def test_plain_jit_explicit_mesh_reads_the_layout():
  mesh = make_mesh()
  x, y = logits(N, C), labels_for(ignore=-100)
  xs, w, b, ys, weight = lce_arrays()
  with jax.set_mesh(mesh):
    xl = jax.device_put(x, NamedSharding(mesh, P("dp", "tp")))
    yl = jax.device_put(y, NamedSharding(mesh, P("dp")))
    xsl = jax.device_put(xs, NamedSharding(mesh, P("dp", None)))
    wl = jax.device_put(w, NamedSharding(mesh, P(None, "tp")))
    bl = jax.device_put(b, NamedSharding(mesh, P("tp")))
    ysl = jax.device_put(ys, NamedSharding(mesh, P("dp")))

    def losses(x, y, xs, w, b, ys):
      return (jaxsoftmax.cross_entropy(x, y, ignore_index=-100, label_smoothing=0.1)
              + jaxsoftmax.nll_loss(jaxsoftmax.log_softmax(x), y, ignore_index=-100)
              + jaxsoftmax.linear_cross_entropy(xs, w, ys, bias=b, ignore_index=-100))

    vg = jax.jit(jax.value_and_grad(losses, argnums=(0, 2, 3, 4)))
    value, grads = vg(xl, yl, xsl, wl, bl, ysl)
    text = vg.lower(xl, yl, xsl, wl, bl, ysl).compile().as_text()
    assert jax.typeof(grads[1]).sharding.spec == P("dp", None)  # gradients keep the layout
    softmax_spec = jax.typeof(jax.jit(jaxsoftmax.softmax)(xl)).sharding.spec
  expected, expected_grads = jax.value_and_grad(losses, argnums=(0, 2, 3, 4))(
      *map(jnp.asarray, (x, y, xs, w, b, ys)))
  assert_close(value, expected, "float32", "loss")
  for g, e in zip(grads, expected_grads):
    assert_close(g, e, "float32", "grad")
  assert softmax_spec == P("dp", "tp")
  kinds = {k for k, _ in collectives_of(text)}
  assert kinds <= {"all-gather", "all-reduce"}, collectives_of(text)  # no permutes, no resharding


def test_plain_jit_explicit_mesh_sharded_features_are_refused():
  mesh = make_mesh()
  xs, w, _, ys, _ = lce_arrays()
  with jax.set_mesh(mesh):
    xsl = jax.device_put(xs, NamedSharding(mesh, P("dp", "tp")))
    wl = jax.device_put(w, NamedSharding(mesh, P("tp", None)))
    with pytest.raises(ValueError, match="feature axis D is sharded"):
      jax.jit(jaxsoftmax.linear_cross_entropy)(xsl, wl, ys)


@pytest.mark.parametrize(("reduction", "weighted"), [("mean", True), ("none", False)])
def test_linear_cross_entropy_sequence_parallel(reduction, weighted):
  # Rows of x split over dp and tp, the vocabulary over tp (Megatron's sequence parallelism).
  mesh = make_mesh()
  x, w, b, y, weight = lce_arrays(n=32)
  cw = weight if weighted else np.ones_like(weight)
  kw = dict(reduction=reduction, label_smoothing=0.1, ignore_index=-100, chunk_size=3)
  rows = ("dp", "tp")
  specs = [P(rows, None), P(None, "tp"), P("tp"), P(rows), P("tp")]

  def sharded(x, w, b, y, cw):
    return jaxsoftmax.linear_cross_entropy(x, w, y, bias=b, weight=cw if weighted else None,
                                           axis_name="tp", batch_axis_name=rows, **kw)

  def full(x, w, b, y, cw):
    return jaxsoftmax.linear_cross_entropy(x, w, y, bias=b, weight=cw if weighted else None, **kw)

  argnums = (0, 1, 2, 4) if weighted else (0, 1, 2)
  out, grads, cot = run(sharded, mesh, [x, w, b, y, cw], specs,
                        P(rows) if reduction == "none" else P(), argnums)
  check_all((out, grads), full_grads(full, [jnp.asarray(a) for a in (x, w, b, y, cw)], argnums,
                                     cot), (None, None), names=("x", "w", "bias", "weight"))
  with pytest.raises(ValueError, match="every class axis"):
    _inside(mesh, lambda x, w, y: jaxsoftmax.linear_cross_entropy(
        x, w, y, axis_name=("dp", "tp"), batch_axis_name="tp"),
        x, w, y, specs=[P(rows, None), P(None, ("dp", "tp")), P(rows)])


AUTO_SPECS = {"dp": P("dp", None), "tp": P(None, "tp"), "dp x tp": P("dp", "tp")}


@pytest.mark.parametrize("layout", list(AUTO_SPECS))
def test_plain_jit_auto_mesh_partitions_by_our_rule(layout):
  # Auto axes carry no layout in the types: the ops partition themselves (custom_partitioning),
  # reading the operands' shardings when GSPMD partitions the program. Right values and
  # gradients, and GSPMD's logits-sized all-reduces and collective-permutes are gone.
  mesh = make_mesh(axis_type=AUTO)
  spec = AUTO_SPECS[layout]
  z, y = logits(N, WIDE), labels_for(classes=WIDE, ignore=-100)
  z[0] = 0.0
  rng = np.random.default_rng(9)
  n = 32
  x = rng.normal(size=(n, D)).astype(np.float32)
  w = (rng.normal(size=(D, WIDE)) / np.sqrt(D)).astype(np.float32)
  b = rng.normal(size=(WIDE,)).astype(np.float32)
  ys = labels_for(n=n, classes=WIDE, ignore=-100)
  w_spec = P(None, spec[1])
  placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in
            zip((z, y, x, w, b, ys), (spec, P(spec[0]), P(spec[0], None), w_spec, P(spec[1]),
                                      P(spec[0])))]

  def losses(z, y, x, w, b, ys):
    return (jaxsoftmax.cross_entropy(z, y, ignore_index=-100, label_smoothing=0.1)
            + jaxsoftmax.nll_loss(jaxsoftmax.log_softmax(z), y, ignore_index=-100)
            + jnp.sum(jaxsoftmax.softmax(z) ** 2)
            + jaxsoftmax.linear_cross_entropy(x, w, ys, bias=b, ignore_index=-100,
                                              label_smoothing=0.1)
            # "none": a cotangent per row (the linear loss then partitions its backward too)
            + jnp.sum(jaxsoftmax.cross_entropy(z, y, ignore_index=-100, reduction="none")
                      * jnp.linspace(0.5, 1.5, N))
            + jnp.sum(jaxsoftmax.linear_cross_entropy(x, w, ys, bias=b, ignore_index=-100,
                                                      reduction="none") * jnp.linspace(1, 2, n)))

  vg = jax.jit(jax.value_and_grad(losses, argnums=(0, 2, 3, 4)))
  value, grads = vg(*placed)
  text = vg.lower(*placed).compile().as_text()
  expected, expected_grads = jax.value_and_grad(losses, argnums=(0, 2, 3, 4))(
      *map(jnp.asarray, (z, y, x, w, b, ys)))
  assert_close(value, expected, "float32", "loss")
  for g, e in zip(grads, expected_grads):
    assert_close(g, e, "float32", "grad")
  found = collectives_of(text)
  assert not [k for k, _ in found if k in ("collective-permute", "all-to-all")], found
  dp, tp = (2 if "dp" in layout else 1), (4 if "tp" in layout else 1)
  blocks = ((N // dp) * (WIDE // tp), (n // dp) * (WIDE // tp))  # a device's logits, both ops
  assert all(e < min(blocks) for k, e in found if k == "all-gather"), found  # row statistics
  assert all(e <= max(D * WIDE, n * D) < N * WIDE for _, e in found), found  # dw, dx: no logits


def test_plain_jit_auto_mesh_other_cases_fall_back_correctly():
  # "none" with class weights, masks, K-d inputs: GSPMD partitions the unsharded op (right, not
  # minimal).
  mesh = make_mesh(axis_type=AUTO)
  z, y = logits(N, C), labels_for(ignore=-100)
  mask = np.random.default_rng(3).random(z.shape) > 0.2
  weight = np.random.default_rng(4).uniform(0.5, 2.0, size=C).astype(np.float32)
  placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in
            zip((z, y, mask, weight), (P("dp", "tp"), P("dp"), P("dp", "tp"), P("tp")))]

  def losses(z, y, m, cw):
    return (jnp.sum(jaxsoftmax.cross_entropy(z, y, weight=cw, ignore_index=-100,
                                             reduction="none") * jnp.linspace(0.5, 1.5, N))
            + jnp.sum(jnp.where(m, jaxsoftmax.log_softmax(z, where=m), 0.0))
            + jnp.sum(jaxsoftmax.softmax(z.reshape(2, N // 2, C)) ** 2))

  value, grads = jax.jit(jax.value_and_grad(losses, argnums=(0, 3)))(*placed)
  expected, expected_grads = jax.value_and_grad(losses, argnums=(0, 3))(
      *map(jnp.asarray, (z, y, mask, weight)))
  assert_close(value, expected, "float32", "loss")
  for g, e in zip(grads, expected_grads):
    assert_close(g, e, "float32", "grad")


# ------------------------------------------------------------------------------------------------
# A class count the axis size does not divide: blocks padded at the end, num_classes= the truth.


def padded(a, axis, to, fill):
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, to - a.shape[axis])
  return np.pad(a, pad, constant_values=fill)


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "labels", "probs", "nll", "linear"])
def test_padding_never_leaks(op):
  mesh = make_mesh()
  true, full = 30, 32  # 4 shards of 8; the last holds 6 real classes and 2 of padding
  rng = np.random.default_rng(7)
  x = rng.normal(size=(N, true)).astype(np.float32)
  junk = 50.0  # padding values that would dominate any max or sum they leaked into
  y = labels_for(classes=true, ignore=-100)
  y[:2] = [true - 1, 24]  # the last real class, and the first class of the padded shard
  weight = rng.uniform(0.5, 2.0, size=true).astype(np.float32)
  kw = dict(axis_name="tp", batch_axis_name="dp", num_classes=true)
  if op in ("softmax", "log_softmax"):
    fn = getattr(jaxsoftmax, op)
    args, specs, out_spec = [padded(x, 1, full, junk)], [P("dp", "tp")], P("dp", "tp")
    sharded = lambda x: fn(x, axis_name="tp", num_classes=true)  # noqa: E731
    reference = lambda x: fn(x)  # noqa: E731
    argnums, ref_args = (0,), [x]
  elif op in ("labels", "probs"):
    t = (np.asarray(jax.nn.softmax(rng.normal(size=(N, true))), np.float32) if op == "probs"
         else y)
    tp = padded(t, 1, full, 0.0) if op == "probs" else t
    args = [padded(x, 1, full, junk), tp, padded(weight, 0, full, 9.0)]
    specs = [P("dp", "tp"), P("dp", "tp") if op == "probs" else P("dp"), P("tp")]
    ce_kw = dict(label_smoothing=0.2) if op == "probs" else dict(label_smoothing=0.2,
                                                                 ignore_index=-100)
    sharded = lambda x, t, w: jaxsoftmax.cross_entropy(x, t, weight=w, **ce_kw, **kw)  # noqa: E731
    reference = lambda x, t, w: jaxsoftmax.cross_entropy(x, t, weight=w, **ce_kw)  # noqa: E731
    out_spec, argnums = P(), ((0, 1, 2) if op == "probs" else (0, 2))
    ref_args = [x, t, weight]
  elif op == "nll":
    lp = np.array(jax.nn.log_softmax(x), np.float32)
    args, specs = [padded(lp, 1, full, junk), y, padded(weight, 0, full, 9.0)], [P("dp", "tp"),
                                                                                 P("dp"), P("tp")]
    sharded = lambda lp, y, w: jaxsoftmax.nll_loss(lp, y, weight=w, ignore_index=-100, **kw)  # noqa: E731
    reference = lambda lp, y, w: jaxsoftmax.nll_loss(lp, y, weight=w, ignore_index=-100)  # noqa: E731
    out_spec, argnums, ref_args = P(), (0, 2), [lp, y, weight]
  else:
    xs, w, b, ys, _ = lce_arrays(n=N)
    w, b = w[:, :true], b[:true]
    ys = np.where(ys >= true, true - 1, ys)
    args = [xs, padded(w, 1, full, junk), padded(b, 0, full, junk), ys,
            padded(weight, 0, full, 9.0)]
    specs = [P("dp", None), P(None, "tp"), P("tp"), P("dp"), P("tp")]
    lce_kw = dict(label_smoothing=0.2, ignore_index=-100, chunk_size=3)
    sharded = lambda x, w, b, y, cw: jaxsoftmax.linear_cross_entropy(  # noqa: E731
        x, w, y, bias=b, weight=cw, **lce_kw, **kw)
    reference = lambda x, w, b, y, cw: jaxsoftmax.linear_cross_entropy(  # noqa: E731
        x, w, y, bias=b, weight=cw, **lce_kw)
    out_spec, argnums, ref_args = P(), (0, 1, 2, 4), [xs, w, b, ys, weight]
  out, grads, _ = run(sharded, mesh, args, specs, out_spec, argnums)
  if op in ("softmax", "log_softmax"):
    fill = 0.0 if op == "softmax" else -np.inf
    assert np.all(out[:, true:] == fill)
    out = out[:, :true]
  cot = np.random.default_rng(0).normal(size=out.shape).astype(np.float32)
  if op in ("softmax", "log_softmax"):  # the cotangent run() drew, restricted to the real classes
    cot = np.random.default_rng(0).normal(size=(N, full)).astype(np.float32)[:, :true]
  ref_out, ref_grads = full_grads(reference, [jnp.asarray(a) for a in ref_args], argnums, cot)
  assert_close(out, ref_out, "float32", "value")
  for g, r in zip(grads, ref_grads):
    axis = 1 if g.ndim == 2 and g.shape[1] == full else 0
    real = np.take(g, np.arange(true), axis=axis) if g.shape[axis] == full else g
    pad = np.take(g, np.arange(true, full), axis=axis) if g.shape[axis] == full else None
    assert_close(real, r, "float32", "gradient")
    if pad is not None:
      assert np.all(pad == 0.0), "padding received a gradient"


def test_num_classes_is_checked():
  mesh = make_mesh()
  x = np.zeros((8, 16), np.float32)
  with pytest.raises(ValueError, match="num_classes=12 does not fit"):
    _inside(mesh, lambda x: jnp.sum(jaxsoftmax.softmax(x, axis_name="tp", num_classes=12)), x,
            specs=[P("dp", "tp")])
  with pytest.raises(ValueError, match="needs axis_name"):
    jaxsoftmax.cross_entropy(jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32), num_classes=3)


def test_cross_entropy_grad_of_grad_and_vmap_inside_shard_map():
  mesh = make_mesh()
  x, y = logits(N, C), labels_for(ignore=-100)
  x[0] = 0.25
  c = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
  spec = P("dp", "tp")

  def loss(x, y):
    return jaxsoftmax.cross_entropy(x, y, ignore_index=-100, label_smoothing=0.1,
                                    axis_name="tp", batch_axis_name="dp")

  def hvp(x, y, c):
    return jax.grad(lambda x: lax.psum(jnp.sum(jax.grad(loss)(x, y) * c), ("dp", "tp")))(x)

  def per_row(x, y):  # vmap over rows: each row its own cross-entropy ('none' of one example)
    return jax.vmap(lambda r, t: jaxsoftmax.cross_entropy(r, t, axis_name="tp"))(x, y)

  with jax.set_mesh(mesh):
    xs, cs = (jax.device_put(a, NamedSharding(mesh, spec)) for a in (x, c))
    ys = jax.device_put(np.where(y < 0, 0, y), NamedSharding(mesh, P("dp")))
    yi = jax.device_put(y, NamedSharding(mesh, P("dp")))
    got = jax.jit(jax.shard_map(hvp, mesh=mesh, in_specs=(spec, P("dp"), spec),
                                out_specs=spec))(xs, yi, cs)
    rows = jax.jit(jax.shard_map(per_row, mesh=mesh, in_specs=(spec, P("dp")),
                                 out_specs=P("dp")))(xs, ys)

  def full(x):
    return jaxsoftmax.cross_entropy(x, jnp.asarray(y), ignore_index=-100, label_smoothing=0.1)

  expected = jax.grad(lambda x: jnp.sum(jax.grad(full)(x) * c))(jnp.asarray(x))
  assert_close(got, expected, "float32", "Hessian-vector product")
  assert_close(rows, jaxsoftmax.cross_entropy(jnp.asarray(x), jnp.asarray(np.where(y < 0, 0, y)),
                                              reduction="none"), "float32", "vmap")


# ----------------------------------------------------------------------------------------------
# Issue 15's options on the sharded path: z-loss, soft-cap, the returned lse (differentiated),
# argmax and accuracy, against the unsharded op.


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("op", ["cross_entropy", "linear_cross_entropy"])
def test_training_options_sharded_match_unsharded(op, reduction):
  mesh = make_mesh()
  rng = np.random.default_rng(15)
  y = labels_for(classes=C, ignore=-100)
  weight = rng.uniform(0.5, 2.0, C).astype(np.float32)
  kw = dict(ignore_index=-100, reduction=reduction, z_loss=0.01, logit_softcap=4.0,
            label_smoothing=0.1, return_lse=True, return_argmax=True, return_accuracy=True,
            return_z_loss=True)
  if op == "cross_entropy":
    args = [logits(N, C) * 3, weight]
    specs = [P("dp", "tp"), P("tp")]

    def call(x, w, y, **sharding):
      return jaxsoftmax.cross_entropy(x, y, weight=w, **kw, **sharding)
  else:
    args = [rng.normal(size=(N, 8)).astype(np.float32),
            (rng.normal(size=(8, C)) * 2).astype(np.float32), weight]
    specs = [P("dp", None), P(None, "tp"), P("tp")]

    def call(x, k, w, y, **sharding):
      return jaxsoftmax.linear_cross_entropy(x, k, y, weight=w, chunk_size=4, **kw, **sharding)

  def scalar(out):  # the loss and the lse, both differentiated
    loss, aux = out
    return jnp.sum(loss) + jnp.sum(aux.lse * 0.5)

  body = jax.shard_map(lambda *a: call(*a[:-1], a[-1], axis_name="tp", batch_axis_name="dp"),
                       mesh=mesh, in_specs=tuple(specs) + (P("dp"),),
                       out_specs=(P("dp") if reduction == "none" else P(), jaxsoftmax.LossAux(
                           P("dp"), P("dp"), P(), P("dp") if reduction == "none" else P())))
  with jax.set_mesh(mesh):
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    yp = jax.device_put(y, NamedSharding(mesh, P("dp")))
    out = jax.block_until_ready(jax.jit(body)(*placed, yp))
    grads = jax.block_until_ready(jax.jit(jax.grad(lambda *a: scalar(body(*a)),
                                                   argnums=tuple(range(len(args)))))(*placed, yp))
  ref = call(*args, y)
  ref_grads = jax.grad(lambda *a: scalar(call(*a, y)), argnums=tuple(range(len(args))))(*args)
  assert_close(out[0], ref[0], "float32", "loss")
  for name in ("lse", "accuracy", "z_loss"):
    assert_close(getattr(out[1], name), getattr(ref[1], name), "float32", name)
  np.testing.assert_array_equal(out[1].argmax, ref[1].argmax)
  for i, (a, b) in enumerate(zip(grads, ref_grads)):
    assert_close(a, b, "float32", f"grad {i}")


def test_plain_jit_explicit_mesh_returns_the_in_pass_outputs():
  """On an Explicit mesh the ops open the shard_map themselves: the LossAux comes back laid out
  (per-row outputs over the rows, accuracy and a reduced z-loss replicated) and equal to the
  unsharded op's, with z-loss and soft-cap, for both ops."""
  mesh = make_mesh()
  x, y = logits(N, C) * 3, labels_for(ignore=-100)
  xs, w, b, ys, _ = lce_arrays()
  kw = dict(ignore_index=-100, z_loss=0.01, logit_softcap=4.0, return_lse=True,
            return_argmax=True, return_accuracy=True, return_z_loss=True)

  def both(x, y, xs, w, ys):
    return (jaxsoftmax.cross_entropy(x, y, **kw),
            jaxsoftmax.linear_cross_entropy(xs, w, ys, chunk_size=4, **kw))

  with jax.set_mesh(mesh):
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in (
        (x, P("dp", "tp")), (y, P("dp")), (xs, P("dp", None)), (w, P(None, "tp")),
        (ys, P("dp")))]
    got = jax.block_until_ready(jax.jit(both)(*placed))
    assert jax.typeof(got[0][1].lse).sharding.spec == P("dp")
  expected = both(*map(jnp.asarray, (x, y, xs, w, ys)))
  for (loss, aux), (e_loss, e_aux) in zip(got, expected):
    assert_close(loss, e_loss, "float32", "loss")
    for name in ("lse", "accuracy", "z_loss"):
      assert_close(getattr(aux, name), getattr(e_aux, name), "float32", name)
    np.testing.assert_array_equal(aux.argmax, e_aux.argmax)
