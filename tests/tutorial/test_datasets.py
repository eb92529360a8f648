import gzip

import numpy as np
import pytest

from jaxsoftmax.tutorial import datasets

TRAIN_LINE = ("39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, "
              "White, Male, 2174, 0, 40, United-States, <=50K\n")
TEST_LINE = TRAIN_LINE.replace("<=50K", ">50K.")


def test_shipped_adult_loads_every_row_with_13_standardised_features():
  adult = datasets.load_adult()
  assert adult.x_train.shape == (32561, 13) and adult.x_test.shape == (16281, 13)
  assert adult.feature_names == datasets.FEATURES and "fnlwgt" not in adult.feature_names
  x = adult.x_train.astype(np.float64)
  np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(x.std(0), 1, atol=1e-5)
  assert round(float(adult.y_train.mean()), 4) == 0.2408  # UCI's >50K share, train
  assert round(float(adult.y_test.mean()), 4) == 0.2362  # and test (labels ended with '.')
  # '?' is kept as a category, and counted: no row is dropped.
  assert adult.missing == {"workclass": 2799, "occupation": 2809, "native-country": 857}
  assert "?" in adult.categories["workclass"]


def test_adult_parser_handles_header_and_dotted_labels(tmp_path):
  (tmp_path / "adult.data").write_text(TRAIN_LINE * 3 + "\n")
  with gzip.open(tmp_path / "adult.test.gz", "wt") as f:
    f.write("|1x3 Cross validator\n" + TEST_LINE * 2)
  adult = datasets.load_adult(tmp_path)
  assert adult.y_train.tolist() == [0, 0, 0] and adult.y_test.tolist() == [1, 1]


@pytest.mark.parametrize("bad, message", [
    (TRAIN_LINE.replace(", Male", ""), r"adult.data:2: expected 15 comma-separated fields, got 14"),
    (TRAIN_LINE.replace("39,", "thirty-nine,"), r"adult.data:2: column 'age' must be an integer"),
    (TRAIN_LINE.replace("<=50K", "rich"), r"adult.data:2: income must be"),
])
def test_malformed_adult_row_names_file_and_line(tmp_path, bad, message):
  (tmp_path / "adult.data").write_text(TRAIN_LINE + bad)
  with pytest.raises(ValueError, match=message):
    datasets.read_adult_file(tmp_path / "adult.data")


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, n=5, gz=True):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    images_name, labels_name = datasets.MNIST_FILES[split]
    for name, array in ((images_name, rng.integers(0, 256, (n, 28, 28))),
                        (labels_name, rng.integers(0, 10, n))):
      data = _idx(array)
      if gz:
        (directory / f"{name}.gz").write_bytes(gzip.compress(data))
      else:
        (directory / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_idx_files(tmp_path, gz):
  _write_mnist(tmp_path, gz=gz)
  mnist = datasets.load_mnist(tmp_path)
  images, labels = mnist["train"]
  assert images.shape == (5, 28, 28, 1) and images.dtype == np.float32
  assert 0.0 <= images.min() and images.max() <= 1.0 and labels.dtype == np.int32


def test_idx_errors_name_the_file_and_offset(tmp_path):
  good = _idx(np.zeros((2, 28, 28)))
  (tmp_path / "bad_magic").write_bytes(b"\x01\x02" + good[2:])
  with pytest.raises(ValueError, match="bad_magic: bad IDX magic number 0102.* at byte 0"):
    datasets.read_idx(tmp_path / "bad_magic")
  (tmp_path / "short").write_bytes(good[:-10])
  with pytest.raises(ValueError, match=r"short: header promises shape \(2, 28, 28\).*from byte 16"):
    datasets.read_idx(tmp_path / "short")
  (tmp_path / "labels").write_bytes(_idx(np.zeros(3)))
  with pytest.raises(ValueError, match="1 dimensions, expected 3"):
    datasets.read_idx(tmp_path / "labels", ndim=3)
  (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:30])
  with pytest.raises(ValueError, match="cut.gz: corrupt gzip"):
    datasets.read_idx(tmp_path / "cut.gz")


def test_mnist_sample_is_real_and_split_per_class():
  mnist = datasets.load_mnist_sample()
  (x_train, y_train), (x_test, y_test) = mnist["train"], mnist["test"]
  assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
  assert np.bincount(y_test).tolist() == [100] * 10  # stratified
  assert 0.0 == x_train.min() and x_train.max() == 1.0 and x_train.dtype == np.float32
  again = datasets.load_mnist_sample()
  np.testing.assert_array_equal(again["test"][1], y_test)  # deterministic for a seed
  with pytest.raises(ValueError, match="held_out"):
    datasets.load_mnist_sample(held_out=1.5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_idx_round_trips_through_read_idx(tmp_path, dtype, name):
  array = (np.arange(24) - 3).astype(dtype).reshape(2, 3, 4)
  back = datasets.read_idx(datasets.write_idx(tmp_path / name, array))
  assert back.dtype.kind == array.dtype.kind and back.dtype.itemsize == array.dtype.itemsize
  np.testing.assert_array_equal(back, array)
  assert not list(tmp_path.glob("*.tmp"))


def test_write_idx_refuses_dtypes_the_format_lacks(tmp_path):
  with pytest.raises(TypeError, match="array dtype must be one of .* got int64"):
    datasets.write_idx(tmp_path / "a.idx", np.zeros(3, np.int64))
