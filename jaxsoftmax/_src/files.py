"""Writing files so that a reader, or a crash, never sees half of one.

Every writer in the package goes through :func:`atomic_write`: the bytes go to a temporary file in
the same directory, are flushed to disk (``fsync``), the file is renamed over the target
(``os.replace``, atomic on POSIX), and the directory is fsynced so the rename survives a power
cut. A reader sees the old file or the new one; a kill mid-write leaves only a ``.tmp`` file.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

__all__ = ["atomic_write", "write_text"]


def _fsync_dir(directory: pathlib.Path) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def atomic_write(path, write: Callable[[pathlib.Path], object]) -> pathlib.Path:
  """Calls ``write(tmp)`` to produce the file at a temporary path, then moves it to ``path``.

  ``write`` must write the whole file at the path it is given (e.g. ``fig.savefig(tmp,
  format="png")``, ``safetensors.numpy.save_file(arrays, tmp)``). Parent directories are created.
  If ``write`` raises, the temporary file is removed and ``path`` is left as it was.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  try:
    write(tmp)
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)  # and so is the rename
  return path


def write_text(path, text: str) -> pathlib.Path:
  """``path.write_text(text)``, atomically (see :func:`atomic_write`)."""
  return atomic_write(path, lambda tmp: tmp.write_text(text))
