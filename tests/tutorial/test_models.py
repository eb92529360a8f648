"""The Flax classifiers against their torch twins: same outputs from the same weights, strict
round-trips, clear errors, safe loading, PyTorch's initialisation, and training parity."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jaxsoftmax import parity
from jaxsoftmax.tutorial import interop, models, torch_models
from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax.tutorial.training import train_step

PAIRS = [(models.IncomeClassifier, torch_models.IncomeClassifier, (8, 13)),
         (models.DigitClassifier, torch_models.DigitClassifier, (8, 28, 28, 1))]


def _inputs(shape, seed=0):
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  torch_x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)
  return x, torch_x


@pytest.mark.parametrize("flax_cls, torch_cls, shape", PAIRS, ids=["income", "digits"])
def test_from_torch_gives_torch_outputs(flax_cls, torch_cls, shape):
  torch.manual_seed(0)
  theirs = torch_cls().eval()
  ours = interop.from_torch(flax_cls(rngs=nnx.Rngs(1)), theirs.state_dict())
  x, torch_x = _inputs(shape)
  with torch.no_grad():
    expected = theirs(torch_x).numpy()
  np.testing.assert_allclose(ours(jnp.asarray(x)), expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(models.predict_proba(ours, jnp.asarray(x)),
                             torch.softmax(torch.from_numpy(expected), 1).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("flax_cls, torch_cls, shape", PAIRS, ids=["income", "digits"])
def test_to_torch_round_trips_strictly(flax_cls, torch_cls, shape):
  ours = flax_cls(rngs=nnx.Rngs(3))
  theirs = torch_cls()
  theirs.load_state_dict(interop.to_torch(ours), strict=True)
  x, torch_x = _inputs(shape, seed=1)
  with torch.no_grad():
    np.testing.assert_allclose(theirs(torch_x).numpy(), ours(jnp.asarray(x)), atol=1e-5, rtol=0)
  again = interop.from_torch(flax_cls(rngs=nnx.Rngs(4)), interop.to_torch(ours))
  for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(again))):
    np.testing.assert_array_equal(a, b)


def test_state_dict_errors_name_keys_and_shapes():
  state = torch_models.IncomeClassifier().state_dict()
  model = models.IncomeClassifier(rngs=nnx.Rngs(0))
  missing = {k: v for k, v in state.items() if k != "fc2.bias"}
  with pytest.raises(ArgumentError, match=r"missing keys \['fc2.bias'\]"):
    interop.from_torch(model, missing)
  with pytest.raises(ArgumentError, match=r"unexpected keys \['extra.weight'\]"):
    interop.from_torch(model, {**state, "extra.weight": torch.zeros(1)})
  bad = {**state, "fc1.weight": torch.zeros(32, 13)}
  with pytest.raises(ArgumentError, match=r"fc1.weight.*\(32, 13\).*\(64, 13\)"):
    interop.from_torch(model, bad)
  with pytest.raises(RuntimeError):  # also what torch's load_state_dict raises
    interop.from_torch(model, missing)


def test_initialisation_follows_pytorch():
  model = models.DigitClassifier(rngs=nnx.Rngs(0))
  for layer, fan_in in ((model.conv1, 25), (model.conv2, 150), (model.fc1, 256), (model.fc3, 84)):
    bound = 1 / np.sqrt(fan_in)
    for param in (layer.kernel[...], layer.bias[...]):
      values = np.asarray(param)
      assert np.abs(values).max() <= bound
    kernel = np.asarray(layer.kernel[...])
    # uniform(-b, b) has std b / sqrt(3); lecun_normal (Flax's default) would give ~1.7x that
    assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.15
    assert np.abs(np.asarray(layer.bias[...])).max() > 0  # not Flax's zero bias


def test_digit_classifier_rejects_nchw_with_a_hint():
  with pytest.raises(ValueError, match="transpose"):
    models.DigitClassifier(rngs=nnx.Rngs(0))(jnp.zeros((2, 1, 28, 28)))


def test_predict_digit_single_and_batch():
  model = models.DigitClassifier(rngs=nnx.Rngs(0))
  digit, probs = models.predict_digit(model, np.zeros((28, 28), np.float32))
  assert digit.shape == () and probs.shape == (10,)
  np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
  digits, probs = models.predict_digit(model, np.zeros((3, 28, 28, 1), np.float32))
  assert digits.shape == (3,) and probs.shape == (3, 10)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_state_dict_round_trip(tmp_path, suffix):
  state = torch_models.IncomeClassifier().state_dict()
  path = tmp_path / f"w{suffix}"
  if suffix == ".pt":
    torch.save(state, path)
  else:
    from safetensors.torch import save_file
    save_file(dict(state), path)
  loaded = interop.load_state_dict(path)
  assert set(loaded) == set(state)
  model = interop.from_torch(models.IncomeClassifier(rngs=nnx.Rngs(0)), loaded)
  np.testing.assert_array_equal(np.asarray(model.fc3.bias[...]), state["fc3.bias"].numpy())


class _Exploit:
  def __reduce__(self):  # unpickling this would call open(...) and create a file
    return (open, (str(_Exploit.target), "w"))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
  _Exploit.target = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  torch.save({"fc1.weight": torch.zeros(1), "payload": _Exploit()}, path)
  with pytest.raises(ValueError, match="evil.pt: refused"):
    interop.load_state_dict(path)
  assert not _Exploit.target.exists()


def test_truncated_and_unsupported_files_name_the_file(tmp_path):
  path = tmp_path / "cut.pt"
  torch.save(torch_models.IncomeClassifier().state_dict(), path)
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(ValueError, match="cut.pt: truncated or corrupt"):
    interop.load_state_dict(path)
  bad = tmp_path / "w.safetensors"
  bad.write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="w.safetensors"):
    interop.load_state_dict(bad)
  with pytest.raises(ValueError, match="unsupported"):
    (tmp_path / "w.bin").write_bytes(b"")
    interop.load_state_dict(tmp_path / "w.bin")
  with pytest.raises(FileNotFoundError):
    interop.load_state_dict(tmp_path / "absent.pt")


def _snapshot(model) -> list[np.ndarray]:
  return [np.array(leaf, copy=True) for leaf in jax.tree.leaves(nnx.state(model))]


def _assert_bitwise_unchanged(model, before):
  after = jax.tree.leaves(nnx.state(model))
  assert len(after) == len(before)
  for a, b in zip(after, before):
    np.testing.assert_array_equal(np.asarray(a), b, strict=True)


def _batch(shape, seed):
  """A batch for either tutorial model in torch's layout, with learnable labels."""
  rng = np.random.default_rng(seed)
  if len(shape) == 4:  # MNIST-like pixels in [0, 1]; the label is the brightest row band
    x = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    y = x[:, :20, :, 0].reshape(len(x), 10, -1).mean(-1).argmax(-1).astype(np.int64)
    return x, y
  x = rng.standard_normal(shape).astype(np.float32)
  return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _torch_x(x):  # torch's NCHW for the digits model, (N, features) for income
  return torch.tensor(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x)


