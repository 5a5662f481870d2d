"""Atomic file writes: a crash never leaves a half-written model, table or submission.

Every output goes to a temporary file in the destination folder and is renamed into place
(``os.replace`` is atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _blocking_file(folder: Path) -> Path | None:
    """The path of ``folder`` or its nearest existing ancestor when that is not a folder."""
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def require_folder(folder: str | os.PathLike, what: str = "") -> Path:
    """Fail before any work if ``folder`` cannot be a folder (it, or a parent, is a file).

    Why: ``mkdir`` would say only ``[Errno 17] File exists`` after minutes of work; this names
    the path and says a folder was expected. Creates nothing.

    Raises:
        NotADirectoryError: with a message naming ``what`` (e.g. ``"--out"``) and the path.
    """
    folder = Path(folder)
    blocking = _blocking_file(folder)
    if blocking is not None:
        label = f"{what} {folder}" if what else str(folder)
        where = "is a file" if blocking == folder else f"has a file in its path: {blocking}"
        raise NotADirectoryError(f"{label}: {where}; expected a folder")
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffix (``suffix`` overrides it) because some writers
    (Keras, matplotlib) pick the format from the extension.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        require_folder(path.parent)
        raise
    if suffix is None:
        suffix = f".tmp{path.suffix}"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_yaml(path: str | os.PathLike, doc: Any) -> None:
    """The one YAML writer: ``yaml.safe_dump`` in the document's own key order, atomically."""
    import yaml

    write_text(path, yaml.safe_dump(doc, sort_keys=False))


def read_yaml(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of a file (untrusted input: no Python objects); ``{}`` when empty.

    Raises:
        OSError: unreadable file; yaml.YAMLError: not YAML (callers name the file).
    """
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (models are hundreds of MB). Not
    ``hashlib.file_digest``: the Kaggle kernel's Python may predate 3.11."""
    import hashlib

    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save arrays to a compressed ``.npz`` atomically."""
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load an ``.npz`` without pickles (untrusted input)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure atomically."""
    path = Path(path)
    with atomic_path(path, suffix=f".tmp{path.suffix}") as tmp:
        fig.savefig(tmp, **kwargs)
