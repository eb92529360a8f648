import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax.tutorial import calibration


def _overconfident(n=20000, classes=5, true_temperature=3.0, seed=0):
  """Labels drawn from softmax(z); the model reports z * T, so T is the right temperature."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, classes)).astype(np.float32) * 1.5
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  labels = np.array([rng.choice(classes, p=row) for row in p])
  return z * true_temperature, labels


def test_fit_temperature_recovers_the_true_temperature():
  logits, labels = _overconfident()
  fitted = calibration.fit_temperature(logits, labels)
  assert abs(fitted / 3.0 - 1) < 0.05
  before = float(calibration.nll(logits, labels))
  after = float(calibration.nll(logits, labels, temperature=fitted))
  assert after < before
  # the optimum: a little either way is worse
  for nearby in (fitted * 0.9, fitted * 1.1):
    assert float(calibration.nll(logits, labels, temperature=nearby)) > after


def test_fit_temperature_leaves_calibrated_logits_near_one_and_ece_drops():
  logits, labels = _overconfident(true_temperature=1.0, seed=1)
  assert abs(calibration.fit_temperature(logits, labels) - 1.0) < 0.05
  logits, labels = _overconfident(seed=2)
  t = calibration.fit_temperature(logits, labels)
  probs = lambda temp: np.asarray(jax.nn.softmax(jnp.asarray(logits) / temp, axis=-1))
  assert (calibration.expected_calibration_error(probs(t), labels)
          < calibration.expected_calibration_error(probs(1.0), labels) / 3)


def test_ece_on_hand_made_cases():
  probs = np.tile([0.9, 0.1], (10, 1))
  assert calibration.expected_calibration_error(probs, np.array([0] * 9 + [1])) == pytest.approx(0.0)
  assert calibration.expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.4)
  # two bins: conf 0.6 (all right: gap 0.4) and conf 1.0 (half right: gap 0.5), equal weight
  probs = np.array([[0.6, 0.4], [0.6, 0.4], [1.0, 0.0], [1.0, 0.0]])
  assert calibration.expected_calibration_error(probs, np.array([0, 0, 0, 1]), n_bins=10) == \
      pytest.approx(0.45)


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match="n_bins"):
    calibration.expected_calibration_error(np.ones((2, 2)) / 2, np.zeros(2, int), n_bins=0)
  with pytest.raises(ValueError, match=r"\(3,\)"):
    calibration.expected_calibration_error(np.ones((2, 2)) / 2, np.zeros(3, int))
  with pytest.raises(ValueError, match="logits"):
    calibration.fit_temperature(np.zeros((2, 3, 4)), np.zeros(2, int))


def test_reliability_diagram_writes_a_png(tmp_path):
  logits, labels = _overconfident(n=500)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
  path = calibration.reliability_diagram(probs, labels, tmp_path / "rel.png", title="test")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
