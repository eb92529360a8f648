"""``compare_functions``: a JAX function beside its torch original, values and gradients.

The inputs are given once, as NumPy arrays, Python numbers or trees of them, and are *copied* to
each side (:mod:`jaxsoftmax._src.copies`): neither side can see the other's buffers. Both sides get
the same seeded random cotangent for every floating output, and the vector-Jacobian products
``J^T g`` with respect to every floating input are compared, in torch's layout, leaf by leaf,
with the tolerance of the result's dtype (``torch.testing.assert_close``'s table).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxsoftmax._src.copies import jax_copy, numpy_copy, torch_copy
from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax.parity import trees
from jaxsoftmax.parity.compare import TOLERANCES, Comparison, Tolerance, compare
from jaxsoftmax.parity.report import ParityReport, publish

__all__ = ["compare_functions", "layout_permutation", "torch_device_for", "tolerance_picker",
           "float32_torch"]

_HALF = ("float16", "bfloat16")
_EXACT = Tolerance(rtol=0.0, atol=0.0)


def layout_permutation(spec) -> tuple[int, ...]:
  """The axes ``p`` with ``jax_value = torch_value.transpose(p)``, from ``"NCHW->NHWC"`` (torch's
  layout on the left) or from the permutation itself."""
  if isinstance(spec, str):
    src, sep, dst = spec.replace(" ", "").partition("->")
    if not sep or sorted(src) != sorted(dst) or len(set(src)) != len(src):
      raise ArgumentError(f"layout {spec!r}: expected 'TORCH->JAX' axis letters, each once on "
                          "both sides, e.g. 'NCHW->NHWC'")
    return tuple(src.index(a) for a in dst)
  perm = tuple(int(i) for i in spec)
  if sorted(perm) != list(range(len(perm))):
    raise ArgumentError(f"layout {spec!r} is not a permutation of 0..{len(perm) - 1}")
  return perm


def _inverse(perm):
  return tuple(int(i) for i in np.argsort(perm))


def _permute(value, perm):
  return value if perm is None else np.transpose(value, perm)


def torch_device_for(jax_device) -> str:
  """torch's device beside a JAX device: CUDA beside a GPU when torch has it, else the CPU."""
  import torch  # noqa: PLC0415

  return "cuda" if jax_device.platform == "gpu" and torch.cuda.is_available() else "cpu"


def _dtype_name(value) -> str:
  if hasattr(value, "dtype"):
    return str(value.dtype).removeprefix("torch.")
  return type(value).__name__


def _is_float(value) -> bool:
  return trees.is_array(value) and _dtype_name(value) in TOLERANCES


def _selected(path: str, grad) -> bool:
  if grad is True:
    return True
  if grad is False or grad is None:
    return False
  return any(path == g or path.startswith((f"{g}[", f"{g}.")) for g in grad)


def tolerance_picker(rtol, atol, tolerances) -> Callable[[str], Tolerance]:
  """The tolerance for a dtype name: one rtol/atol pair, or the table with ``tolerances``'
  entries in place (integers and booleans: exact)."""
  if (rtol is None) != (atol is None):
    raise ArgumentError(f"give both rtol and atol or neither (got rtol={rtol}, atol={atol}), as "
                        "torch.testing.assert_close asks")
  table = {**TOLERANCES, **(tolerances or {})}
  for key, value in table.items():
    if not isinstance(value, Tolerance):
      raise ArgumentError(f"tolerances[{key!r}] must be a parity.Tolerance; got {value!r}")

  def pick(dtype: str) -> Tolerance:
    if rtol is not None:
      return Tolerance(rtol=float(rtol), atol=float(atol))
    return table.get(dtype, _EXACT)  # integers, booleans: exact
  return pick


def _layouts(layouts, paths, what) -> dict[str, tuple[int, ...]]:
  found = {}
  for key, spec in (layouts or {}).items():
    if key not in paths:
      raise ArgumentError(f"{what}: no {key!r} among {sorted(paths)}")
    found[key] = layout_permutation(spec)
  return found


def _leaf_perm(path: str, perms: Mapping[str, tuple]) -> tuple | None:
  """A layout given for a leaf or for a tree above it."""
  for key, perm in perms.items():
    if path == key or path.startswith((f"{key}[", f"{key}.")):
      return perm
  return None


