"""The Flax classifiers against their torch twins: same outputs from the same weights, strict
round-trips, clear errors, safe loading, PyTorch's initialisation, and training parity."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jaxsoftmax import interop, models, torch_models
from jaxsoftmax._errors import ArgumentError
from jaxsoftmax.training import train_step

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


def test_twenty_adam_steps_match_torch():
  """Same initial weights, same batches: the loss curves agree within 1e-5."""
  torch.manual_seed(0)
  theirs = torch_models.IncomeClassifier()
  ours = interop.from_torch(models.IncomeClassifier(rngs=nnx.Rngs(0)), theirs.state_dict())
  rng = np.random.default_rng(0)
  xs = [rng.standard_normal((64, 13)).astype(np.float32) for _ in range(20)]
  batches = [(x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)) for x in xs]  # learnable labels
  torch_opt = torch.optim.Adam(theirs.parameters(), lr=1e-3)
  with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 counts
    optimizer = nnx.Optimizer(ours, optax.adam(1e-3), wrt=nnx.Param)
    ours_losses = [float(train_step(ours, optimizer, jnp.asarray(x), jnp.asarray(y))[0])
                   for x, y in batches]
  their_losses = []
  for x, y in batches:
    torch_opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    torch_opt.step()
    their_losses.append(loss.item())
  np.testing.assert_allclose(ours_losses, their_losses, atol=1e-5, rtol=0)
  assert their_losses[-1] < their_losses[0]