def _torch_adam_steps(model, shape, steps=3):
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
  for i in range(steps):
    x, y = _batch(shape, seed=i)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(_torch_x(x)), torch.tensor(y)).backward()
    optimizer.step()


# Every in-place way a torch model's weights change; none may reach the JAX model (issue 12).
TORCH_UPDATES = {
    "adam-steps": lambda t, shape: _torch_adam_steps(t, shape),
    "add_": lambda t, shape: [p.add_(1.0) for p in t.parameters()],
    "copy_": lambda t, shape: [p.copy_(torch.full_like(p, 7.0)) for p in t.parameters()],
    "load_state_dict": lambda t, shape: t.load_state_dict(
        {k: torch.zeros_like(v) for k, v in t.state_dict().items()}),
}


@pytest.mark.parametrize("update", sorted(TORCH_UPDATES))
@pytest.mark.parametrize("flax_cls, torch_cls, shape", PAIRS, ids=["income", "digits"])
def test_from_torch_copies_so_torch_updates_never_reach_the_jax_model(flax_cls, torch_cls, shape,
                                                                      update):
  torch.manual_seed(0)
  theirs = torch_cls()
  ours = interop.from_torch(flax_cls(rngs=nnx.Rngs(0)), theirs.state_dict())
  before = _snapshot(ours)
  with torch.no_grad() if update != "adam-steps" else torch.enable_grad():
    TORCH_UPDATES[update](theirs, shape)
  _assert_bitwise_unchanged(ours, before)


