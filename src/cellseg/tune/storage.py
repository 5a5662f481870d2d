"""Optuna storages for the tuning studies: parse, open and describe a ``--storage`` value.

The default is the SQLite file ``output/<exp>/tuning.db``. Any Optuna RDB URL
(``postgresql://``, ``mysql://``, ``sqlite:///``) or a journal file (``journal:/path/study.log``)
works too, and any number of worker processes, on one machine or many, can share a study there
(docs/design.md section 6: Optuna's shared storage, no home-made distribution).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

from cellseg.exceptions import TuningError
from cellseg.experiment import TUNING_DB


def default_storage(exp_dir: str | os.PathLike) -> str:
    """``sqlite:///<abs path>/output/<exp>/tuning.db``: the default, resumable storage."""
    return f"sqlite:///{(Path(exp_dir) / TUNING_DB).resolve()}"


def describe_storage(spec: str) -> str:
    """A storage URL safe to print or save (password hidden)."""
    if "://" in spec:
        try:
            from sqlalchemy.engine import make_url

            return make_url(spec).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - a URL sqlalchemy cannot parse: hide it all
            return spec.split("://", 1)[0] + "://***"
    return spec


def _sqlite_wal(path: Path) -> None:
    """Switch a SQLite file to write-ahead logging (persistent; best effort).

    Why: Optuna commits ~15 times per trial (each suggested value, then the result); in WAL
    mode, with ``synchronous=NORMAL`` (see :func:`_sqlite_connect`), a commit skips the fsync
    that otherwise costs ~5 ms, and readers never block the writer, which matters when several
    local workers share the file. A power cut can lose the last trials, never corrupt the
    file. (SQLite files, WAL or not, do not belong on NFS: use a journal file there.)
    """
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(str(path), timeout=60)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass


def _sqlite_connect(path: str) -> Any:
    """SQLAlchemy ``creator`` for the storage's SQLite connections (wait on locks, no fsync
    per commit in WAL mode)."""
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def parse_storage(spec: str | None, exp_dir: str | os.PathLike) -> tuple[str, str]:
    """Check a ``--storage`` value without opening it: ("journal", file path) or ("rdb", URL).

    Why separate from :func:`make_storage`: a typo should fail before minutes of loading.
    See :func:`make_storage` for the accepted forms.
    """
    spec = (spec or "").strip()
    if not spec:
        return "rdb", default_storage(exp_dir)
    if spec.startswith("journal:"):
        path = spec[len("journal:"):]
        if path.startswith("//"):  # journal:///abs/path
            path = path[2:]
        if not path:
            raise TuningError("--storage journal:PATH: the journal file path is empty")
        return "journal", path
    if "://" in spec:
        return "rdb", spec
    if spec.endswith((".log", ".jsonl", ".journal")):
        return "journal", spec
    if spec.endswith((".db", ".sqlite", ".sqlite3")):
        return "rdb", f"sqlite:///{Path(spec).resolve()}"
    raise TuningError(
        f"--storage {spec!r}: expected an Optuna storage URL (sqlite:///file.db, "
        f"postgresql://..., mysql://...) or a journal file (journal:/path/file.log)")


def make_storage(spec: str | None, exp_dir: str | os.PathLike,
                 heartbeat_interval: int = 60) -> Any:
    """Open an Optuna storage from a URL or a journal file path.

    Args:
        spec: None/"" = SQLite file ``<exp_dir>/tuning.db``; an RDB URL (``sqlite:///f.db``,
            ``postgresql://user:pw@host/db``, ``mysql+pymysql://...``); or a journal file:
            ``journal:/path/study.log`` or a path ending in ``.log`` / ``.jsonl`` (journal
            files suit NFS, where SQLite locking is unreliable).
        exp_dir: the experiment folder (for the default).
        heartbeat_interval: RDB storages only: seconds between a running trial's heartbeats;
            a trial whose worker died (no heartbeat for 3 intervals) is marked failed when a
            worker next starts, instead of staying "running" forever.

    Returns:
        An ``optuna.storages.BaseStorage``.

    Raises:
        TuningError: unknown form, or the storage cannot be opened (driver missing, server
            down); the message hides the URL's password.
    """
    import optuna

    kind, target = parse_storage(spec, exp_dir)
    if kind == "journal":
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise TuningError(f"cannot open the journal file {path}: {exc}") from None

    spec = target
    engine_kwargs: dict[str, Any] = {}
    if spec.startswith("sqlite"):
        db_path = spec[len("sqlite:///"):] if spec.startswith("sqlite:///") else ""
        if db_path and db_path != ":memory:" and "?" not in db_path:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            _sqlite_wal(Path(db_path))
            engine_kwargs["creator"] = functools.partial(_sqlite_connect, db_path)
        else:
            # Concurrent workers wait for SQLite's lock instead of failing at once.
            engine_kwargs["connect_args"] = {"timeout": 60}
    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    spec, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                    grace_period=3 * heartbeat_interval)
        except ImportError as exc:
            raise TuningError(f"cannot open storage {describe_storage(spec)}: its database "
                              f"driver is not installed ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - sqlalchemy errors vary by backend
            # Workers started together race to create the tables of a new database: retry.
            last = exc
            time.sleep(0.2 + random.random() * (attempt + 1))
    raise TuningError(f"cannot open storage {describe_storage(spec)}: {last}")


def study_name(exp: str, method: str, cell_type: str, fingerprint: str = "") -> str:
    """``<exp>-<method>-<cell_type>-<OOF fingerprint>``, e.g. ``demo-deep-shsy5y-3fa9c0d1e2``.

    Why the fingerprint is in the name: a study's trials were scored on one set of OOF maps;
    after the folds are retrained (or other folds are chosen) they are not comparable with new
    ones, so the new maps get a fresh study and the old one stays untouched beside it (going
    back to the old maps continues it)."""
    base = f"{exp}-{method}-{cell_type}"
    return f"{base}-{fingerprint[:10]}" if fingerprint else base


__all__ = ["default_storage", "describe_storage", "make_storage", "parse_storage", "study_name"]