@contextlib.contextmanager
def float32_torch():
  """torch's TF32 matmuls and convolutions off inside, so float32 means float32 on CUDA."""
  import torch  # noqa: PLC0415

  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  try:
    yield
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cast_numpy(value: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "bfloat16":
    import ml_dtypes  # noqa: PLC0415 - a dependency of jax

    with np.errstate(over="ignore", invalid="ignore"):
      return value.astype(ml_dtypes.bfloat16)
  with np.errstate(over="ignore", invalid="ignore"):  # beyond the dtype's range: inf, as torch
    return value.astype(dtype)


def _torch_side(torch_fn, arg_trees, names, leaves, diff, cot_of, device, cast=None):
  """Runs torch on copies of the leaves (cast to ``cast`` when given); returns the flat outputs
  and the gradients of ``diff`` (None where torch has none)."""
  import torch  # noqa: PLC0415

  tensors = {}
  for path, value in leaves.items():
    if not isinstance(value, np.ndarray):
      tensors[path] = value
      continue
    dtype = getattr(torch, cast) if cast and _is_float(value) else None
    if np.issubdtype(value.dtype, np.signedinteger):
      dtype = torch.int64  # torch's index dtype: targets, indices and lengths all want it
    tensors[path] = torch_copy(value, dtype, device)
    if path in diff:
      tensors[path].requires_grad_(True)
  args = [trees.map_leaves(lambda p, _: tensors[p], t, n) for t, n in zip(arg_trees, names)]
  with torch.enable_grad():
    out = torch_fn(*args)
  flat = trees.flatten(out, "out")
  grads = dict.fromkeys(diff)
  wanted = [(p, v) for p, v in flat.items()
            if hasattr(v, "requires_grad") and v.requires_grad and cot_of(p) is not None
            and tuple(cot_of(p).shape) == tuple(v.shape)]  # other shapes fail the forward
  if diff and wanted:
    found = torch.autograd.grad(
        [v for _, v in wanted],
        [tensors[p] for p in diff],
        [torch_copy(cot_of(p), v.dtype, device) for p, v in wanted], allow_unused=True)
    grads = {p: None if g is None else numpy_copy(g) for p, g in zip(diff, found)}
  return {p: numpy_copy(v) if trees.is_array(v) else v for p, v in flat.items()}, grads


def _anchor_check(check: Comparison, mine, torch_value, exact) -> Comparison:
  """A result at least as close to the float64 answer as torch's own passes."""
  mine = np.asarray(mine, np.float64)
  theirs = np.asarray(torch_value, np.float64)
  exact = np.asarray(exact, np.float64)
  if mine.shape != exact.shape or theirs.shape != exact.shape:
    return check

  def error(v):
    finite = np.isfinite(v) & np.isfinite(exact)
    return float(np.abs(np.where(finite, v - exact, 0.0)).max(initial=0.0))

  same_specials = (np.array_equal(np.isnan(mine), np.isnan(exact))
                   and np.array_equal(np.where(np.isinf(mine), mine, 0),
                                      np.where(np.isinf(exact), exact, 0)))
  check.anchor_error, check.reference_anchor_error = error(mine), error(theirs)
  if not check.ok and same_specials and check.anchor_error <= check.reference_anchor_error:
    check.ok = True
    check.note = ("passes on the float64 anchor: at least as close to the float64 answer as "
                  "torch's own result")
  return check


def compare_functions(jax_fn: Callable, torch_fn: Callable, *inputs, grad=True,
                      names: Sequence[str] | None = None, rtol: float | None = None,
                      atol: float | None = None,
                      tolerances: Mapping[str, Tolerance] | None = None,
                      anchor: str | None = None, layouts: Mapping | None = None,
                      output_layouts: Mapping | None = None, seed: int = 0,
                      jax_device=None, torch_device: str | None = None,
                      check_dtype: bool = True, torch_dtype: str | None = None,
                      x64: bool | None = None, matmul_precision: str | None = "highest",
                      title: str | None = None) -> ParityReport:
  """Runs ``jax_fn(*inputs)`` and ``torch_fn(*inputs)`` on copies of the same inputs and compares
  outputs and gradients leaf by leaf.

  .. math:: |a - e| \\le \\mathrm{atol} + \\mathrm{rtol}\\,|e|, \\qquad
     \\text{gradients: } J_{\\mathrm{jax}}^T g \\text{ vs } J_{\\mathrm{torch}}^T g

  Args:
    jax_fn, torch_fn: the port and the original, called with the same positional inputs (JAX
      arrays on one side, torch tensors on the other, in the same containers).
    *inputs: NumPy arrays, Python numbers, or trees of them (dicts, lists, tuples, named tuples,
      dataclasses), in torch's layout.
    grad: True (every floating input), False, or the input paths (``"x"``, ``"params['w']"``)
      to differentiate.
    names: a name per input for the report (default ``input0``, ``input1``, ...).
    rtol, atol: one tolerance for every leaf, instead of the per-dtype table.
    tolerances: ``{dtype name: Tolerance}`` entries replacing the table's.
    anchor: ``"float64"`` to also run torch in float64: a leaf below float64 that misses the
      tolerance still passes when it is at least as close to the float64 answer as torch's own
      result in its dtype (so a more accurate port is not called wrong).
    layouts: ``{input name or path: "NCHW->NHWC" or a permutation}``: the JAX side receives the
      input transposed; its gradient is transposed back before comparing.
    output_layouts: the same for outputs (paths ``out``, ``out[0]``, ``out['logits']``...).
    seed: the cotangents' random seed (or a ``numpy.random.Generator``). Signed integer inputs
      reach torch as int64, its index dtype.
    jax_device: a JAX device (default: the first); torch_device: ``"cpu"``/``"cuda"`` (default:
      CUDA beside a GPU when torch has it).
    check_dtype: a dtype that differs between the sides fails the leaf.
    torch_dtype: run torch with its floating inputs cast to this dtype and round its results to
      the JAX side's dtype (the grid's policy for half precision).
    x64: run JAX with ``jax_enable_x64`` on or off (default: on when an input is float64).
    matmul_precision: JAX's matmul precision while the port runs; torch's TF32 is switched off
      for the call, so float32 means float32 on both sides.

  Returns:
    A :class:`~jaxsoftmax.parity.ParityReport`.
  """
  import jax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  if anchor not in (None, "float64"):
    raise ArgumentError(f"anchor must be None or 'float64'; got {anchor!r}")
  if not callable(jax_fn) or not callable(torch_fn):
    raise TypeError(f"compare_functions: jax_fn and torch_fn must be callable; got "
                    f"{type(jax_fn).__name__} and {type(torch_fn).__name__}")
  names = list(names) if names is not None else [f"input{i}" for i in range(len(inputs))]
  if len(names) != len(inputs) or len(set(names)) != len(names):
    raise ArgumentError(f"names must give each of the {len(inputs)} inputs its own name; got "
                        f"{names}")
  tol_of = tolerance_picker(rtol, atol, tolerances)
  leaves = {}
  for tree, name in zip(inputs, names):
    for path, value in trees.flatten(tree, name).items():
      leaves[path] = numpy_copy(value) if trees.is_array(value) else value
  diff = [p for p, v in leaves.items() if _is_float(v) and _selected(p, grad)]
  if grad not in (True, False, None):
    unknown = [g for g in grad if not any(_selected(p, [g]) for p in leaves)]
    if unknown:
      raise ArgumentError(f"grad names {unknown}, which are not floating inputs; inputs: "
                          f"{sorted(leaves)}")
  in_perms = _layouts(layouts, set(names) | set(leaves), "layouts")
  jax_device = jax_device or jax.devices()[0]
  torch_device = torch_device or torch_device_for(jax_device)
  if x64 is None:
    x64 = any(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in leaves.values())

  # The JAX side: forward once for every output, then a VJP over the floating ones.
  with contextlib.ExitStack() as stack:
    stack.enter_context(jax.enable_x64(x64))
    stack.enter_context(jax.default_device(jax_device))
    if matmul_precision:
      stack.enter_context(jax.default_matmul_precision(matmul_precision))
    arrays = {p: jax_copy(_permute(v, _leaf_perm(p, in_perms)), device=jax_device)
              if isinstance(v, np.ndarray) else v for p, v in leaves.items()}

    def call(values):
      args = [trees.map_leaves(lambda p, _: values[p], t, n) for t, n in zip(inputs, names)]
      return trees.flatten(jax_fn(*args), "out")

    # One trace gives every output and the VJP: the floating outputs are the primal outputs,
    # the others (integer arrays, Python values, None) ride along.
    vjp = None
    if diff:
      kept = {}

      def floating(*diff_values):
        result = call({**arrays, **dict(zip(diff, diff_values))})
        kept["paths"] = list(result)
        float_paths = [p for p, v in result.items() if _is_float(v)]
        kept["float"] = float_paths
        kept["plain"] = {p: v for p, v in result.items() if not trees.is_array(v)}
        return ([result[p] for p in float_paths],
                {p: v for p, v in result.items() if trees.is_array(v) and p not in float_paths})

      primal, vjp, others = jax.vjp(floating, *[arrays[p] for p in diff], has_aux=True)
      values = {**dict(zip(kept["float"], primal)), **others, **kept["plain"]}
      out = {p: values[p] for p in kept["paths"]}
    else:
      out = call(arrays)
    out_perms = _layouts(output_layouts, {"out"} | set(out), "output_layouts")
    jax_out = {p: np.asarray(_permute(np.asarray(v), _inverse(perm)))
               if trees.is_array(v) and (perm := _leaf_perm(p, out_perms)) is not None
               else (np.asarray(v) if trees.is_array(v) else v) for p, v in out.items()}
    float_out = [p for p, v in out.items() if _is_float(v)]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cots = {p: _cast_numpy(rng.standard_normal(jax_out[p].shape), jax_out[p].dtype.name)
            for p in float_out}
    jax_grads = {}
    if vjp is not None and float_out:
      found = vjp([jax.device_put(_permute(cots[p], _leaf_perm(p, out_perms)), jax_device)
                   for p in float_out])
      jax_grads = {p: _permute(np.asarray(g), _inverse(perm)) if (
          perm := _leaf_perm(p, in_perms)) is not None else np.asarray(g)
          for p, g in zip(diff, found)}

  with float32_torch():
    t_out, t_grads = _torch_side(torch_fn, inputs, names, leaves, diff, cots.get, torch_device,
                                 cast=torch_dtype)
    exact_out = exact_grads = None
    if anchor == "float64":
      exact_out, exact_grads = _torch_side(
          torch_fn, inputs, names, leaves, diff,
          lambda p: None if cots.get(p) is None else cots[p].astype(np.float64), torch_device,
          cast="float64")

  report = ParityReport(title or f"{getattr(jax_fn, '__name__', 'jax_fn')} vs "
                                 f"{getattr(torch_fn, '__name__', 'torch_fn')}")
  report.meta = {"devices": f"JAX {jax_device} · torch {torch_device}",
                 "seed": seed if isinstance(seed, int) else "generator",
                 "anchor": anchor or "none", "jax": jax.__version__, "torch": torch.__version__}
  missing, extra = sorted(set(t_out) - set(jax_out)), sorted(set(jax_out) - set(t_out))
  if missing or extra:
    report.checks.append(Comparison(
        "out", False, kind="structure",
        problem=f"outputs differ in structure: torch has {missing or 'nothing more'}, JAX has "
                f"{extra or 'nothing more'}"))

  def check(kind, path, mine, theirs, exact=None):
    if theirs is None or mine is None or not trees.is_array(mine):
      same = (mine is None and theirs is None) or (
          not trees.is_array(mine) and not trees.is_array(theirs) and mine == theirs)
      return Comparison(path, same, kind=kind,
                        problem="" if same else f"JAX gives {mine!r}, torch {theirs!r}")
    theirs = np.asarray(theirs)
    mine_dtype = mine.dtype.name
    if torch_dtype and mine_dtype != theirs.dtype.name and mine_dtype in TOLERANCES:
      theirs = _cast_numpy(theirs, mine_dtype)  # round torch's result once, as promised
    if check_dtype and mine_dtype != theirs.dtype.name:
      return Comparison(path, False, kind=kind, dtype=mine_dtype,
                        problem=f"dtype {mine_dtype}, torch's {theirs.dtype.name}")
    result = compare(mine, theirs, mine_dtype, path, kind=kind, tol=tol_of(mine_dtype))
    if exact is not None and mine_dtype in _HALF + ("float32",):
      result = _anchor_check(result, mine, theirs, exact)
    return result

  for path in [p for p in t_out if p in jax_out]:
    report.checks.append(check("output", path, jax_out[path], t_out[path],
                               None if exact_out is None else exact_out.get(path)))
  reshaped = [p for p in float_out if p in t_out and trees.is_array(t_out[p])
              and np.shape(t_out[p]) != jax_out[p].shape]
  if reshaped:
    report.notes.append(f"gradients not compared: outputs {reshaped} differ in shape, so the "
                        "two sides cannot take the same cotangent")
  for path in [] if reshaped else diff:
    mine = jax_grads.get(path)
    theirs = t_grads.get(path)
    if mine is None and theirs is None:
      continue  # no floating output to differentiate
    note = ""
    if theirs is None and mine is not None:  # torch did not use the input: its gradient is 0
      theirs, note = np.zeros_like(mine), "torch returned no gradient (input unused): taken as 0"
    result = check("grad", path, mine, theirs,
                   None if exact_grads is None or exact_grads.get(path) is None
                   else exact_grads[path])
    result.note = result.note or note
    report.checks.append(result)
  return publish(report)