def test_from_torch_copies_numpy_state_dicts_too():
  state = {k: v.numpy().copy() for k, v in torch_models.IncomeClassifier().state_dict().items()}
  ours = interop.from_torch(models.IncomeClassifier(rngs=nnx.Rngs(0)), state)
  before = _snapshot(ours)
  for value in state.values():
    value += 1.0
  _assert_bitwise_unchanged(ours, before)


@pytest.mark.parametrize("flax_cls, torch_cls, shape", PAIRS, ids=["income", "digits"])
def test_to_torch_copies_in_both_directions(flax_cls, torch_cls, shape):
  ours = flax_cls(rngs=nnx.Rngs(0))
  before = _snapshot(ours)
  state = interop.to_torch(ours)
  saved = {k: v.clone() for k, v in state.items()}
  twin = torch_cls()
  twin.load_state_dict(state, strict=True)
  _torch_adam_steps(twin, shape)  # training the twin ...
  with torch.no_grad():
    for tensor in state.values():  # ... and writing into to_torch's own tensors
      tensor.add_(1.0)
  _assert_bitwise_unchanged(ours, before)  # leave the JAX model as it was
  for array in interop.torch_layout(ours).values():  # NumPy copies: writable, not views
    assert array.flags.writeable
    array += 1.0
  _assert_bitwise_unchanged(ours, before)
  state = interop.to_torch(ours)
  saved = {k: v.clone() for k, v in state.items()}
  with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 counts
    optimizer = nnx.Optimizer(ours, optax.adam(1e-2), wrt=nnx.Param)
    x, y = _batch(shape, seed=0)
    train_step(ours, optimizer, jnp.asarray(x), jnp.asarray(y))  # updating the JAX model
  moved = [not np.array_equal(np.asarray(a), b)
           for a, b in zip(jax.tree.leaves(nnx.state(ours)), before)]
  assert any(moved)  # the JAX step did change the model ...
  for key, tensor in state.items():  # ... and left the torch tensors as they were
    torch.testing.assert_close(tensor, saved[key], rtol=0, atol=0)


@pytest.mark.parametrize("flax_cls, torch_cls, shape", PAIRS, ids=["income", "digits"])
@pytest.mark.parametrize("order", ["jax-first", "interleaved"])
def test_twenty_adam_steps_match_torch(flax_cls, torch_cls, shape, order):
  """Same initial weights, same batches: parity.compare_training's loss curves agree within 1e-5
  and the parameters within 1e-4 (relative), whether all JAX steps run before the torch ones or
  the two alternate step by step (which shared memory would break)."""
  torch.manual_seed(0)
  batches = [_batch(shape, seed=i) for i in range(20)]
  if len(shape) == 4:  # _batch gives the Flax model's NHWC; compare_training takes torch's NCHW
    batches = [(x.transpose(0, 3, 1, 2), y) for x, y in batches]
  report = parity.compare_training(
      flax_cls(rngs=nnx.Rngs(0)), torch_cls(), batches, optimizer="adam", lr=1e-3, order=order,
      layouts={0: "NCHW->NHWC"} if len(shape) == 4 else None,
      loss_tolerance=parity.Tolerance(rtol=0, atol=1e-5), drift_budget=1e-4)
  report.assert_passed()
  assert report.steps[-1]["torch loss"] < report.steps[0]["torch loss"]
