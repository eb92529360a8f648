"""The CPU-speed building blocks of issue 17 give the values of the plain formulations they
replace: the row max of a 16-bit input taken in its own dtype, the label term added by a select
instead of a scatter, the loss's batch sum without its barrier."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax._src import rows, xent

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("num_classes", [3, 8, 10, 300])  # unrolled on a CPU up to 8 classes
def test_row_max_of_a_narrow_input_is_the_max_of_its_upcast(dtype, num_classes):
  x = RNG.standard_normal((5, num_classes)).astype(np.float32) * 30
  x[1, 2] = np.nan
  x[2, :] = -np.inf
  x = jnp.asarray(x, dtype)
  where = jnp.asarray(RNG.random((5, num_classes)) > 0.3).at[3].set(False)  # row 3: all masked
  for mask in (None, where):
    got = jax.jit(lambda v, w: rows.row_max_of(v, jnp.float32, 1, w))(x, mask)
    want = rows.row_max(x.astype(jnp.float32), 1, mask)
    assert got.dtype == jnp.float32 and got.shape == (5, 1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert np.isnan(np.asarray(rows.row_max_of(x, jnp.float32, 1)[1, 0]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("num_classes", [7, 1024])  # up to rows.SHORT_ROW; above: own_loop
def test_adding_at_the_labels_is_a_scatter_then_one_rounding(dtype, axis, num_classes):
  n = 6 if num_classes <= rows.SHORT_ROW else rows.ROUND_BITS_FROM // num_classes
  dense = RNG.standard_normal((num_classes, n) if axis == 0 else (n, num_classes)) * 1e3
  dense[1, 1], dense[2, 2], dense[3, 3] = np.nan, np.inf, -np.inf
  dense = jnp.asarray(dense, jnp.float32)
  labels = jnp.asarray(RNG.integers(0, num_classes, dense.shape[1 - axis]))
  labels = labels.at[0].set(num_classes + 4)  # out of range: clipped, lands in its own row
  values = jnp.asarray(RNG.standard_normal(labels.shape), jnp.float32)
  got = jax.jit(lambda d, l, v: xent.add_at_labels(d, l, v, num_classes, axis, dtype))(
      dense, labels, values)
  want = xent.scatter_add(dense, labels, values, num_classes, axis).astype(dtype)
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("axis", [0, 1])
def test_one_value_per_row_as_16_bit_patterns_is_a_scatter_then_one_rounding(dtype, axis):
  """xent.one_per_row writes each label's value as its 16-bit pattern: the bits of a float32
  scatter into zeros and one rounding, with ties, overflow, NaN, -0.0 (+0.0 there) and clipped
  labels."""
  n, num_classes = 9, 5
  shape = (num_classes, n) if axis == 0 else (n, num_classes)
  values = np.asarray([1 + 2.0**-8, 1 + 3 * 2.0**-8, 1e6, np.nan, -0.0, -np.inf, 3e-8, -1.5, 0.0],
                      np.float32)  # bfloat16 ties, float16 overflow, subnormal, zeros
  labels = jnp.asarray([0, 4, 2, 1, 3, 7, -2, 4, 0])  # 7 and -2: clipped into range
  got = jax.jit(lambda l, v: xent.one_per_row(shape, l, v, num_classes, axis, dtype))(
      labels, jnp.asarray(values))
  want = xent.scatter_add(jnp.zeros(shape, jnp.float32), labels, jnp.asarray(values), num_classes,
                          axis).astype(dtype)
  assert got.dtype == dtype and got.shape == shape
  np.testing.assert_array_equal(_bits(got), _bits(want))
  with pytest.raises(TypeError, match="16-bit float"):
    xent.one_per_row(shape, labels, jnp.asarray(values), num_classes, axis, jnp.float32)


def _bits(a):
  return np.asarray(a).view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_rounding_once_is_astype_bit_for_bit(dtype):
  """rows.round_once's integer rounding into bfloat16 gives ``astype``'s bits: ties to even,
  subnormals, the overflow to inf, infinities, and a NaN of either sign (XLA's quiet NaN)."""
  special = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
             0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x00000001, 0x007FFFFF, 0x00008000, 0x00018000,
             0x3F808000, 0x3F818000, 0x3F807FFF, 0xBF808000, 0xBF818000]
  bits = RNG.integers(0, 2**32, size=2**16, dtype=np.uint64).astype(np.uint32)
  ties = (bits & 0xFFFF0000) | 0x8000  # exactly halfway between two bfloat16 values
  y = jnp.asarray(np.concatenate([np.array(special, np.uint32), bits, ties]).view(np.float32))
  want = jax.jit(lambda v: v.astype(dtype))(y)
  for own_loop in (True, False):
    got = jax.jit(lambda v, o=own_loop: rows.round_once(v, dtype, own_loop=o))(y)
    assert got.dtype == dtype
    np.testing.assert_array_equal(_bits(got), _bits(want))


