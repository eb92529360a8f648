"""Side-by-side benchmarks: jaxsoftmax beside jax.nn, optax, tokamax, torch and torch.compile.

One setup per (op, provider); modes ``fwd``, ``bwd`` (the backward alone, from saved residuals) and
``fwd+bwd``; a shape sweep; float32 and bfloat16. Each configuration warms every provider up, then
times them interleaved (round-robin, the order rotated every repetition) so that a noisy, shared
machine slows them alike; it reports the median with the 20th and 80th percentiles.

Bandwidth is computed from the *minimal* bytes (each input read once, each output written once; for
``bwd``, the saved output or input read once) and reported as a fraction of a device copy measured
in the same run. Memory: XLA's compiled ``memory_analysis`` (temporary bytes) for JAX, and the peak
RSS of a fresh subprocess running one fwd+bwd for every provider, JAX and torch alike.

Rows are written in long format to ``benchmarks/results/<device>-<date>.json`` with the device,
versions and timestamp, plus a PNG chart beside it. ``jaxsoftmax bench --help`` lists the options.

Files: ``config.py`` (what runs), ``providers.py`` (each provider's setup), ``measure.py``
(timing, bandwidth, peak RSS, the run), ``report.py`` (speedups, files, chart, tables) and
``child.py`` (the fresh process that measures one provider's peak RSS).
"""


from .config import *  # noqa: F403 - the package re-exports its parts
from .measure import *  # noqa: F403
from .providers import *  # noqa: F403
from .report import *  # noqa: F403
from .config import __all__ as _config_all
from .measure import __all__ as _measure_all
from .providers import __all__ as _providers_all
from .report import __all__ as _report_all

__all__ = [*_config_all, *_providers_all, *_measure_all, *_report_all]
