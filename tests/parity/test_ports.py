"""The parity tool for users' ports finds the faults it claims to find, and passes correct ports.

Planted faults, each a porting slip people make: a missed transpose, a wrong LayerNorm eps, a
dropped bias (missing parameter) and a bias left out of the forward, a softmax over the wrong
dim, a wrong custom VJP that only the gradient shows, a forgotten nonlinearity between layers.
bfloat16 accumulation differences within tolerance, and a half-precision port more accurate than
torch, must *not* fail. Runs on whatever device JAX and torch pick (CPU here; CUDA beside a GPU).
"""

import collections
import dataclasses
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxsoftmax
import jaxsoftmax.nn
from jaxsoftmax import parity
from jaxsoftmax._src.errors import ArgumentError

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 8)).astype(np.float32)
EXAMPLES = pathlib.Path(__file__).parents[2] / "examples"


def _example(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------- compare_functions


@dataclasses.dataclass
class Batch:
  x: np.ndarray
  scale: float


Pairs = collections.namedtuple("Pairs", ["probs", "logp"])


def test_functions_compare_pytrees_leaf_by_leaf_and_differentiate_every_floating_input():
  def ours(batch, extra):
    return Pairs(jaxsoftmax.softmax(batch.x * batch.scale, axis=-1),
                 {"logp": jaxsoftmax.log_softmax(extra[0], axis=0), "n": extra[1]})

  def theirs(batch, extra):
    return Pairs(torch.softmax(batch.x * batch.scale, -1),
                 {"logp": torch.log_softmax(extra[0], 0), "n": extra[1]})

  report = parity.compare_functions(ours, theirs, Batch(X, 2.0), [X[:3], 7],
                                    names=["batch", "extra"])
  report.assert_passed()
  labels = [c.label for c in report.checks]
  assert labels == ["output out.probs", "output out.logp['logp']", "output out.logp['n']",
                    "grad batch.x", "grad extra[0]"]


def test_functions_report_a_structure_mismatch_by_path():
  report = parity.compare_functions(lambda x: {"a": x}, lambda x: {"a": x, "b": x}, X)
  assert not report.passed
  (structure,) = [c for c in report.checks if c.kind == "structure"]
  assert "out['b']" in structure.problem


def test_functions_catch_a_softmax_over_the_wrong_dim_with_a_readable_message():
  report = parity.compare_functions(lambda x: jaxsoftmax.softmax(x, axis=0),
                                    lambda x: torch.softmax(x, dim=-1), X, names=["logits"])
  assert not report.passed
  with pytest.raises(AssertionError) as info:
    report.assert_passed()
  message = str(info.value)
  for part in ("output out", "grad logits", "max abs err", "rtol=1.3e-06", "atol=1e-05",
               "at (", "FAIL"):
    assert part in message, message


def test_functions_catch_a_wrong_custom_vjp_that_the_forward_misses():
  @jax.custom_vjp
  def gelu(x):
    return jax.nn.gelu(x, approximate=False)

  def fwd(x):
    return gelu(x), x

  def bwd(x, g):  # the slip: the derivative of the tanh approximation
    return (g * jax.grad(lambda v: jax.nn.gelu(v, approximate=True))(x),) if x.ndim == 0 else (
        g * jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=True)))(x.ravel()).reshape(
            x.shape),)

  gelu.defvjp(fwd, bwd)
  report = parity.compare_functions(gelu, torch.nn.functional.gelu, X, names=["x"])
  (out,) = [c for c in report.checks if c.kind == "output"]
  (grad,) = [c for c in report.checks if c.kind == "grad"]
  assert out.ok and not grad.ok and not report.passed
  assert parity.compare_functions(gelu, torch.nn.functional.gelu, X, grad=False).passed


def test_functions_nan_and_inf_patterns_must_match():
  x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
  report = parity.compare_functions(lambda a: jnp.log(a), lambda a: torch.log(a) + 0 * a,
                                    x, grad=False)
  assert report.passed  # -inf where both have -inf
  report = parity.compare_functions(lambda a: jnp.log(a), lambda a: torch.log(a + 1e-30),
                                    x, grad=False)
  (out,) = report.checks
  assert not out.ok and out.inf_mismatches == 1 and out.mismatches == 0


