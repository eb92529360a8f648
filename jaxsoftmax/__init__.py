"""jaxsoftmax: PyTorch's softmax family for JAX, jitted with custom VJPs, and proven against torch.

The core ops live here in JAX idiom (``axis``, keyword-only options). ``jaxsoftmax.functional``
mirrors ``torch.nn.functional``; ``jaxsoftmax.nn`` mirrors ``torch.nn`` as Flax NNX modules;
``jaxsoftmax.parity`` compares any of them with torch.
"""

from jaxsoftmax._src.errors import ArgumentError as ArgumentError
from jaxsoftmax._src.errors import DTypeError as DTypeError
from jaxsoftmax._src.adaptive import adaptive_log_softmax_with_loss as adaptive_log_softmax_with_loss
from jaxsoftmax._src.linear import linear_cross_entropy as linear_cross_entropy
from jaxsoftmax._src.xent import LossAux as LossAux
from jaxsoftmax._src.losses import cross_entropy as cross_entropy
from jaxsoftmax._src.losses import nll_loss as nll_loss
from jaxsoftmax._src.family import log_softmax as log_softmax
from jaxsoftmax._src.family import softmax as softmax
from jaxsoftmax._src.family import softmin as softmin

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "DTypeError",
    "LossAux",
    "adaptive_log_softmax_with_loss",
    "cross_entropy",
    "linear_cross_entropy",
    "log_softmax",
    "nll_loss",
    "softmax",
    "softmin",
]
