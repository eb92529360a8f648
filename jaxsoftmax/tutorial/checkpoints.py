"""Resumable training checkpoints: atomic, verified, and enough to continue bitwise identically.

A checkpoint is one safetensors file ``step-<step>.safetensors`` holding every array of the model's
and the optimizer's NNX state (keyed by their paths) plus JSON metadata: the step, the data-order
state (NumPy's bit-generator state at the start of the epoch and the position in it), the losses so
far, and the SHA-256 of the tensor payload. It is written to a temporary file, flushed to disk and
renamed, so a reader sees the old checkpoint set or the new one, never half a file; a kill during
the write leaves only a ``.tmp`` that :func:`latest` ignores. :func:`latest` verifies the hash and
falls back to the newest checkpoint that verifies, so a damaged file never becomes "latest".
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import warnings

import jax
import numpy as np
from flax import nnx

from jaxsoftmax._src import files
from jaxsoftmax._src.copies import jax_copy

__all__ = ["save", "latest", "restore", "CheckpointError"]

_NAME = re.compile(r"^step-(\d{9})\.safetensors$")


class CheckpointError(ValueError):
  """A checkpoint file that is truncated, corrupt, or does not match the model it is loaded into."""


def _flat(state) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _digest(arrays: dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for key in sorted(arrays):
    h.update(key.encode())
    h.update(str(arrays[key].dtype).encode())
    h.update(repr(arrays[key].shape).encode())
    h.update(np.ascontiguousarray(arrays[key]).tobytes())
  return h.hexdigest()


def save(directory, step: int, model: nnx.Module, optimizer: nnx.Optimizer, meta: dict,
         keep: int = 2) -> pathlib.Path:
  """Writes ``directory/step-<step>.safetensors`` atomically; keeps the newest ``keep`` files."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {f"model{k}": v for k, v in _flat(nnx.state(model)).items()}
  arrays |= {f"optimizer{k}": v for k, v in _flat(nnx.state(optimizer)).items()}
  metadata = {"step": str(step), "sha256": _digest(arrays), "meta": json.dumps(meta)}
  path = directory / f"step-{step:09d}.safetensors"
  files.atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
  for old in sorted(p for p in directory.iterdir() if _NAME.match(p.name))[:-keep]:
    old.unlink()
  return path


def _read(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
  from safetensors import SafetensorError, safe_open  # noqa: PLC0415
  from safetensors.numpy import load_file  # noqa: PLC0415

  try:
    with safe_open(str(path), "numpy") as f:
      metadata = f.metadata() or {}
    arrays = load_file(str(path))
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from e
  if "sha256" not in metadata or "meta" not in metadata:
    raise CheckpointError(f"{path}: not a jaxsoftmax training checkpoint (no sha256/meta)")
  if _digest(arrays) != metadata["sha256"]:
    raise CheckpointError(f"{path}: SHA-256 of the tensors differs from the one recorded")
  return arrays, json.loads(metadata["meta"])


def latest(directory) -> tuple[pathlib.Path, dict[str, np.ndarray], dict] | None:
  """The newest checkpoint in ``directory`` that verifies, or None; damaged ones are skipped with
  a warning naming them (and left in place for inspection)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return None
  for path in sorted((p for p in directory.iterdir() if _NAME.match(p.name)), reverse=True):
    try:
      arrays, meta = _read(path)
    except CheckpointError as e:
      warnings.warn(f"skipping damaged checkpoint: {e}", stacklevel=2)
      continue
    return path, arrays, meta
  return None


def restore(arrays: dict[str, np.ndarray], model: nnx.Module, optimizer: nnx.Optimizer,
            source: str = "checkpoint") -> None:
  """Loads the arrays saved by :func:`save` into ``model`` and ``optimizer`` in place."""
  expected, updates = set(), []
  for prefix, obj in (("model", model), ("optimizer", optimizer)):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.state(obj))
    new = []
    for path, leaf in leaves:
      key = prefix + jax.tree_util.keystr(path)
      expected.add(key)
      if key not in arrays:
        raise CheckpointError(f"{source}: missing {key}")
      value = arrays[key]
      if value.shape != np.shape(leaf) or value.dtype != np.asarray(leaf).dtype:
        raise CheckpointError(f"{source}: {key} has shape {value.shape} {value.dtype}, the model "
                              f"expects {np.shape(leaf)} {np.asarray(leaf).dtype}")
      new.append(jax_copy(value))  # the caller's arrays stay the caller's
    updates.append((obj, jax.tree_util.tree_unflatten(treedef, new)))
  extra = sorted(set(arrays) - expected)
  if extra:
    raise CheckpointError(f"{source}: arrays the model does not have: {extra[:5]}")
  for obj, state in updates:  # only once everything matched: never half a restore
    nnx.update(obj, state)
