"""The Pallas kernels, tested where no accelerator is.

* Kernel contract: the Triton (GPU) kernels in Pallas' interpreter and the Mosaic (TPU) kernels in
  TPU interpret mode, against the XLA reference of the same contract, one-pass and two-pass, on
  ragged shapes and non-finite rows.
* Against torch: the parity grid's cases whose calls the kernels take, run with
  ``implementation="pallas"`` preferred, compared with torch by the grid's own tolerance table.
* Lowering: every kernel, forward and backward, lowers for ``cuda`` (Triton) and ``tpu`` (Mosaic)
  from this CPU-only machine, so a GPU or TPU run does not meet a kernel the lowering refuses.
* Dispatch: the default picks XLA on CPU, and on a GPU/TPU only where the kernel default table
  says the kernels won on that device; bad requests say why.
"""

import functools
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoftmax
from jaxsoftmax import parity
from jaxsoftmax.parity import grid, runner
from jaxsoftmax._src import dispatch, kernels
from jaxsoftmax._src.kernels import defaults, gpu, reference, tpu

def _kernel(module, interpret):
  return lambda name, **kw: functools.partial(getattr(module, name), interpret=interpret, **kw)


_PRESENT = runner.platforms()
BACKENDS = {  # interpreted everywhere; compiled where the hardware is present
    "triton": _kernel(gpu, True),
    "mosaic_tpu": _kernel(tpu, True),
    "triton-compiled": _kernel(gpu, False),
    "mosaic_tpu-compiled": _kernel(tpu, False),
}
_NEEDS = {"triton-compiled": "gpu", "mosaic_tpu-compiled": "tpu"}
BACKEND_PARAMS = [
    pytest.param(b, marks=pytest.mark.skipif(
        _NEEDS.get(b, "cpu") not in _PRESENT,
        reason=f"no {_NEEDS.get(b)} platform in jax.devices(); present: {_PRESENT}"))
    for b in BACKENDS
]
# (rows, n, one_pass_max): one pass with a ragged last row block (Triton: 32 rows per program;
# Mosaic: 512-row slabs); two passes with ragged row and column blocks.
PLANS = {"one_pass": (520, 37, None), "two_pass": (40, 300, 128)}


