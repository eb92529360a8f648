"""Runs one fwd+bwd of one provider in this fresh process and prints its peak RSS as JSON.

Run as a script (``python child.py SPEC``), never through ``import jaxsoftmax``: the package would
import jax into torch's process and inflate its RSS. The harness's own files are loaded as a
package of their own, ``jaxsoftmax_bench``, whose relative imports need nothing else.
"""

import importlib
import pathlib
import sys
import types

if __name__ == "__main__":
  package = types.ModuleType("jaxsoftmax_bench")
  package.__path__ = [str(pathlib.Path(__file__).parent)]
  sys.modules["jaxsoftmax_bench"] = package
  sys.exit(importlib.import_module("jaxsoftmax_bench.measure").child_main(sys.argv[1]))
