"""Strict JAX settings for every test (as equinox does), doctest names, hypothesis profiles."""

import os

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, settings

import jaxsoftmax

# Implicit rank promotion hides shape bugs; strict dtype promotion hides nothing we rely on.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# `make test` runs the bounded "ci" profile; `make fuzz` the long one.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
  doctest_namespace["jnp"] = jnp
  doctest_namespace["jaxsoftmax"] = jaxsoftmax


def pytest_collection_modifyitems(config, items):
  """``JAXSOFTMAX_TEST_PART=i/n`` keeps every n-th collected test from the i-th (0-based): how
  tests/core/test_sharded.py splits the 8-device suite over parallel subprocesses, so that no one
  xdist worker carries all of it (it was one 242-second test)."""
  part = os.environ.get("JAXSOFTMAX_TEST_PART")
  if not part:
    return
  i, n = (int(v) for v in part.split("/"))
  if not 0 <= i < n:
    raise pytest.UsageError(f"JAXSOFTMAX_TEST_PART must be i/n with 0 <= i < n; got {part!r}")
  kept = items[i::n]
  config.hook.pytest_deselected(items=[t for t in items if t not in kept])
  items[:] = kept