def _backward_hlo(f, x, g):
  """The compiled HLO of ``f``'s backward alone, from the forward's residuals (as the sweep's
  ``bwd`` mode times it)."""
  _, vjp = jax.jit(lambda v: jax.vjp(f, v))(x)
  return jax.jit(lambda fn, gg: fn(gg)).lower(vjp, g).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusions")
def test_integer_rounding_only_in_loops_of_its_own():
  """The bfloat16 backwards round by integer operations (rows.round_once) only where XLA:CPU
  runs the rounding in a loop fusion of its own: cross_entropy's label select above
  rows.SHORT_ROW classes from rows.ROUND_BITS_FROM elements, and a rebuilt backward below
  rows.CPU_LOOP_BELOW_ROWS rows. At that many rows XLA makes the rebuilt backward one YNNPACK
  fusion, which the integer operations would split. Fails when a new XLA moves the boundary:
  then re-measure (benchmarks/NOTES.md, fourteenth pass)."""
  import jaxsoftmax  # noqa: PLC0415

  def bits(text):  # the integer rounding's last step: its uint16 result read as bfloat16
    return re.search(r"= bf16\[[0-9,]*\]\{[0-9,]*\} bitcast-convert\(", text) is not None

  def ce(n, c):
    labels = jnp.asarray(RNG.integers(0, c, n), jnp.int32)
    x = jnp.zeros((n, c), jnp.bfloat16)
    return _backward_hlo(lambda v: jaxsoftmax.cross_entropy(v, labels), x,
                         jnp.ones((), jnp.bfloat16))

  assert bits(ce(rows.ROUND_BITS_FROM // 1024, 1024))
  assert not bits(ce(rows.ROUND_BITS_FROM // 1024 - 1, 1024))  # too small
  assert not bits(ce(2 * rows.ROUND_BITS_FROM, rows.SHORT_ROW))  # rows too short
  below, at = rows.CPU_LOOP_BELOW_ROWS - 1, rows.CPU_LOOP_BELOW_ROWS

  def root(text):
    return next(line for line in text.split("ENTRY")[1].splitlines()
                if line.lstrip().startswith("ROOT"))

  # XLA's own decision, on the plain formulation with its own rounding: the boundary is where
  # rows.CPU_LOOP_BELOW_ROWS says.
  def plain(x, g, m, s):
    gc = g.astype(jnp.float32)
    dx = gc + jnp.exp(x.astype(jnp.float32) - m) * (-jnp.sum(gc, 1, keepdims=True) / s)
    return dx.astype(jnp.bfloat16)

  for n, own in ((below, True), (at, False)):
    x, v = jnp.zeros((n, 1024), jnp.bfloat16), jnp.ones((n, 1), jnp.float32)
    assert ("__ynn_fusion" in root(jax.jit(plain).lower(x, x, v, v).compile().as_text())) is (
        not own), n
  # The library's choice on each side of it.
  for n, own in ((below, True), (at, False)):
    x = jnp.zeros((n, 1024), jnp.bfloat16)  # rebuilt from x: at least 2^20 elements
    text = _backward_hlo(lambda v: jaxsoftmax.log_softmax(v, axis=-1), x, x)
    assert bits(text) is own, (n, text)
    assert ("__ynn_fusion" in root(text)) is not own, (n, root(text))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's cost model")
def test_nll_loss_16_bit_patterns_only_where_their_loop_is_on_one_core(monkeypatch):
  """In losses._SCATTER_BAND, nll_loss's bfloat16 gradient is a scatter of 16-bit patterns below
  losses._BITS_BELOW_ROWS examples and a float32 scatter and conversion from there. XLA:CPU
  splits the per-example rounding loop over both cores between those and 4096 examples; fails
  when a new XLA moves that: then re-measure (benchmarks/NOTES.md, fifteenth pass)."""
  import jaxsoftmax  # noqa: PLC0415
  from jaxsoftmax._src import losses  # noqa: PLC0415

  def hlo(n, weighted):  # 4 classes
    labels = jnp.asarray(RNG.integers(-1, 4, n), jnp.int32)
    weight = jnp.linspace(0.5, 2.0, 4).astype(jnp.bfloat16) if weighted else None
    return _backward_hlo(lambda v: jaxsoftmax.nll_loss(v, labels, weight=weight, ignore_index=-1),
                         jnp.zeros((n, 4), jnp.bfloat16), jnp.ones((), jnp.bfloat16))

  below = losses._BITS_BELOW_ROWS - 1
  assert below * 4 >= losses._SCATTER_BAND[0]
  for weighted in (False, True):
    text = hlo(below, weighted)
    assert "u16[" in text and "outer_dimension_partitions" not in text, text
    assert "u16[" not in hlo(losses._BITS_BELOW_ROWS, weighted)
  # The bound's reason: the same backward at 4096 examples runs its rounding on both cores
  # (traced afresh through losses._nll_bwd, so no cached trace holds the bound read before).
  monkeypatch.setattr(losses, "_BITS_BELOW_ROWS", 2**30)
  labels = jnp.asarray(RNG.integers(0, 4, 4096), jnp.int32)
  bwd = jax.jit(lambda l, g: losses._nll_bwd(1, None, "mean", 4, (l, None, None, None, None), g))
  text = bwd.lower(labels, jnp.ones((), jnp.bfloat16)).compile().as_text()
  assert "u16[" in text and "outer_dimension_partitions" in text, text


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint32])
@pytest.mark.parametrize("num_classes", [1, 10, 127, 128, 300])
def test_the_unsigned_range_test_is_the_two_sided_one(dtype, num_classes):
  info = np.iinfo(dtype)
  labels = np.unique(np.clip([info.min, info.min + 1, -1, 0, 1, 9, 10, 126, 127, 128, 255, 299,
                              300, info.max - 1, info.max], info.min, info.max)).astype(dtype)
  got = jax.jit(lambda l: xent.in_range(l, num_classes))(jnp.asarray(labels))
  want = (labels.astype(np.int64) >= 0) & (labels.astype(np.int64) < num_classes)
  np.testing.assert_array_equal(np.asarray(got), want)


def _flops(f, *args) -> float:
  cost = jax.jit(f).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's inline threshold")
def test_tiny_programs_stay_under_xla_cpus_inline_threshold():
  """XLA:CPU runs a program on the caller's thread only under 1000 flops (rows.TINY): a tiny
  log_softmax's fwd+bwd counts no more than jax.nn's (1152 against 960 with max_once's tie and the
  sum copied into both passes), and cross_entropy's float32 backward (1346 when the label's range
  test was in both of its loops) and soft-target forward stay under the line (benchmarks/NOTES.md,
  sixteenth pass)."""
  import jaxsoftmax  # noqa: PLC0415

  x = jnp.asarray(RNG.standard_normal((64, 2)), jnp.float32)

  def fwd_bwd(f):
    def run(v, g):
      y, vjp = jax.vjp(f, v)
      return y, vjp(g)
    return run

  ours = _flops(fwd_bwd(lambda v: jaxsoftmax.log_softmax(v, axis=-1)), x, x)
  peer = _flops(fwd_bwd(lambda v: jax.nn.log_softmax(v, axis=-1)), x, x)
  assert ours <= peer, (ours, peer)
  labels = jnp.asarray(RNG.integers(0, 2, 64), jnp.int32)
  _, vjp = jax.jit(lambda v: jax.vjp(lambda u: jaxsoftmax.cross_entropy(u, labels), v))(x)
  flops = _flops(lambda fn, gg: fn(gg), vjp, jnp.ones((), jnp.float32))
  assert flops < 1000, flops
  probs = jax.nn.softmax(x + 1.0)
  flops = _flops(lambda v, t: jaxsoftmax.cross_entropy(v, t), x, probs)  # 1024 with the dot
  assert flops < 1000, flops


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's loop vectoriser")
def test_a_float32_label_term_of_9_or_10_classes_is_a_scatter_until_its_loop_is_split():
  """cross_entropy's float32 gradient adds the label's term as a one-hot select in the product's
  loop for rows of up to 8 classes; of 9-10 classes as a scatter below rows.ROUND_BITS_FROM
  elements (the select's loop, vectorised across rows, ran 0.86x of optax at (4096, 10)) and as
  the select from there, where XLA splits the loop over threads."""
  import jaxsoftmax  # noqa: PLC0415

  def scatters(n, c):
    labels = jnp.asarray(RNG.integers(0, c, n), jnp.int32)
    text = _backward_hlo(lambda v: jaxsoftmax.cross_entropy(v, labels),
                         jnp.zeros((n, c), jnp.float32), jnp.ones((), jnp.float32))
    return " scatter(" in text

  assert scatters(4096, 10) and scatters(4096, 9)
  assert not scatters(4096, 8) and not scatters(2**17 // 10 + 1, 10)


def test_the_batch_sum_adds_every_term():
  v = jnp.asarray(RNG.standard_normal((64, 3)), jnp.float32)
  exact = np.asarray(v, np.float64)
  # Within float32 rounding of the terms' magnitude: the sum itself may cancel.
  np.testing.assert_allclose(jax.jit(rows.total_sum)(v), exact.sum(),
                             rtol=0, atol=1e-6 * np.abs(exact).sum())
  assert jax.jit(rows.total_sum)(jnp.zeros((0,), jnp.float32)) == 0.0


def _reduces(f, *args) -> bool:
  return "stablehlo.reduce" in jax.jit(f).lower(*args).as_text()


def test_forward_statistics_unroll_up_to_short_stats_and_gradient_sums_up_to_short_row():
  """On a CPU: the row max and the sum of exponentials unroll up to rows.SHORT_STATS classes, other
  row sums up to rows.SHORT_ROW (benchmarks/NOTES.md, thirteenth pass); past those, reductions."""
  if jax.default_backend() != "cpu":
    pytest.skip("the unrolled forms are chosen for a CPU only")
  short, longer = (jnp.ones((4, n), jnp.float32) for n in (rows.SHORT_STATS, rows.SHORT_ROW))
  assert rows.SHORT_STATS < rows.SHORT_ROW
  assert not _reduces(lambda v: rows.row_max(v, 1), short)
  assert not _reduces(lambda v: rows.row_sum(v, 1, stats=True), short)
  assert _reduces(lambda v: rows.row_max(v, 1), longer)
  assert _reduces(lambda v: rows.row_sum(v, 1, stats=True), longer)
  assert not _reduces(lambda v: rows.row_sum(v, 1), longer)
  # A loss's forward sum into the batch sum is a forward statistic too: soft-target cross_entropy
  # at rows.SHORT_ROW classes sums with the peer's own reduction (fifteenth pass), and a dot
  # (rows.row_sum's into_reduction form) only up to rows.SHORT_STATS, and not on a tiny input.
  import jaxsoftmax  # noqa: PLC0415

  def dots(n, c):
    x = jnp.ones((n, c), jnp.float32)
    return "stablehlo.dot_general" in jax.jit(jaxsoftmax.cross_entropy).lower(x, x).as_text()

  n = rows.TINY // rows.SHORT_STATS + 1
  assert dots(n, rows.SHORT_STATS) and not dots(n, rows.SHORT_ROW)
  assert not dots(n - 1, rows.SHORT_STATS)


def test_a_16_bit_losss_row_sums_are_a_dot_that_takes_the_conversion_pass_away():
  """cross_entropy's 16-bit forward on a CPU: from rows.NARROW_DOT_FROM elements and rows longer
  than rows.SHORT_ROW, the sum of exponentials is a dot, so no kernel of the compiled program is
  the input's lone conversion to float32 (optax's is; benchmarks/NOTES.md, seventeenth pass), and
  its temporary memory is optax's plus one row vector and the dot's column of ones. Float32
  inputs, shorter rows and smaller inputs keep the sum."""
  if jax.default_backend() != "cpu":
    pytest.skip("the dot is chosen for a CPU only")
  import jaxsoftmax  # noqa: PLC0415
  import optax  # noqa: PLC0415

  def compiled(f, n, c, dtype):
    x = jax.ShapeDtypeStruct((n, c), dtype)
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)
    return jax.jit(f).lower(x, labels).compile()

  ours = lambda x, t: jaxsoftmax.cross_entropy(x, t)  # noqa: E731
  peer = lambda x, t: optax.softmax_cross_entropy_with_integer_labels(x, t).mean()  # noqa: E731

  def converts_apart(program) -> bool:
    return re.search(r"wrapped_convert[.\d]* = f32\[\d+,\d+\]", program.as_text()) is not None

  c = 128
  n = rows.NARROW_DOT_FROM // c
  assert converts_apart(compiled(peer, n, c, jnp.bfloat16))
  for n_, c_, dtype, dot in [(n, c, jnp.bfloat16, True), (n - 1, c, jnp.bfloat16, False),
                             (n, c, jnp.float32, False), (n * 64, rows.SHORT_ROW, jnp.bfloat16,
                                                          False)]:
    program = compiled(ours, n_, c_, dtype)
    assert (" dot(" in program.as_text()) == dot, (n_, c_, dtype)
    assert not converts_apart(program) or not dot
  for n_, c_ in [(64, 128), (4096, 128), (16, 32768)]:
    temp = {name: compiled(f, n_, c_, jnp.bfloat16).memory_analysis().temp_size_in_bytes
            for name, f in (("ours", ours), ("peer", peer))}
    assert temp["ours"] <= temp["peer"] + 4 * (n_ + c_), (n_, c_, temp)


def test_a_large_soft_target_loss_forms_its_exponentials_in_each_fusion_not_in_a_temporary():
  """Soft-target cross_entropy float32 fwd+bwd on a CPU: from rows.FENCE_FROM_BYTES, the loss's
  x - m and the backward's exp(x - m) are formed from fenced operands (rows.fenced_on_cpu), so the
  compiled program holds no logits-sized temporary (optax's holds two: x - m and its exp, 32 MiB
  each at (65536, 128), one live at a time); below, the program is the unfenced one. Compiled,
  not run."""
  if jax.default_backend() != "cpu":
    pytest.skip("the fence is chosen for a CPU only")
  import jaxsoftmax  # noqa: PLC0415
  import optax  # noqa: PLC0415

  def temp(f, n, c):
    x = jax.ShapeDtypeStruct((n, c), jnp.float32)
    step = jax.jit(jax.value_and_grad(f))
    return step.lower(x, x).compile().memory_analysis().temp_size_in_bytes

  ours = lambda x, t: jaxsoftmax.cross_entropy(x, t)  # noqa: E731
  peer = lambda x, t: optax.softmax_cross_entropy(x, t).mean()  # noqa: E731
  c = 128
  n = rows.FENCE_FROM_BYTES // (4 * c)
  logits_bytes = 4 * n * c
  assert temp(peer, n, c) >= logits_bytes
  assert temp(ours, n, c) < logits_bytes // 16
  # One row fewer: the shared temporary, as optax's.
  assert temp(ours, n - 1, c) >= 4 * (n - 1) * c


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_log_softmax_reads_its_short_row_max_once_and_keeps_torch_order(dtype):
  """The output loop of a short-row log_softmax reads the row max as a vector (rows.max_once)
  instead of recomputing the unrolled chain per element, and its values are still
  ``(x - m) - log s`` bit for bit."""
  from jaxsoftmax._src.family import _log_softmax_xla  # noqa: PLC0415 (the rule itself)

  x = RNG.standard_normal((64, rows.SHORT_STATS)).astype(np.float32) * 8
  x[3, 1] = np.nan
  x[4, :] = -np.inf
  x[5, 2] = np.inf
  x = jnp.asarray(x, dtype)
  got = jax.jit(lambda v: _log_softmax_xla(v, None, (1,), 1.0, False))(x)
  xc = x.astype(jnp.float32)
  # The same row helpers (so the same summation order); what is checked is m's value and the
  # order (x - m) - log s, not how a sum of 8 terms rounds.
  want = jax.jit(lambda v: (v - rows.row_max(v, 1))
                 - jnp.log(rows.row_sum(jnp.exp(v - rows.row_max(v, 1)), 1, stats=True)))(xc)
  want = want.astype(dtype)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  if jax.default_backend() == "cpu":
    hlo = jax.jit(lambda v: _log_softmax_xla(v, None, (1,), 1.0, False)).lower(x).compile()
    text = hlo.as_text()
    root = next(line for line in text.splitlines() if line.lstrip().startswith("ROOT")
                and " fusion(" in line and "ENTRY" not in line)
    body = text.split("%" + root.split("calls=%")[1].split(",")[0] + " ")[1].split("\n}")[0]
    assert "maximum(" not in body, body