def test_functions_layouts_put_nchw_inputs_to_an_nhwc_port_and_compare_in_torchs_layout():
  w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)  # torch OIHW
  images = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)  # torch NCHW

  def port(x, kernel):  # NHWC images, HWIO kernel
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  report = parity.compare_functions(
      port, torch.nn.functional.conv2d, images, w, names=["x", "w"],
      layouts={"x": "NCHW->NHWC", "w": "OIHW->HWIO"}, output_layouts={"out": "NCHW->NHWC"})
  report.assert_passed()
  missed = parity.compare_functions(
      port, torch.nn.functional.conv2d, images, w, names=["x", "w"],
      layouts={"x": "NCHW->NHWC", "w": "OIHW->HWIO"})  # the output's layout forgotten
  assert not missed.passed and "shape" in missed.summary()


def test_functions_bfloat16_accumulation_differences_within_tolerance_do_not_fail():
  x = (3 * RNG.standard_normal((16, 1000))).astype(jnp.bfloat16)
  port = lambda v: jaxsoftmax.log_softmax(v, axis=-1)  # noqa: E731 - float32 inside, one rounding
  original = lambda v: torch.log_softmax(v, -1)  # noqa: E731 - torch's bfloat16 CPU kernel
  forward = parity.compare_functions(port, original, x, grad=False)
  forward.assert_passed()
  (out,) = forward.checks
  assert out.dtype == "bfloat16" and out.max_abs > 0  # they do differ, within tolerance
  # The gradients differ beyond the table (torch's kernel rounds its intermediates); the float64
  # anchor shows ours is the closer one, so the comparison passes.
  parity.compare_functions(port, original, x, anchor="float64").assert_passed()


def test_functions_float64_anchor_accepts_a_more_accurate_half_port_and_only_that():
  x = (3 * RNG.standard_normal((8, 500))).astype(np.float16)
  original = lambda v: torch.log_softmax(v, -1)  # noqa: E731
  plain = parity.compare_functions(lambda v: jaxsoftmax.log_softmax(v, axis=-1), original, x)
  anchored = parity.compare_functions(lambda v: jaxsoftmax.log_softmax(v, axis=-1), original, x,
                                      anchor="float64")
  anchored.assert_passed()
  assert all(c.anchor_error <= c.reference_anchor_error for c in anchored.checks)
  assert not plain.passed  # torch's float16 CPU kernel rounds intermediates: beyond the table
  assert any("float64 anchor" in c.note for c in anchored.checks)
  # jax.nn.log_softmax computes in float16: further from float64 than torch, so still wrong.
  worse = parity.compare_functions(jax.nn.log_softmax, original, x, anchor="float64")
  assert not worse.passed
  (grad,) = [c for c in worse.checks if c.kind == "grad"]
  assert grad.anchor_error > grad.reference_anchor_error


def test_functions_copy_inputs_so_an_in_place_torch_op_reaches_nobody():
  x = X.copy()

  def mutating(t):
    with torch.no_grad():
      t.add_(100.0)
    return t * 1.0

  report = parity.compare_functions(lambda v: v * 1.0, mutating, x, grad=False)
  assert not report.passed  # torch's own result changed ...
  np.testing.assert_array_equal(x, X)  # ... the caller's array did not