def _inputs(rows, n, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
  x[1, 5] = -np.inf  # one -inf logit: finite row
  x[2, :] = -np.inf  # all -inf: NaN row (torch agrees)
  x[3, 7] = np.inf  # +inf: NaN row
  x[NAN_ROW, 0] = np.nan
  x[5, n - 1] = 80.0  # a dominant last (ragged-block) entry
  return jnp.asarray(x, dtype), jnp.asarray(rng.standard_normal((rows, n)), dtype)


NAN_ROW = 4
DEGENERATE_ROWS = [2, 3, NAN_ROW]  # all -inf, +inf, NaN: outputs NaN, statistics unspecified


def _assert_same(actual, expected, dtype, stat=False):
  """The project's one tolerance table (parity.assert_close), NaN/inf patterns exactly."""
  a = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
  e = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
  if stat:  # the row max and sum of a degenerate row are unspecified; its outputs are not
    a, e = np.delete(a, DEGENERATE_ROWS, 0), np.delete(e, DEGENERATE_ROWS, 0)
  parity.assert_close(a, e, dtype)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_softmax_kernels_match_the_reference(backend, plan, dtype):
  rows, n, opm = PLANS[plan]
  if plan == "one_pass":  # the plans really leave a partial last row block
    assert rows % gpu.plan(n)[0] and rows % tpu.plan(rows, n, jnp.dtype(dtype).itemsize)[0]
  x, dy = _inputs(rows, n, dtype)
  for log, negate, temperature in [(False, False, 1.0), (True, True, 0.7)]:
    opts = dict(log=log, negate=negate, temperature=temperature)
    fwd = BACKENDS[backend]("softmax_fwd", one_pass_max=opm)
    y, m, s = fwd(x, **opts)
    y_ref, m_ref, s_ref = reference.softmax_fwd(x, **opts)
    _assert_same(y, y_ref, dtype)
    for got, want in [(m, m_ref), (s, s_ref)]:
      _assert_same(got, want, dtype, stat=True)
    recompute = dtype != "float32"
    res = x if recompute else y_ref
    bwd = BACKENDS[backend]("softmax_bwd", one_pass_max=opm)
    dx = bwd(dy, res, m_ref, s_ref, recompute=recompute, **opts)
    _assert_same(dx, reference.softmax_bwd(dy, res, m_ref, s_ref, recompute=recompute, **opts),
                 dtype)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_cross_entropy_kernel_matches_the_reference(backend, plan):
  rows, n, opm = PLANS[plan]
  x, _ = _inputs(rows, n, "float32")
  rng = np.random.default_rng(1)
  labels = jnp.asarray(rng.integers(0, n, (rows, 1)), jnp.int32).at[6, 0].set(n - 1)
  a, b, c = (jnp.asarray(rng.uniform(0.1, 1.0, (rows, 1)), jnp.float32) for _ in range(3))
  w = jnp.asarray(rng.uniform(0.5, 2.0, (1, n)), jnp.float32)
  ce = BACKENDS[backend]("ce", one_pass_max=opm)
  for grad, smooth, weight in [(True, False, None), (True, True, w), (False, True, None)]:
    got = ce(x, labels, a, b, c, weight, grad=grad, smooth=smooth)
    want = reference.ce(x, labels, a, b, c, weight, grad=grad, smooth=smooth)
    for i, (g, e) in enumerate(zip(got, want)):
      assert (g is None) == (e is None)
      if e is not None:
        _assert_same(g, e, "float32", stat=i < 2)
    # From saved statistics (reduction="none"'s backward): the same gradient.
    again = ce(x, labels, a, b, c, weight, want[0], want[1], grad=True, smooth=smooth)
    _assert_same(again[4], reference.ce(x, labels, a, b, c, weight, grad=True, smooth=smooth)[4],
                 "float32")


# ----------------------------------------------------------------------------------------------
# Against torch: the grid's cases that the kernels take.

KERNEL_OPS = ("softmax", "log_softmax", "softmin", "softmax[temperature]",
              "log_softmax[temperature]", "cross_entropy", "cross_entropy[axis=-1]",
              "nn.CrossEntropyLoss", "linear_cross_entropy[core]", "linear_cross_entropy")
PER_OP_AND_DTYPE = 6


def _takes_kernels(case):
  shape = case.shape
  if case.options.get("targets") == "probs" or case.options.get("kdim"):  # torch's reference path, as torch
    return False
  if case.op.startswith("linear_cross_entropy"):
    return bool(shape) and shape[0] > 0
  if 0 in shape or not shape:
    return False
  if "cross_entropy" in case.op or case.op.startswith("nn."):
    axis = -1 if case.op.endswith("[axis=-1]") else 1
    return len(shape) == 2 or axis == -1
  return case.options.get("dim") in (-1, len(shape) - 1)


def _kernel_cases():
  picked = {}
  for case in grid.cases(ops=KERNEL_OPS, dtypes=("float32", "bfloat16", "float16")):
    if _takes_kernels(case):
      picked.setdefault((case.op, case.dtype), []).append(case)
  chosen = []
  for group in picked.values():  # a deterministic spread over each group
    group.sort(key=lambda c: zlib.crc32(c.id.encode()))
    chosen += group[:PER_OP_AND_DTYPE]
  return chosen


@pytest.fixture
def kernel_calls(monkeypatch):
  """Counts calls into the kernels, so a case that silently took XLA cannot pass as a kernel test."""
  calls = []
  for name in ("softmax_fwd", "softmax_bwd", "ce"):
    original = getattr(kernels, name)

    def counted(*args, _original=original, _name=name, **kw):
      calls.append(_name)
      return _original(*args, **kw)

    monkeypatch.setattr(kernels, name, counted)
  return calls


@pytest.mark.parametrize("case", _kernel_cases(), ids=lambda c: c.id)
def test_kernels_agree_with_torch(case, kernel_calls):
  jax.clear_caches()  # the grid's XLA runs must not answer from the jit cache
  with dispatch.prefer("pallas"):
    result = runner.run_case(case, "cpu")
  assert result.ok, result.report()
  assert kernel_calls, f"{case.id} never reached a kernel"


def test_the_kernel_grid_covers_every_op_and_dtype():
  groups = {(c.op, c.dtype) for c in _kernel_cases()}
  assert len(groups) == len(KERNEL_OPS) * 3, sorted(groups)


# ----------------------------------------------------------------------------------------------
# Lowering for the real targets, from a CPU.

_MARKERS = {"cuda": "xla.gpu.triton", "tpu": "tpu_custom_call"}


def _lowered(fn, platform, *args):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("n", [1000, 70000], ids=["one_pass", "two_pass"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_kernel_lowers_for_gpu_and_tpu(platform, n, dtype):
  assert (gpu.plan(n)[2] > 1) == (n > gpu.ONE_PASS_MAX)
  assert (tpu.plan(64, n, jnp.dtype(dtype).itemsize)[2] > 1) == (n == 70000)
  x = jax.ShapeDtypeStruct((64, n), jnp.dtype(dtype))
  labels = jax.ShapeDtypeStruct((64,), jnp.int32)
  losses = {
      "softmax": lambda x: jnp.sum(jaxsoftmax.softmax(x, implementation="pallas") ** 2),
      "log_softmax": lambda x: jnp.sum(jaxsoftmax.log_softmax(
          x, temperature=0.5, implementation="pallas") ** 2),
      "softmin": lambda x: jnp.sum(jaxsoftmax.softmin(x, implementation="pallas") ** 2),
  }
  for name, loss in losses.items():
    text = _lowered(jax.grad(lambda x, loss=loss: loss(x).astype(jnp.float32)), platform, x)
    assert text.count(_MARKERS[platform]) >= 2, f"{name}: no kernel in the {platform} lowering"
  for reduction in ("mean", "none"):
    ce = lambda x, y, reduction=reduction: jnp.sum(jaxsoftmax.cross_entropy(
        x, y, label_smoothing=0.1, weight=jnp.ones(n), reduction=reduction,
        implementation="pallas")).astype(jnp.float32)
    assert _MARKERS[platform] in _lowered(jax.grad(ce), platform, x, labels)
  w = jax.ShapeDtypeStruct((128, n), jnp.dtype(dtype))
  h = jax.ShapeDtypeStruct((64, 128), jnp.dtype(dtype))
  lce = lambda h, w, y: jaxsoftmax.linear_cross_entropy(
      h, w, y, chunk_size=32, implementation="pallas").astype(jnp.float32)
  assert _MARKERS[platform] in _lowered(jax.grad(lce, argnums=(0, 1)), platform, h, w, labels)


# ----------------------------------------------------------------------------------------------
# Dispatch and errors.


def _jaxpr(fn, *args):
  return str(jax.make_jaxpr(fn)(*args))


def test_the_default_is_xla_on_cpu_and_pallas_on_request(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # also when a GPU is present
  jax.clear_caches()
  x = jnp.ones((4, 10))
  assert "pallas_call" not in _jaxpr(jaxsoftmax.softmax, x)
  assert "pallas_call" in _jaxpr(functools.partial(jaxsoftmax.softmax, implementation="pallas"), x)
  assert "pallas_call" not in _jaxpr(functools.partial(jaxsoftmax.softmax, implementation="xla"), x)


@pytest.fixture
def kernel_table(tmp_path, monkeypatch):
  """Makes this CPU look like a GPU called ``Test GPU`` whose kernel default table holds the
  entries given as (op, dtype, shape class) tuples."""
  def make(*entries, device="Test GPU", platform="gpu"):
    table = {"schema": 1, "runs": [], "entries": [
        {"device_kind": device, "jax": jax.__version__, "op": op, "dtype": dtype,
         "shape_class": cls} for op, dtype, cls in entries]}
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(defaults, "TABLE", path)
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    monkeypatch.setattr(dispatch, "_device_kind", lambda: "Test GPU")
    jax.clear_caches()
    return path
  yield make
  jax.clear_caches()


def test_a_table_entry_takes_the_kernels_and_the_program_still_runs_on_cpu(kernel_table):
  kernel_table(("softmax", "float32", "short"), ("cross_entropy", "float32", "short"))
  x = jax.random.normal(jax.random.key(0), (6, 33))
  labels = jnp.arange(6)
  assert "pallas_call" in _jaxpr(jaxsoftmax.softmax, x)
  assert "pallas_call" in _jaxpr(jaxsoftmax.softmin, x)  # softmax's kernel, softmax's entry
  assert "pallas_call" in _jaxpr(jaxsoftmax.cross_entropy, x, labels)
  # No entry for these: XLA.
  assert "pallas_call" not in _jaxpr(jaxsoftmax.log_softmax, x)
  assert "pallas_call" not in _jaxpr(jaxsoftmax.softmax, x.astype(jnp.bfloat16))
  assert "pallas_call" not in _jaxpr(jaxsoftmax.softmax, jnp.ones((6, 2048)))  # "medium"
  # Lowered for this CPU, the platform switch takes the reference branch: no interpreter.
  cpu_text = jax.jit(jaxsoftmax.softmax).trace(x).lower(lowering_platforms=("cpu",)).as_text()
  assert "pallas_call" not in cpu_text and "triton" not in cpu_text
  # Run on the CPU this test names, not the default device: on a GPU machine that would run the
  # Triton kernels (and their backend's DeprecationWarning), which the compiled tests cover.
  cpu = jax.devices("cpu")[0]
  x, labels = jax.device_put(x, cpu), jax.device_put(labels, cpu)
  got = jax.value_and_grad(lambda x: jaxsoftmax.cross_entropy(x, labels))(x)
  want = jax.value_and_grad(lambda x: jaxsoftmax.cross_entropy(x, labels,
                                                               implementation="xla"))(x)
  for g, w in zip(got, want):
    parity.assert_close(np.asarray(g), np.asarray(w), "float32")
  # Calls the kernels cannot take still work: they use XLA.
  assert "pallas_call" not in _jaxpr(functools.partial(jaxsoftmax.softmax, axis=0), x)


def test_an_unknown_device_kind_or_another_jax_version_gets_xla(kernel_table, monkeypatch):
  kernel_table(("softmax", "float32", "short"))
  x = jnp.ones((6, 33))
  assert "pallas_call" in _jaxpr(jaxsoftmax.softmax, x)
  monkeypatch.setattr(dispatch, "_device_kind", lambda: "Some Other GPU")
  jax.clear_caches()
  assert "pallas_call" not in _jaxpr(jaxsoftmax.softmax, x)
  monkeypatch.setattr(dispatch, "_device_kind", lambda: "Test GPU")
  monkeypatch.setattr(jax, "__version__", "99.1.0")  # entries hold for their JAX minor version
  jax.clear_caches()
  assert "pallas_call" not in _jaxpr(jaxsoftmax.softmax, x)


def test_an_empty_table_gives_xla_on_a_gpu(kernel_table):
  kernel_table()
  assert "pallas_call" not in _jaxpr(jaxsoftmax.softmax, jnp.ones((6, 33)))
  assert "pallas_call" in _jaxpr(functools.partial(jaxsoftmax.softmax, implementation="pallas"),
                                 jnp.ones((6, 33)))  # forced: still taken


@pytest.mark.parametrize("content", [None, "{not json", '{"schema": 1, "entries": [{"op": 1}]}',
                                     '{"schema": 7, "entries": []}'])
def test_a_missing_or_corrupt_table_falls_back_to_xla_with_a_warning(kernel_table, content):
  path = kernel_table(("softmax", "float32", "short"))
  if content is None:
    path.unlink()
  else:
    path.write_text(content)
  with pytest.warns(defaults.KernelDefaultsWarning, match="uses XLA everywhere"):
    text = _jaxpr(jaxsoftmax.softmax, jnp.ones((6, 33)))
  assert "pallas_call" not in text


def test_the_shipped_table_loads_cleanly_and_holds_only_measured_entries():
  table = json.loads(defaults.TABLE.read_text())
  assert defaults.load() == tuple(
      (e["device_kind"], ".".join(e["jax"].split(".")[:2]), e["op"], e["dtype"],
       e["shape_class"]) for e in table["entries"])
  runs = {(r["device_kind"], ".".join(r["jax"].split(".")[:2])): r for r in table["runs"]}
  for e in table["entries"]:  # every entry comes from a recorded run whose kernel tests passed
    run = runs[(e["device_kind"], e["jax"])]
    assert run["kernel_tests"]["failed"] == 0 and run["kernel_tests"]["ran"] > 0
    assert e["worst_speedup"] >= defaults.MIN_SPEEDUP


def _junit(*cases):
  body = "".join(f'<testcase name="{n}">{x}</testcase>' for n, x in cases)
  return f"<testsuites><testsuite>{body}</testsuite></testsuites>"


def _results(rows, device="Test GPU", jax_version="0.11.2"):
  out = []
  for op, dtype, shape, kernel_ms, xla_ms in rows:
    for impl, ms in (("jaxsoftmax[pallas]", kernel_ms), ("jaxsoftmax[xla]", xla_ms)):
      out.append({"op": op, "impl": impl, "shape": list(shape), "dtype": dtype,
                  "mode": "fwd+bwd", "status": "ok", "median_ms": ms})
  return {"device": device, "platform": "gpu", "defaults_table": True, "rows": out,
          "versions": {"jax": jax_version}, "timestamp": "2026-11-26T00:00:00+00:00"}


def test_recording_keeps_a_class_only_where_the_kernels_passed_and_won_everywhere():
  doc = _results([("softmax", "bfloat16", (4096, 32768), 0.73, 1.08),
                  ("softmax", "bfloat16", (16384, 131072), 5.0, 6.0),
                  ("softmax", "float32", (4096, 32768), 1.0, 1.02),   # 1.02x: noise, no entry
                  ("softmax", "float32", (4096, 1024), 0.08, 0.10),
                  ("softmax", "float32", (4096, 512), 0.08, 0.07)])   # one loss: no entry
  passed = _junit(("test_kernels[float32-triton-compiled-one_pass]", ""),
                  ("test_kernels[float32-mosaic_tpu-compiled]", "<skipped/>"))
  table = defaults.record(doc, passed, source="x.json")
  got = {(e["op"], e["dtype"], e["shape_class"]) for e in table["entries"]}
  assert got == {("softmax", "bfloat16", "long")}
  assert table["entries"][0]["jax"] == "0.11" and table["runs"][0]["kernel_tests"]["ran"] == 1
  failed = _junit(("test_kernels[float32-triton-compiled-one_pass]",
                   '<failure message="DeprecationWarning: deprecated"/>'))
  table = defaults.record(doc, failed, table=table)
  assert table["entries"] == [] and len(table["runs"]) == 1  # the same device's run replaced
  assert table["runs"][0]["outcome"] == "1 of 1 compiled-kernel tests failed"
  errored = _junit(("test_kernels[float32-triton-compiled-one_pass]", "<error/>"))  # no message
  assert defaults.record(doc, errored)["runs"][0]["first_failures"] == [
      "test_kernels[float32-triton-compiled-one_pass]: no message"]
  none_ran = _junit(("test_kernels[float32-triton-compiled-one_pass]", "<skipped/>"))
  assert defaults.record(doc, none_ran)["entries"] == []


def test_record_defaults_command_writes_a_table_the_dispatcher_reads(tmp_path, kernel_table):
  from jaxsoftmax import cli
  results = tmp_path / "gpu.json"
  results.write_text(json.dumps(_results([("log_softmax", "float32", (4096, 1024), 0.08, 0.1)],
                                         jax_version=jax.__version__)))
  junit = tmp_path / "kernels.xml"
  junit.write_text(_junit(("test_k[triton-compiled]", "")))
  table = kernel_table()
  assert cli.main(["bench", "--record-defaults", str(results), "--kernels", str(junit),
                   "--defaults-out", str(table)]) == 0
  jax.clear_caches()
  assert "pallas_call" in _jaxpr(jaxsoftmax.log_softmax, jnp.ones((6, 33)))
  assert cli.main(["bench", "--record-defaults", str(results)]) == 2  # no kernel tests: refused


@pytest.mark.parametrize("call, message", [
    (lambda: jaxsoftmax.softmax(jnp.ones(3), implementation="triton"),
     "implementation must be None, 'xla' or 'pallas'; got 'triton'"),
    (lambda: jaxsoftmax.softmax(jnp.ones((2, 3)), axis=0, implementation="pallas"),
     "softmax: implementation='pallas' reduces over the last axis only"),
    (lambda: jaxsoftmax.log_softmax(jnp.ones(3), where=jnp.ones(3, bool),
                                    implementation="pallas"),
     "log_softmax: implementation='pallas' does not take a where= mask"),
    (lambda: jaxsoftmax.cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 3)) / 3,
                                      implementation="pallas"),
     "takes integer labels only"),
    (lambda: jaxsoftmax.softmin(jnp.ones((2, 0)), implementation="pallas"),
     "needs non-empty rows"),
])
def test_requests_the_kernels_cannot_take_say_why(call, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    call()


def test_float64_is_refused_by_name():
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match="covers float16, bfloat16 and float32; got float64"):
      jaxsoftmax.softmax(jnp.ones(3, jnp.float64), implementation="pallas")


def test_prefer_falls_back_where_the_kernels_do_not_apply():
  x = jnp.ones((3, 4))
  with dispatch.prefer("pallas"):
    assert "pallas_call" in _jaxpr(jaxsoftmax.softmax, x)
    assert "pallas_call" not in _jaxpr(functools.partial(jaxsoftmax.softmax, axis=0), x)
  with pytest.raises(ValueError, match="got 'fast'"):
    with dispatch.prefer("fast"):
      pass


# ----------------------------------------------------------------------------------------------
# What the kernel path keeps for the backward pass.


def _residuals(fn, x):
  try:
    from jax.ad_checkpoint import saved_residuals
  except ImportError:  # private in some JAX versions
    from jax._src.ad_checkpoint import saved_residuals
  return [(tuple(aval.shape), str(aval.dtype)) for aval, _ in saved_residuals(fn, x)]


def test_softmax_kernels_keep_the_output_or_the_half_input_and_row_stats():
  x32 = jnp.ones((8, 100))
  big = [r for r in _residuals(functools.partial(jaxsoftmax.softmax, implementation="pallas"),
                               x32) if r[0] == (8, 100)]
  assert big == [((8, 100), "float32")]
  x16 = x32.astype(jnp.bfloat16)
  big = [r for r in _residuals(functools.partial(jaxsoftmax.softmax, implementation="pallas"),
                               x16) if r[0] == (8, 100)]
  assert big == [((8, 100), "bfloat16")]  # the input itself: no float32 copy is written


def test_cross_entropy_kernel_keeps_only_the_gradient():
  x = jnp.ones((8, 100), jnp.bfloat16)
  fn = lambda x: jaxsoftmax.cross_entropy(x, jnp.arange(8), implementation="pallas")
  big = [r for r in _residuals(fn, x) if r[0] == (8, 100)]
  assert big == [((8, 100), "bfloat16")]  # d loss / d logits, formed in the forward pass


def test_float16_gradient_survives_a_loss_scale():
  """The forward-formed float16 gradient p/N underflows float16 before a loss-scaling cotangent
  could bring it back, so it is kept in float32: the kernel path then equals the XLA path."""
  x = jnp.full((8, 16), -14.0, jnp.float16).at[:, 0].set(0.0)  # p ~ 8e-7 off the label
  labels = jnp.zeros(8, jnp.int32)
  scale = jnp.float16(2.0**14)
  grads = {impl: jax.grad(lambda x, impl=impl: scale * jaxsoftmax.cross_entropy(
      x, labels, implementation=impl))(x) for impl in ("pallas", "xla")}
  off_label = np.asarray(grads["xla"][:, 1:], np.float32)
  assert (off_label > 0).all()  # representable once scaled: 2^14 * 8e-7 / 8
  parity.assert_close(np.asarray(grads["pallas"]), np.asarray(grads["xla"], np.float64),
                      "float16")


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "softmin", "cross_entropy[mean]",
                                "cross_entropy[none]", "linear_cross_entropy"])
