"""Each extra in pyproject.toml keeps its promise: with only the packages it names (and the core's
JAX and NumPy), its modules import and work. Every other optional package is made unimportable
in a fresh interpreter (``sys.modules[name] = None``), as if it were not installed. The real
clean-venv installs are `make extras` (minutes; not part of `make test`)."""

import importlib.metadata
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).parents[2]
OPTIONAL = {"flax", "optax", "safetensors", "matplotlib", "rich", "torch", "mlxtend", "tokamax"}
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

# What each extra promises, as code that must run with it alone.
USES = {
    None: """
import jax.numpy as jnp, numpy as np, jaxsoftmax
from jaxsoftmax import functional as F, parity
x = jnp.array([[1.0, 2.0, 3.0]])
parity.assert_close(F.softmax(x, dim=1), jaxsoftmax.softmax(x), "float32")
assert float(jaxsoftmax.cross_entropy(x, jnp.array([2]))) > 0
""",
    "nn": """
import jax.numpy as jnp
from jaxsoftmax import nn
print(nn.CrossEntropyLoss()(jnp.ones((2, 3)), jnp.array([0, 1])))
""",
    "parity": """
from jaxsoftmax import cli
from jaxsoftmax.parity import grid, runner
assert runner.run_case(grid.Case("softmax", "float32", (3, 5), (("dim", 1),))).ok
import numpy as np, torch, jax.numpy as jnp
from jaxsoftmax import parity
from jaxsoftmax.parity import training
import jaxsoftmax_pytest
parity.compare_functions(jnp.tanh, torch.tanh, np.ones((2, 3), np.float32)).assert_passed()
""",
    "tutorial": """
import tempfile
from jaxsoftmax.tutorial.training import fit
with tempfile.TemporaryDirectory() as out:
  assert len(fit("income", epochs=1, max_steps=3, out=out).losses) == 3
""",
}


def _top_level(requirement: str) -> str:
  return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("-", "_")


def _with_dependencies(names: set[str]) -> set[str]:
  """``names`` and everything they require when installed (flax brings optax and rich): what an
  install of the extra really provides."""
  found, todo = set(), list(names)
  while todo:
    name = todo.pop()
    if name in found:
      continue
    found.add(name)
    try:
      requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
      continue
    todo += [_top_level(r) for r in requires if "extra ==" not in r]
  return found


@pytest.mark.parametrize("extra", list(USES), ids=lambda e: e or "core")
def test_an_extra_needs_nothing_it_does_not_name(extra):
  provided = _with_dependencies(set() if extra is None else {_top_level(r) for r in EXTRAS[extra]})
  blocked = sorted(OPTIONAL - provided)
  code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked) + USES[extra]
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, f"extra {extra!r} without {blocked}:\n{run.stderr[-3000:]}"


def test_the_check_notices_a_missing_package():
  code = "import sys\nsys.modules['flax'] = None\n" + USES["nn"]
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode != 0 and "flax" in run.stderr


def test_every_optional_package_belongs_to_an_extra():
  named = {_top_level(r) for reqs in EXTRAS.values() for r in reqs}
  assert OPTIONAL <= named, OPTIONAL - named