def test_functions_tolerance_overrides_and_bad_arguments():
  noisy = lambda v: v + 1e-3  # noqa: E731
  assert not parity.compare_functions(noisy, lambda v: v * 1.0, X).passed
  assert parity.compare_functions(noisy, lambda v: v * 1.0, X, rtol=0, atol=2e-3).passed
  assert parity.compare_functions(
      noisy, lambda v: v * 1.0, X,
      tolerances={"float32": parity.Tolerance(rtol=0, atol=2e-3)}).passed
  with pytest.raises(ArgumentError, match="rtol and atol"):
    parity.compare_functions(noisy, noisy, X, rtol=1e-3)
  with pytest.raises(ArgumentError, match="anchor"):
    parity.compare_functions(noisy, noisy, X, anchor="float32")
  with pytest.raises(ArgumentError, match="NCHW"):
    parity.compare_functions(noisy, noisy, X, layouts={"input0": "NCH->NHW"})
  with pytest.raises(ArgumentError, match="not floating inputs"):
    parity.compare_functions(noisy, noisy, X, grad=["nope"])
  with pytest.raises(TypeError, match="callable"):
    parity.compare_functions(noisy, "torch.softmax", X)
  with pytest.raises(ArgumentError, match="its own name"):
    parity.compare_functions(lambda a, b: a, lambda a, b: a, X, X, names=["x", "x"])


def test_reports_render_as_markdown_json_and_rich():
  report = parity.compare_functions(lambda v: jaxsoftmax.softmax(v, axis=0),
                                    lambda v: torch.softmax(v, -1), X)
  markdown = report.markdown()
  assert "| check | dtype |" in markdown and "FAIL" in markdown
  data = json.loads(report.json())
  assert data["passed"] is False and data["checks"][0]["worst"]
  from rich.console import Console

  console = Console(record=True, width=120)
  report.print(console)
  assert "output out" in console.export_text()


# ---------------------------------------------------------------- compare_modules


class TorchNet(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(8, 8)
    self.norm = torch.nn.LayerNorm(8)
    self.fc2 = torch.nn.Linear(8, 5)
    self.softmax = torch.nn.Softmax(dim=-1)

  def forward(self, x):
    return self.softmax(self.fc2(torch.tanh(self.norm(self.fc1(x)))))


class SquareLinear(nnx.Module):
  """A hand-written Linear keeping torch's (out, in) weight, as some ports do."""

  def __init__(self, n, *, transpose=True, use_bias=True, rngs):
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (n, n)))
    self.bias = nnx.Param(jnp.zeros((n,)))
    self.transpose, self.use_bias = transpose, use_bias

  def __call__(self, x):
    y = x @ (self.weight[...].T if self.transpose else self.weight[...])
    return y + self.bias[...][None] if self.use_bias else y


class Port(nnx.Module):
  def __init__(self, *, transpose=True, fc1_bias=True, eps=1e-5, dim=-1, fc2_bias=True,
               act=jnp.tanh, rngs):
    self.fc1 = SquareLinear(8, transpose=transpose, use_bias=fc1_bias, rngs=rngs)
    self.norm = nnx.LayerNorm(8, epsilon=eps, rngs=rngs)
    self.fc2 = nnx.Linear(8, 5, use_bias=fc2_bias, rngs=rngs)
    self.softmax = jaxsoftmax.nn.Softmax(dim=dim)
    self.act = act

  def __call__(self, x):
    return self.softmax(self.fc2(self.act(self.norm(self.fc1(x)))))


def _modules(**slip):
  torch.manual_seed(0)
  original = TorchNet()
  with torch.no_grad():
    original.norm.weight.uniform_(0.5, 1.5)
    original.norm.bias.uniform_(-0.5, 0.5)
  return Port(rngs=nnx.Rngs(0), **slip), original


def test_modules_pass_a_correct_port_with_every_parameters_gradient_by_name():
  port, original = _modules()
  report = parity.compare_modules(port, original, X, names=["x"])
  report.assert_passed()
  grads = {c.name for c in report.checks if c.kind == "grad"}
  assert grads == {f"params['{n}']" for n, _ in original.named_parameters()} | {"x"}
  assert [layer.torch_name for layer in report.layers] == ["fc1", "norm", "fc2", "softmax"]
  assert report.first_divergence is None and not report.divergence


@pytest.mark.parametrize("slip, layer", [
    ({"transpose": False}, "fc1"),  # x @ W with torch's (out, in) W: the missed transpose
    ({"eps": 1e-2}, "norm"),  # a LayerNorm eps that is not torch's (large: a small net hides 1e-6)
    ({"fc1_bias": False}, "fc1"),  # the bias is a parameter, but the forward drops it
    ({"dim": 0}, "softmax"),  # softmax over the batch
])
def test_modules_name_the_first_diverging_submodule(slip, layer):
  port, original = _modules(**slip)
  report = parity.compare_modules(port, original, X, names=["x"])
  assert not report.passed
  assert report.first_divergence is not None, report.summary()
  assert report.first_divergence.torch_name == layer, report.summary()
  assert f"torch `{layer}`" in report.divergence


