"""Cross-framework parity: compare JAX with torch, values and gradients, per dtype, with reports.

For users' own ports:

- :func:`compare_functions`: a JAX function beside its torch original, outputs and gradients
  leaf by leaf, with torch.testing's per-dtype tolerances and an optional float64 anchor.
- :func:`compare_modules`: a Flax NNX or Linen module, or ``fn(params, *inputs)``, beside a
  ``torch.nn.Module`` from the same weights; every parameter's gradient by name, and the first
  submodule whose output diverges.
- :func:`compare_training`: K optimizer steps on both sides; per-step loss and parameter drift.
- :class:`ParityReport`: ``.passed``, ``.assert_passed()``, ``.markdown()``, ``.json()``, rich.

Underneath: the tolerance table, :func:`compare` and :func:`assert_close` of two arrays. The
project's own grid of ops against torch lives beside it: :mod:`~jaxsoftmax.parity.ops`,
:mod:`~jaxsoftmax.parity.grid` and :mod:`~jaxsoftmax.parity.runner`, which ``jaxsoftmax parity``
and ``parity_tests/`` drive. torch is imported lazily: importing this package does not need it.
"""

from jaxsoftmax.parity.compare import TOLERANCES as TOLERANCES
from jaxsoftmax.parity.compare import Comparison as Comparison
from jaxsoftmax.parity.compare import Tolerance as Tolerance
from jaxsoftmax.parity.compare import assert_close as assert_close
from jaxsoftmax.parity.compare import compare as compare
from jaxsoftmax.parity.compare import tolerance as tolerance
from jaxsoftmax.parity.functions import compare_functions as compare_functions
from jaxsoftmax.parity.functions import layout_permutation as layout_permutation
from jaxsoftmax.parity.modules import compare_modules as compare_modules
from jaxsoftmax.parity.pairs import Pair as Pair
from jaxsoftmax.parity.report import LayerCheck as LayerCheck
from jaxsoftmax.parity.report import ParityReport as ParityReport
from jaxsoftmax.parity.training import compare_training as compare_training
from jaxsoftmax.parity.weights import WeightMappingError as WeightMappingError

__all__ = ["TOLERANCES", "Comparison", "Tolerance", "assert_close", "compare", "tolerance",
           "compare_functions", "layout_permutation", "compare_modules", "Pair", "LayerCheck",
           "ParityReport", "compare_training", "WeightMappingError"]
