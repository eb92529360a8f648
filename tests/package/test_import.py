import subprocess
import sys


def test_import_works_without_torch():
  # sys.modules[name] = None makes `import torch` raise ImportError, as if it were not installed.
  code = ("import sys; sys.modules['torch'] = None; import jaxsoftmax, jaxsoftmax.functional, "
          "jaxsoftmax.nn, jaxsoftmax.parity, jaxsoftmax.cli, jaxsoftmax.tutorial.models, jaxsoftmax.tutorial.interop, "
          "jaxsoftmax.tutorial.training, jaxsoftmax.tutorial.datasets, jaxsoftmax.tutorial.calibration; import jax.numpy as jnp; "
          "print(float(jaxsoftmax.softmax(jnp.zeros(4))[0]))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "0.25"