def test_modules_locate_a_slip_between_submodules():
  port, original = _modules(act=jax.nn.relu)  # tanh in torch's forward, relu in the port's
  report = parity.compare_modules(port, original, X, names=["x"])
  assert not report.passed and report.first_divergence is None
  assert "after `norm`" in report.divergence and "before `fc2`" in report.divergence


def test_modules_catch_a_wrong_custom_vjp_the_forward_layers_all_pass():
  @jax.custom_vjp
  def tanh(x):
    return jnp.tanh(x)

  tanh.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x)) ** 2 * 1.01,))
  port, original = _modules(act=tanh)
  report = parity.compare_modules(port, original, X, names=["x"])
  assert not report.passed
  assert all(layer.output.ok for layer in report.layers)
  assert [c for c in report.checks if c.kind == "output"][0].ok
  bad = {c.name for c in report.failures}
  assert "params['fc1.weight']" in bad and "params['fc2.weight']" not in bad
  assert "backward" in report.divergence


def test_modules_list_a_dropped_bias_and_bad_shapes_before_running():
  port, original = _modules(fc2_bias=False)
  with pytest.raises(parity.WeightMappingError, match=r"torch parameters with no JAX match: "
                                                      r"\['fc2.bias'\]"):
    parity.compare_modules(port, original, X)
  wide = Port(rngs=nnx.Rngs(0))
  wide.fc2 = nnx.Linear(8, 6, rngs=nnx.Rngs(0))
  with pytest.raises(parity.WeightMappingError, match=r"fc2.kernel <- fc2.weight: torch \(5, 8\)"
                                                      r", \(8, 5\) in JAX's layout, JAX \(8, 6\)"):
    parity.compare_modules(wide, original, X)


class TorchZoo(torch.nn.Module):
  """Embedding, Conv1d, BatchNorm1d, ModuleList, Sequential and a head tied to the embedding."""

  def __init__(self):
    super().__init__()
    self.embed = torch.nn.Embedding(11, 6)
    self.conv = torch.nn.Conv1d(6, 6, kernel_size=3, padding=1)
    self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)])
    self.bn = torch.nn.BatchNorm1d(6)
    self.mlp = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh())

  def forward(self, tokens):
    h = self.conv(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
    for block in self.blocks:
      h = torch.relu(block(h))
    h = self.mlp(self.bn(h.transpose(1, 2)).transpose(1, 2))
    return h @ self.embed.weight.T  # logits through the tied embedding


class NnxZoo(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 6, rngs=rngs)
    self.conv = nnx.Conv(6, 6, kernel_size=(3,), padding=1, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 6, rngs=rngs)])
    self.bn = nnx.BatchNorm(6, rngs=rngs)
    self.mlp = nnx.Sequential(nnx.Linear(6, 6, rngs=rngs), jnp.tanh)
    self.head = nnx.Param(jnp.zeros((11, 6)))  # the port unties it: mapped onto embed.weight

  def __call__(self, tokens):
    h = self.conv(self.embed(tokens))  # channels last throughout
    for block in self.blocks:
      h = jax.nn.relu(block(h))
    return self.mlp(self.bn(h)) @ self.head[...].T


