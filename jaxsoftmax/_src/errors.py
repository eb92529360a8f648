"""Exception types that satisfy both Python idiom and torch habits.

torch raises ``NotImplementedError`` for an integer input to softmax and ``RuntimeError`` for most
bad arguments to its losses; Python (and this project's contract) wants ``TypeError`` for a wrong
dtype and ``ValueError`` for a wrong value or shape. Each class below is both, so
``except TypeError`` and a ported ``except RuntimeError`` catch the same mistake.
"""

from __future__ import annotations

__all__ = ["DTypeError", "ArgumentError"]


class DTypeError(TypeError, NotImplementedError):
  """An array has a dtype the operation does not support (torch: NotImplementedError/RuntimeError)."""


class ArgumentError(ValueError, RuntimeError):
  """An argument has a bad value or shape where torch raises RuntimeError."""
