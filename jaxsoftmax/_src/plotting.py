"""matplotlib, set up once for files (the Agg backend: no display needed), imported on first use
so that ``import jaxsoftmax`` never needs it."""

from __future__ import annotations

import functools
import pathlib

from jaxsoftmax._src.files import atomic_write

__all__ = ["pyplot", "save_png"]


@functools.cache
def pyplot():
  """``matplotlib.pyplot`` on the Agg backend."""
  import matplotlib  # noqa: PLC0415 - optional: only the plotting commands need it

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  return plt


def save_png(fig, path, **savefig_kwargs) -> pathlib.Path:
  """Saves ``fig`` as a PNG at ``path`` atomically and closes it."""
  try:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **savefig_kwargs))
  finally:
    pyplot().close(fig)
