"""The one atomic-write helper every writer uses: all or nothing, never half a file."""

import os

import pytest

from jaxsoftmax._src import files


def test_a_write_replaces_the_file_whole(tmp_path):
  path = tmp_path / "deep" / "out.json"
  files.write_text(path, "old")
  files.write_text(path, "new")
  assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "out.bin"
  files.write_text(path, "old")

  def half_then_crash(tmp):
    tmp.write_bytes(b"half")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    files.atomic_write(path, half_then_crash)
  assert path.read_text() == "old" and not list(tmp_path.glob("*.tmp"))


def test_the_bytes_and_the_rename_are_fsynced(tmp_path, monkeypatch):
  synced = []
  real = os.fsync
  monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
  files.write_text(tmp_path / "x", "data")
  assert len(synced) == 2  # the file, then its directory
