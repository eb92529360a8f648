"""The JAX platforms to test on: cpu always, gpu/tpu when present (else skipped with a reason)."""

import pytest

from jaxsoftmax.parity import runner

_PRESENT = runner.platforms()

PLATFORMS = [
    pytest.param(p, marks=pytest.mark.skipif(
        p not in _PRESENT, reason=f"no {p} platform in jax.devices(); present: {_PRESENT}"))
    for p in ("cpu", "gpu", "tpu")
]