def test_second_derivatives_through_the_kernels(op):
  """grad of grad differentiates the ops' VJP rules, kernels included: they must match XLA's."""
  x = jax.random.normal(jax.random.key(0), (3, 5))
  labels = jnp.array([0, 4, 2])
  w = jax.random.normal(jax.random.key(1), (5, 6))

  def loss(impl):
    if op == "linear_cross_entropy":
      return lambda x: jaxsoftmax.linear_cross_entropy(x, w, labels, label_smoothing=0.1,
                                                       implementation=impl)
    if op.startswith("cross_entropy"):
      reduction = op[len("cross_entropy["):-1]
      return lambda x: jnp.sum(jaxsoftmax.cross_entropy(
          x, labels, weight=jnp.arange(1.0, 6.0), label_smoothing=0.1, reduction=reduction,
          implementation=impl) * jnp.arange(1.0, 1.0 + (3 if reduction == "none" else 1)))
    return lambda x: jnp.sum(getattr(jaxsoftmax, op)(x, implementation=impl) * jnp.cos(x))

  hessian = lambda f: jax.jacrev(jax.grad(f))(x)
  parity.assert_close(np.asarray(hessian(loss("pallas"))), np.asarray(hessian(loss("xla"))),
                      "float32")


def test_vmap_of_the_kernel_path_matches_xla():
  x = jax.random.normal(jax.random.key(0), (4, 3, 7))
  labels = jnp.zeros((4, 3), jnp.int32)
  grad = lambda impl: jax.vmap(jax.grad(lambda x, y: jaxsoftmax.cross_entropy(
      x, y, implementation=impl)))(x, labels)
  parity.assert_close(np.asarray(grad("pallas")), np.asarray(grad("xla")), "float32")
  soft = lambda impl: jax.vmap(lambda x: jaxsoftmax.log_softmax(x, implementation=impl))(x)
  parity.assert_close(np.asarray(soft("pallas")), np.asarray(soft("xla")), "float32")


