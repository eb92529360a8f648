"""Every boundary copies: arrays crossing between torch, NumPy and JAX, or read from files, share
no memory with their source (issue 12). The model-level tests are in test_models.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jaxsoftmax import nn
from jaxsoftmax.tutorial import checkpoints, interop, models, torch_models
from jaxsoftmax._src.copies import jax_copy, numpy_copy, torch_copy

SOURCES = {
    "torch": lambda: torch.arange(64, dtype=torch.float32),
    "numpy": lambda: np.arange(64, dtype=np.float32),
    "numpy-aligned": lambda: torch.arange(64, dtype=torch.float32).numpy(),  # torch's 64-byte buffer
}


def _bump(source):
  if isinstance(source, torch.Tensor):
    source.add_(1.0)
  else:
    source += 1.0


@pytest.mark.parametrize("make", sorted(SOURCES))
@pytest.mark.parametrize("copy", [numpy_copy, jax_copy, torch_copy], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [None, "same"])
def test_copies_never_see_later_writes_to_their_source(make, copy, dtype):
  source = SOURCES[make]()
  if dtype == "same":  # jnp.asarray(a, a.dtype) is the call that aliased (jax 0.10.2, CPU)
    kind = torch.float32 if copy is torch_copy else np.float32
    result = copy(source, kind)
  else:
    result = copy(source)
  _bump(source)
  np.testing.assert_array_equal(np.array(numpy_copy(result)), np.arange(64, dtype=np.float32))


def test_numpy_copy_is_writable_and_contiguous_even_from_a_jax_array():
  out = numpy_copy(jnp.arange(6.0).reshape(2, 3).T)
  assert out.flags.writeable and out.flags.c_contiguous and out.shape == (3, 2)


def test_bfloat16_crosses_exactly_in_both_directions():
  values = torch.tensor([1.0, -2.5, 3.140625, 1e-3]).to(torch.bfloat16)
  array = numpy_copy(values)
  assert array.dtype == jnp.bfloat16
  back = torch_copy(jax_copy(values))
  assert back.dtype == torch.bfloat16 and torch.equal(back, values)


def test_from_torch_accepts_bfloat16_state_dicts():
  state = {k: v.to(torch.bfloat16) for k, v in torch_models.IncomeClassifier().state_dict().items()}
  ours = interop.from_torch(models.IncomeClassifier(rngs=nnx.Rngs(0)), state)
  np.testing.assert_array_equal(np.asarray(ours.fc3.bias[...]), state["fc3.bias"].float().numpy())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_files_load_into_arrays_of_their_own(tmp_path, suffix):
  state = torch_models.IncomeClassifier().state_dict()
  path = tmp_path / f"w{suffix}"
  torch.save(state, path) if suffix == ".pt" else save_file(dict(state), path)
  first, second = interop.load_state_dict(path), interop.load_state_dict(path)
  for key in first:
    assert first[key].flags.writeable
    first[key] += 1.0
    np.testing.assert_array_equal(second[key], state[key].numpy())
  ours = interop.from_torch(models.IncomeClassifier(rngs=nnx.Rngs(0)), second)
  before = np.array(ours.fc1.kernel[...])
  second["fc1.weight"] += 1.0
  np.testing.assert_array_equal(np.asarray(ours.fc1.kernel[...]), before)


def test_checkpoint_restore_leaves_the_callers_arrays_the_callers(tmp_path):
  model = models.IncomeClassifier(rngs=nnx.Rngs(0))
  with jax.numpy_dtype_promotion("standard"):
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  checkpoints.save(tmp_path, 1, model, optimizer, {"step": 1})
  _, arrays, _ = checkpoints.latest(tmp_path)
  # torch-allocated (64-byte aligned) buffers: the kind jax.device_put wraps without copying
  arrays = {k: torch.tensor(v).numpy() for k, v in arrays.items()}
  fresh = models.IncomeClassifier(rngs=nnx.Rngs(1))
  with jax.numpy_dtype_promotion("standard"):
    fresh_opt = nnx.Optimizer(fresh, optax.adam(1e-3), wrt=nnx.Param)
  checkpoints.restore(arrays, fresh, fresh_opt)
  before = np.array(fresh.fc1.bias[...])
  for value in arrays.values():
    value += 1
  np.testing.assert_array_equal(np.asarray(fresh.fc1.bias[...]), before)


def test_loss_modules_own_their_class_weights():
  weight = torch.ones(3).numpy()  # a 64-byte-aligned buffer that JAX could wrap
  loss = nn.CrossEntropyLoss(weight=weight)
  weight += 1.0
  np.testing.assert_array_equal(np.asarray(loss.weight[...]), np.ones(3, np.float32))
