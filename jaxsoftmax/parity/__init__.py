"""Cross-framework parity: compare arrays as ``torch.testing`` does, per dtype, with reports.

The public face is the comparison API (:mod:`jaxsoftmax.parity.compare`): the tolerance table,
:func:`compare`, :func:`assert_close` and :class:`Comparison`. The project's own grid of ops
against torch lives beside it: :mod:`~jaxsoftmax.parity.ops` (what is compared),
:mod:`~jaxsoftmax.parity.grid` (the cases and their inputs) and :mod:`~jaxsoftmax.parity.runner`
(running one case), which ``jaxsoftmax parity`` and ``parity_tests/`` drive. torch is imported
lazily: importing this package does not need it.
"""

from jaxsoftmax.parity.compare import TOLERANCES as TOLERANCES
from jaxsoftmax.parity.compare import Comparison as Comparison
from jaxsoftmax.parity.compare import Tolerance as Tolerance
from jaxsoftmax.parity.compare import assert_close as assert_close
from jaxsoftmax.parity.compare import compare as compare
from jaxsoftmax.parity.compare import tolerance as tolerance

__all__ = ["TOLERANCES", "Comparison", "Tolerance", "assert_close", "compare", "tolerance"]