def test_the_default_leaves_a_few_very_long_rows_to_xla(kernel_table):
  kernel_table(("softmax", "float32", "long"))
  long = jax.ShapeDtypeStruct((8, gpu.ONE_PASS_MAX + 1), jnp.float32)
  many = jax.ShapeDtypeStruct((dispatch.GPU_MIN_ROWS_TWO_PASS, gpu.ONE_PASS_MAX + 1),
                              jnp.float32)
  assert "pallas_call" not in _jaxpr(jaxsoftmax.softmax, long)
  assert "pallas_call" in _jaxpr(jaxsoftmax.softmax, many)
  assert "pallas_call" in _jaxpr(functools.partial(jaxsoftmax.softmax, implementation="pallas"),
                                 long)  # asked for: taken


def test_the_few_long_rows_rule_is_a_gpu_rule(kernel_table):
  """A TPU core walks its grid in sequence, so a few long rows still take the kernels there."""
  kernel_table(("softmax", "float32", "long"), platform="tpu")
  long = jax.ShapeDtypeStruct((8, gpu.ONE_PASS_MAX + 1), jnp.float32)
  assert "pallas_call" in _jaxpr(jaxsoftmax.softmax, long)


def test_linear_chunks_are_larger_on_accelerators():
  from jaxsoftmax._src.linear import default_chunk_size
  assert default_chunk_size(8192, 32768, accelerator=False) == 256  # 32 MiB, measured on CPU
  assert default_chunk_size(8192, 131072, accelerator=True) == dispatch.GPU_MIN_ROWS_TWO_PASS
  assert default_chunk_size(100, 131072, accelerator=True) == 100
  # The floor: a chunk streams all of w, so it has at least 128 rows (or all the rows there are).
  from jaxsoftmax._src.linear import MIN_CHUNK_ROWS
  assert default_chunk_size(64, 262144, accelerator=False) == 64  # one chunk: the naive logits
  assert default_chunk_size(8192, 2**20, accelerator=False) == MIN_CHUNK_ROWS == 128


def _loads(fn, *args):
  (eqn,) = [e for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns if e.primitive.name == "pallas_call"]
  return sum(e.primitive.name == "masked_load" for e in eqn.params["jaxpr"].eqns)


def test_one_pass_triton_kernels_read_each_input_once():
  """The bandwidth promise of one pass: every input is loaded exactly once per program."""
  x = jnp.ones((64, 1000), jnp.bfloat16)
  row, labels = jnp.ones((64, 1)), jnp.zeros((64, 1), jnp.int32)
  opts = dict(log=False, negate=True, temperature=0.5)
  assert _loads(lambda x: gpu.softmax_fwd(x, **opts), x) == 1
  for recompute, inputs in ((False, 2), (True, 4)):  # dy and y; or dy, x and the row max and sum
    assert _loads(lambda x: gpu.softmax_bwd(x, x, row, row, recompute=recompute, **opts),
                  x) == inputs
  w = jnp.ones((1, 1000))
  ce = lambda x: gpu.ce(x, labels, row, row, row, w, grad=True, smooth=True)
  assert _loads(ce, x) == 6  # x, labels, three coefficients, class weights