def test_modules_map_embeddings_convs_norm_statistics_lists_sequentials_and_tied_weights():
  torch.manual_seed(0)
  original = TorchZoo()
  with torch.no_grad():
    original.bn.running_mean.uniform_(-0.5, 0.5)
    original.bn.running_var.uniform_(0.5, 2.0)
  tokens = np.random.default_rng(0).integers(0, 11, (2, 7))
  port = NnxZoo(nnx.Rngs(0))
  with pytest.raises(parity.WeightMappingError, match=r"JAX parameters with no torch match: "
                                                      r"\['head'\]"):
    parity.compare_modules(port, original, tokens)
  report = parity.compare_modules(port, original, tokens, names=["tokens"],
                                  mapping={"head": ("embed.weight", "same")})
  report.assert_passed()
  np.testing.assert_array_equal(port.bn.mean[...], original.bn.running_mean.numpy())
  np.testing.assert_array_equal(port.conv.kernel[...],
                                original.conv.weight.detach().numpy().transpose(2, 1, 0))
  assert "grad params['embed.weight']" in [c.label for c in report.checks]
  assert {layer.torch_name for layer in report.layers} >= {"embed", "conv", "blocks.0", "bn",
                                                           "mlp.0"}


def test_modules_copy_weights_both_ways_and_never_alias():
  port, original = _modules()
  parity.compare_modules(port, original, X, localize=False).assert_passed()
  before = np.asarray(port.fc2.kernel[...]).copy()
  with torch.no_grad():
    for p in original.parameters():
      p.add_(1.0)
  np.testing.assert_array_equal(port.fc2.kernel[...], before)  # torch's update stays in torch
  port, original = _modules()
  port.fc2.kernel[...] = port.fc2.kernel[...] + 3.0
  parity.compare_modules(port, original, X, weights="jax", localize=False).assert_passed()
  np.testing.assert_array_equal(original.fc2.weight.detach().numpy(), np.asarray(port.fc2.kernel[...]).T)
  port.fc2.kernel[...] = port.fc2.kernel[...] + 1.0
  assert not np.allclose(original.fc2.weight.detach().numpy(), np.asarray(port.fc2.kernel[...]).T)


def test_modules_user_mapping_and_rename_rules():
  port, original = _modules()
  report = parity.compare_modules(
      port, original, X, rename=[(r"^norm\.", "norm.")],
      mapping={"fc2.kernel": "fc2.weight", "fc2.bias": ("fc2.bias", "same")})
  report.assert_passed()
  with pytest.raises(parity.WeightMappingError, match="JAX parameter 'nope'"):
    parity.compare_modules(port, original, X, mapping={"nope": "fc2.weight"})


def test_modules_on_a_plain_callable_with_named_intermediates():
  port, original = _modules()
  parity.compare_modules(port, original, X, localize=False)  # port now holds torch's weights
  params = {"fc1": {"weight": np.asarray(port.fc1.weight[...]), "bias": np.asarray(port.fc1.bias[...])},
            "norm": {"scale": np.asarray(port.norm.scale[...]), "bias": np.asarray(port.norm.bias[...])},
            "fc2": {"kernel": np.asarray(port.fc2.kernel[...]), "bias": np.asarray(port.fc2.bias[...])}}

  def layers(p, x):
    fc1 = x @ p["fc1"]["weight"].T + p["fc1"]["bias"][None]
    mean, var = fc1.mean(-1, keepdims=True), fc1.var(-1, keepdims=True)
    norm = (fc1 - mean) / jnp.sqrt(var + 1e-5) * p["norm"]["scale"][None] + p["norm"]["bias"][None]
    fc2 = jnp.tanh(norm) @ p["fc2"]["kernel"] + p["fc2"]["bias"][None]
    return {"fc1": fc1, "norm": norm, "fc2": fc2, "softmax": jax.nn.softmax(fc2, -1)}

  report = parity.compare_modules(lambda p, x: layers(p, x)["softmax"], original, X,
                                  params=params, intermediates=layers)
  report.assert_passed()
  assert [layer.jax_name for layer in report.layers] == ["fc1", "norm", "fc2", "softmax"]
  assert report.jax_variables is not None


def test_the_transformer_example_names_norm2_for_the_eps_slip():
  example = _example("12_port_a_transformer_layer")
  pair = example.make_slipped_pair()
  report = parity.compare_modules(pair.jax, pair.torch, *pair.inputs, **pair.options)
  assert not report.passed and report.first_divergence.torch_name == "norm2"
  good = example.make_pair()
  parity.compare_modules(good.jax, good.torch, *good.inputs, **good.options).assert_passed()


