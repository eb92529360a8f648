"""Weights between the Flax models (:mod:`jaxsoftmax.tutorial.models`, and
:class:`jaxsoftmax.nn.AdaptiveLogSoftmaxWithLoss`) and their torch twins.

Layouts: ``nn.Linear.weight`` ``(out, in)`` <-> ``nnx.Linear.kernel`` ``(in, out)``;
``nn.Conv2d.weight`` ``(O, I, kH, kW)`` <-> ``nnx.Conv.kernel`` ``(kH, kW, I, O)``; biases as they
are. The CNN flattens in NCHW order in its forward pass, so ``fc1`` needs no permutation.

Weights are always copied across the boundary, never aliased (:mod:`jaxsoftmax._src.copies`): after
:func:`from_torch` or :func:`to_torch`, updating either model in place leaves the other unchanged.

Files are read without running code from them: safetensors holds only tensors, and ``.pt``/``.pth``
go through ``torch.load(weights_only=True)``, which refuses pickled objects other than tensors.
"""

from __future__ import annotations

import collections
import pathlib
from collections.abc import Mapping

import numpy as np
from flax import nnx

from jaxsoftmax._src.copies import jax_copy, numpy_copy, torch_copy
from jaxsoftmax._src.errors import ArgumentError

__all__ = ["from_torch", "to_torch", "torch_layout", "load_state_dict"]


def _layers(model, prefix: str = "") -> dict[str, nnx.Module]:
  """The model's Linear and Conv layers under the torch twin's dotted names (``fc1``, or
  ``tail.0.1`` inside lists such as :class:`jaxsoftmax.nn.AdaptiveLogSoftmaxWithLoss`'s)."""
  items = enumerate(model) if isinstance(model, nnx.List) else vars(model).items()
  layers = {}
  for name, layer in items:
    if isinstance(layer, (nnx.Linear, nnx.Conv)):
      layers[f"{prefix}{name}"] = layer
    elif isinstance(layer, (nnx.List, nnx.Module)):
      layers.update(_layers(layer, f"{prefix}{name}."))
  return layers


def _to_torch_layout(layer, kernel: np.ndarray) -> np.ndarray:
  return kernel.T if isinstance(layer, nnx.Linear) else kernel.transpose(3, 2, 0, 1)


def _from_torch_layout(layer, weight: np.ndarray) -> np.ndarray:
  return weight.T if isinstance(layer, nnx.Linear) else weight.transpose(2, 3, 1, 0)


def _expected_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for name, layer in _layers(model).items():
    kernel = np.asarray(layer.kernel[...])
    shapes[f"{name}.weight"] = _to_torch_layout(layer, kernel).shape
    if layer.bias is not None:
      shapes[f"{name}.bias"] = tuple(layer.bias[...].shape)
  return shapes


def _as_numpy(value, key: str) -> np.ndarray:
  try:
    return numpy_copy(value)
  except Exception as e:  # noqa: BLE001 - name the key whatever went wrong
    raise ArgumentError(f"from_torch: state_dict[{key!r}] is not an array: "
                        f"{type(value).__name__}") from e


def from_torch(model: nnx.Module, state_dict: Mapping[str, object]) -> nnx.Module:
  """Loads a torch ``state_dict`` (tensors or arrays) into ``model`` in place and returns it.

  Raises:
    ArgumentError: (a ``ValueError`` and ``RuntimeError``, as torch's ``load_state_dict``) naming
      missing and unexpected keys, or a key whose shape differs (both shapes, torch layout).
  """
  expected = _expected_shapes(model)
  arrays = {key: _as_numpy(value, key) for key, value in state_dict.items()}
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  if missing or unexpected:
    raise ArgumentError(f"from_torch: state_dict does not match {type(model).__name__}: "
                        f"missing keys {missing}, unexpected keys {unexpected}.")
  for key, shape in expected.items():
    if arrays[key].shape != shape:
      raise ArgumentError(f"from_torch: state_dict[{key!r}] has shape {arrays[key].shape}; "
                          f"{type(model).__name__} expects {shape} (torch layout).")
  for name, layer in _layers(model).items():
    kernel = _from_torch_layout(layer, arrays[f"{name}.weight"])
    layer.kernel[...] = jax_copy(kernel, layer.kernel[...].dtype)
    if layer.bias is not None:
      layer.bias[...] = jax_copy(arrays[f"{name}.bias"], layer.bias[...].dtype)
  return model


def torch_layout(model: nnx.Module) -> "collections.OrderedDict[str, np.ndarray]":
  """The model's weights as NumPy arrays under torch's keys and layouts (no torch needed); fresh
  copies, writable, sharing no memory with the model."""
  state = collections.OrderedDict()
  for name, layer in _layers(model).items():
    state[f"{name}.weight"] = numpy_copy(_to_torch_layout(layer, np.asarray(layer.kernel[...])))
    if layer.bias is not None:
      state[f"{name}.bias"] = numpy_copy(layer.bias[...])
  return state


def to_torch(model: nnx.Module) -> "collections.OrderedDict[str, object]":
  """The model's weights as a torch ``state_dict`` that ``load_state_dict(strict=True)`` accepts;
  the tensors share no memory with the model."""
  return collections.OrderedDict(
      (key, torch_copy(value)) for key, value in torch_layout(model).items())


def load_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors``, ``.pt`` or ``.pth`` file of tensors as NumPy arrays, safely.

  Never unpickles arbitrary objects. Raises ``FileNotFoundError`` for a missing file and
  ``ValueError`` naming the file for an unsupported suffix, a file that would run code when
  unpickled, or a truncated or corrupt one.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no weights file at {path}")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
      return {key: numpy_copy(value) for key, value in load_file(path).items()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
      raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
  if suffix not in (".pt", ".pth"):
    raise ValueError(f"{path}: unsupported weights format {suffix!r}; expected .safetensors, .pt "
                     "or .pth")
  import pickle  # noqa: PLC0415

  import torch  # noqa: PLC0415

  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(f"{path}: refused to load: the file holds objects other than tensors, and "
                     f"unpickling them could run code ({str(e).splitlines()[0]})") from e
  except Exception as e:  # noqa: BLE001 - truncated zips, bad magic numbers, ...
    raise ValueError(f"{path}: truncated or corrupt weights file ({type(e).__name__}: {e})") from e
  if not isinstance(loaded, Mapping) or not all(hasattr(v, "detach") for v in loaded.values()):
    raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors); got "
                     f"{type(loaded).__name__}")
  return {key: numpy_copy(value) for key, value in loaded.items()}
