"""Atomic file and folder writes: a crash never leaves a half-written model, table, data root
or submission, and an ``--overwrite`` never deletes the old output before the new one exists.

Every output file goes to a temporary file in the destination folder and is renamed into place
(``os.replace`` is atomic on one filesystem); a whole folder (a data root, an export) is built
in a temporary sibling and swapped in (:func:`replace_folder`). Leftovers of killed runs are
removed by the next run (:func:`remove_stale_temp_files`, :func:`recover_folder`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
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


def require_writable_folder(folder: str | os.PathLike, what: str = "") -> Path:
    """:func:`require_folder`, and the folder (or the ancestor it would be created in) must be
    writable. Why: a tool should say so before loading models, not fail on every image.

    Raises:
        NotADirectoryError: a file in the way; PermissionError: not writable (named).
    """
    folder = require_folder(folder, what)
    existing = next((p for p in (folder.absolute(), *folder.absolute().parents) if p.exists()),
                    None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        label = f"{what} {folder}" if what else str(folder)
        where = "is not writable" if existing == folder.absolute() else \
            f"cannot be created: {existing} is not writable"
        raise PermissionError(f"{label}: {where}; expected a folder this user can write to")
    return folder


#: Environment variable naming a point (e.g. ``write:train.csv``) where a process stops, for
#: tests that kill a tool at a moment they control; see :func:`pause_point`.
PAUSE_ENV = "CELLSEG_TEST_PAUSE_AT"
#: File created when the pause point is reached (the test waits for it, then kills).
PAUSE_FILE_ENV = "CELLSEG_TEST_PAUSE_FILE"


def pause_point(name: str) -> None:
    """Tests only: when ``$CELLSEG_TEST_PAUSE_AT`` equals ``name``, create
    ``$CELLSEG_TEST_PAUSE_FILE`` and sleep until killed. Why: a kill at a chosen moment (a
    temporary file written but not renamed, a folder half built) is the only way to test
    that a killed run loses nothing and a re-run finishes it. Does nothing otherwise."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    flag = os.environ.get(PAUSE_FILE_ENV)
    if flag:
        Path(flag).write_text(name)
    while True:
        time.sleep(1)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


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
    os.chmod(tmp, 0o666 & ~_umask())
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        pause_point(f"write:{path.name}")
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def is_temp_name(name: str) -> bool:
    """A temporary file of :func:`atomic_path` (``.<name>.<random>.tmp<suffix>``)."""
    return name.startswith(".") and ".tmp" in name


def remove_stale_temp_files(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove what killed runs left of :func:`atomic_path` for the outputs ``names`` in
    ``folder`` (only those: another process may be writing other outputs there). Returns the
    files removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for p in folder.glob(f".{glob.escape(name)}.*"):
            if p.is_file() and is_temp_name(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _siblings(dest: Path, kind: str) -> list[Path]:
    return sorted(dest.parent.glob(f".{glob.escape(dest.name)}.{kind}-*"))


def _carry_over(old: Path, new: Path, carry: Callable[[str], bool] | None) -> None:
    """Move the entries of ``old`` that ``new`` lacks and ``carry`` accepts into ``new``."""
    if carry is None or not old.is_dir():
        return
    for entry in sorted(old.iterdir()):
        target = new / entry.name
        if carry(entry.name) and not (target.exists() or target.is_symlink()):
            os.rename(entry, target)


def recover_folder(dest: str | os.PathLike, carry: Callable[[str], bool] | None = None
                   ) -> None:
    """Finish or undo what a killed :func:`replace_folder` left beside ``dest``.

    Killed between its two renames, ``dest`` is missing and the old content sits in
    ``.<name>.retired-*``: it is put back. Killed later, the new ``dest`` is in place and the
    retired copy only holds what ``carry`` moves over; it is then removed. A half-built
    ``.<name>.staging-*`` is always removed.
    """
    dest = Path(os.path.abspath(dest))
    if not dest.parent.is_dir():
        return
    for old in _siblings(dest, "retired"):
        if not (dest.exists() or dest.is_symlink()):
            os.rename(old, dest)
        else:
            _carry_over(old, dest, carry)
            shutil.rmtree(old, ignore_errors=True)
    for tmp in _siblings(dest, "staging"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def replace_folder(dest: str | os.PathLike, carry: Callable[[str], bool] | None = None
                   ) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``dest`` to build a folder in; when the block
    succeeds, swap it in for ``dest`` (which may exist: ``--overwrite``).

    Why: deleting the old data root first and then failing on the tenth image loses both. The
    old folder is renamed aside, the new one renamed into place, then the old one is deleted:
    at every moment one complete version exists (:func:`recover_folder` finishes a swap that
    was killed half-way). Entries of the old folder that the new one lacks and ``carry(name)``
    accepts (the user's own files) are moved into the new one. On an error or Ctrl-C the
    staging folder is removed and ``dest`` is untouched.
    """
    dest = Path(os.path.abspath(dest))
    recover_folder(dest, carry)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        require_folder(dest.parent)
        raise
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it 0700; a plain mkdir would not
    try:
        yield stage
        pause_point(f"swap:{dest.name}")
        if dest.exists() or dest.is_symlink():
            old = dest.with_name(f".{dest.name}.retired-{uuid.uuid4().hex[:8]}")
            os.rename(dest, old)
            pause_point(f"swapping:{dest.name}")
            os.rename(stage, dest)
            _carry_over(old, dest, carry)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, dest)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def printable(text: str | os.PathLike) -> str:
    """Text any UTF-8 writer accepts: a file name's undecodable bytes (held by Python as
    surrogate escapes) become ``\\xNN``. Why: a CSV, JSON or stdout write of such a name
    raises ``UnicodeEncodeError`` after the work is done."""
    text = os.fspath(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