def test_the_linen_example_pairs_auto_names_by_rules():
  example = _example("14_port_a_linen_model")
  torch.manual_seed(0)
  original = example.TorchMLP()
  module = example.LinenMLP(relu=True)
  variables = module.init(jax.random.key(0), jnp.asarray(X))
  report = parity.compare_modules(module, original, X, params=variables, rename=example.RENAME)
  report.assert_passed()
  assert [layer.jax_name for layer in report.layers] == ["Dense_0", "BatchNorm_0", "Dense_1"]


# ---------------------------------------------------------------- compare_training


def _income_batches(n=20):
  rng = np.random.default_rng(1)
  batches = []
  for _ in range(n):
    x = rng.standard_normal((32, 13)).astype(np.float32)
    batches.append((x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)))
  return batches


def test_training_catches_mismatched_hyper_parameters_and_draws_the_curves(tmp_path):
  import optax

  from jaxsoftmax.tutorial import models, torch_models

  torch.manual_seed(0)
  slipped = (optax.adam(1e-3, eps=1e-6),  # optax's eps beside torch's 1e-8: a real porting slip
             lambda p: torch.optim.Adam(p, lr=1e-3))
  report = parity.compare_training(models.IncomeClassifier(rngs=nnx.Rngs(0)),
                                   torch_models.IncomeClassifier(), _income_batches(8),
                                   optimizer=slipped, plot=tmp_path / "drift.png")
  assert not report.passed and "parameter drift" in report.summary()
  assert (tmp_path / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(report.steps) == 8 and report.steps[0]["step"] == 1
  with pytest.raises(ArgumentError, match="takes"):
    parity.compare_training(models.IncomeClassifier(rngs=nnx.Rngs(0)),
                            torch_models.IncomeClassifier(), _income_batches(1), momentum=0.9)


def test_modules_a_layer_off_tolerance_that_the_output_absorbs_is_a_note_not_a_divergence():
  class Original(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.fc = torch.nn.Linear(8, 4)
      self.relu = torch.nn.ReLU()

    def forward(self, x):
      return self.relu(self.fc(x))

  class Port(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
      return jax.nn.relu(self.fc(x))

  torch.manual_seed(0)
  original = Original()
  port = Port(nnx.Rngs(0))
  parity.compare_modules(port, original, X, localize=False)  # torch's weights into the port
  linear = port.fc
  plain_call = type(linear).__call__

  class Negatives(type(linear)):  # negative pre-activations doubled: the ReLU hides it
    def __call__(self, x):
      y = plain_call(self, x)
      return jnp.where(y < 0, 2 * y, y)

  linear.__class__ = Negatives
  report = parity.compare_modules(port, original, X, names=["x"])
  report.assert_passed()
  assert [layer.output.ok for layer in report.layers] == [False]
  assert not report.divergence and "not a failure" in " ".join(report.notes)
  assert "**first divergence**" not in report.markdown()


def test_training_a_linen_port_and_a_plain_callable():
  example = _example("14_port_a_linen_model")
  rng = np.random.default_rng(0)
  batches = [(rng.standard_normal((16, 8)).astype(np.float32), rng.integers(0, 3, 16))
             for _ in range(6)]
  torch.manual_seed(0)
  module = example.LinenMLP()
  variables = module.init(jax.random.key(0), jnp.asarray(X))
  report = parity.compare_training(module, example.TorchMLP(), batches, params=variables,
                                   rename=example.RENAME, optimizer="sgd", lr=0.1, momentum=0.9)
  report.assert_passed()
  assert set(report.jax_variables) == {"params", "batch_stats"}  # trained, returned

  class Original(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.w = torch.nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
      return torch.tanh(x @ self.w.T)

  params = {"w": np.zeros((3, 8), np.float32)}
  report = parity.compare_training(lambda p, x: jnp.tanh(x @ p["w"].T), Original(), batches,
                                   params=params, optimizer="adamw", lr=1e-2)
  report.assert_passed()
  assert not np.array_equal(report.jax_variables["w"], params["w"])  # the caller's left as given
  np.testing.assert_array_equal(params["w"], 0.0)
