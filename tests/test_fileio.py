import os

import numpy as np
import pytest

from cellseg import fileio


def test_atomic_write_replaces_and_uses_umask_mode(tmp_path):
    path = tmp_path / "out.txt"
    fileio.write_text(path, "one")
    fileio.write_text(path, "two")
    assert path.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("good")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_npz_roundtrip_without_pickle(tmp_path):
    fileio.save_npz(tmp_path / "a.npz", x=np.arange(5, dtype=np.uint8))
    assert fileio.load_npz(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2, 3, 4]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        np.load(tmp_path / "obj.npy", allow_pickle=False)
