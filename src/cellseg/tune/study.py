"""Optuna tuning of post-processing per cell type, on out-of-fold (OOF) predictions.

Why per cell type: crowded, elongated shsy5y cells, sparse round cort cells and large faint
astro cells need different seed / mask thresholds and minimum areas (docs/design.md section 4). The
network's cell-type head picks the parameter set at inference; here each set is tuned on the
OOF maps of the images that truly are that type (type from ``train.csv``), maximising the
competition score (docs/design.md section 3), so no image scores a model that saw it in training.

One Optuna study per (experiment, method, cell type), named ``<exp>-<method>-<cell_type>``:

* ``method="deep"``: :data:`~cellseg.postprocess.decode.DEEP_SEARCH_SPACE` knobs of
  :func:`~cellseg.postprocess.decode.decode_instances` on the OOF body / border maps;
* ``method="classical"``: :data:`~cellseg.postprocess.decode.CLASSICAL_SEARCH_SPACE` of
  :func:`~cellseg.postprocess.decode.classical_segment` on the raw training images of the same ids
  (the paper's "traditional algorithm" row).

The defaults (config ``postprocess`` section, or the classical function's defaults) are
enqueued as the study's first trial, so the best parameters are never worse than the defaults
on the OOF set.

Storage and resuming: every study lives in an Optuna storage, by default the SQLite file
``output/<exp>/tuning.db``. Running again continues the same study (``load_if_exists``): an
interrupted run loses at most its trial in flight. Any Optuna RDB URL (``postgresql://``,
``mysql://``, ``sqlite:///``) or a journal file (``journal:/path/study.log``) works too, and
any number of worker processes, on one machine or many, can run ``tune.py`` on the same study
at once (docs/design.md section 6: Optuna's shared storage, no home-made distribution).
``n_trials`` counts the trials *this process* runs: four workers with ``--n-trials 50`` add
200 trials to the study. The study records which OOF images it was tuned on, and refuses to
continue on a different set (other folds, retrained OOF ids), which would mix scores of
different image sets in one history.

Speed: the OOF maps and truth are loaded once per process into an :class:`EvalSet` per cell
type (maps as uint8, 4x smaller than float32: ~0.7 MB per 520 x 704 image, ~450 MB for all
606 real images); each trial scores its images in parallel in a process pool created once
(``cfg.tune.n_jobs`` processes; on Linux the pool is forked so the cache is shared
copy-on-write, not copied), or serially for ``n_jobs=1``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cellseg import experiment, fileio
from cellseg.config import Config
from cellseg.constants import CELL_TYPES
from cellseg.data.dataset import DataError, TrainData
from cellseg.evaluate.metric import match
from cellseg.exceptions import TuningError
from cellseg.experiment import BEST_MODEL, POSTPROCESS_FILE, TUNING_DB, fold_dirs, oof_dir
from cellseg.postprocess.decode import (
    CLASSICAL_DEFAULTS,
    CLASSICAL_SEARCH_SPACE,
    DEEP_SEARCH_SPACE,
    SearchRange,
    classical_segment,
    decode_with_params,
    suggest_params,
)
from cellseg.train import oof

METHODS: tuple[str, ...] = ("deep", "classical")
#: Output file per method, in the experiment folder.
OUTPUT_FILES: Mapping[str, str] = {"deep": POSTPROCESS_FILE,
                                   "classical": "postprocess_classical.yaml"}
#: Default storage: a SQLite file in the experiment folder.
IMAGE_SCORES_ATTR = "image_scores"  # per-image scores of a trial (EvalSet.ids order)
#: Folder (in the experiment folder) for the optimisation-history / importance plots.
PLOTS_DIR = "tuning"
#: Optuna parameter spaces per method.
SEARCH_SPACES: Mapping[str, Mapping[str, SearchRange]] = {
    "deep": DEEP_SEARCH_SPACE, "classical": CLASSICAL_SEARCH_SPACE}


def _train_hint(exp_dir: Path, fold: int | str = "K") -> str:
    """The command that writes an experiment's OOF predictions (for error messages)."""
    return f"python src/train.py --fold {fold} --config CONFIG --exp {Path(exp_dir).name}"


# --------------------------------------------------------------------------------------------
# The per-process cache of images to score
# --------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """The images of one cell type, loaded once and scored for every trial.

    Attributes:
        method: "deep" (``inputs`` = uint8 H x W x C OOF maps, probability * 255) or
            "classical" (``inputs`` = uint8 H x W raw images).
        cell_type: the true cell type of every image here.
        ids: image ids, in the order of ``inputs`` and ``truths``.
        folds: the fold each image was validated in (its OOF fold).
        inputs: uint8 arrays; deep maps are dequantised per evaluation (uint8 keeps ~600 real
            images at ~450 MB instead of 1.8 GB of float32).
        truths: per image, the per-cell flat pixel indices (int32) of the annotations; the
            metric counts a pixel claimed by two true cells for both.
    """

    method: str
    cell_type: str
    ids: list[str]
    folds: list[int]
    inputs: list[np.ndarray]
    truths: list[list[np.ndarray]]
    costs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"EvalSet.method must be one of {METHODS}, got {self.method!r}")
        n = len(self.ids)
        if not (len(self.folds) == len(self.inputs) == len(self.truths) == n):
            raise ValueError(
                f"EvalSet({self.cell_type}): ids, folds, inputs and truths must have one entry "
                f"per image; got {n}, {len(self.folds)}, {len(self.inputs)}, {len(self.truths)}")
        if not self.costs:
            # Decode + match time grows with image size and cell count: used to balance the
            # per-trial work over processes.
            self.costs = [float(x.shape[0] * x.shape[1]) * (1.0 + 0.01 * len(t))
                          for x, t in zip(self.inputs, self.truths)]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached inputs and truth pixel indices."""
        return int(sum(x.nbytes for x in self.inputs)
                   + sum(p.nbytes for t in self.truths for p in t))

    def fingerprint(self) -> str:
        """Short hash of what every trial's score depends on: method, cell type, the images
        (ids) and their content (OOF maps or images, and the truth). Retrained fold models
        write other OOF maps, so their study is a new one (see :func:`study_name`)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        h = hashlib.sha1(f"{self.method}|{self.cell_type}|".encode())
        for i in sorted(range(len(self.ids)), key=lambda k: self.ids[k]):
            h.update(self.ids[i].encode() + b"\n")
            x = np.ascontiguousarray(self.inputs[i])
            h.update(f"{x.dtype}{x.shape}".encode())
            h.update(x.data)
            for cell in self.truths[i]:
                h.update(np.ascontiguousarray(cell, np.int64).data)
                h.update(b"|")
        self.__dict__["_fingerprint"] = h.hexdigest()[:16]
        return self.__dict__["_fingerprint"]


def score_image(method: str, x: np.ndarray, truth: list[np.ndarray],
                params: Mapping[str, Any]) -> float:
    """Competition score of one image with one parameter set.

    Args:
        method: "deep" or "classical".
        x: uint8 OOF maps H x W x C (deep) or uint8 image H x W (classical).
        truth: per-cell flat pixel indices of the annotations.
        params: :func:`decode_instances` / :func:`classical_segment` keyword arguments.

    Returns:
        The image's score (mean precision over IoU thresholds 0.5..0.95).
    """
    if method == "deep":
        labels = decode_with_params(oof.dequantize(x), params)
    else:
        labels = classical_segment(x, **params)
    return match(truth, labels).score


def _score_indices(eval_set: EvalSet, indices: Iterable[int], params: Mapping[str, Any]
                   ) -> list[float]:
    return [score_image(eval_set.method, eval_set.inputs[i], eval_set.truths[i], params)
            for i in indices]


# Worker-process state: the EvalSets handed to the pool's initializer (fork: shared
# copy-on-write with the parent; spawn: unpickled once per worker). Only pool workers set it.
_WORKER_SETS: dict[str, EvalSet] = {}


def _init_worker(sets: dict[str, EvalSet]) -> None:
    """Pool initializer: keep the cache, one thread per process, leave Ctrl-C to the parent."""
    global _WORKER_SETS
    _WORKER_SETS = sets
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a hard dependency of postprocess
        pass


def _worker_ready(_: int = 0) -> int:
    return os.getpid()


def _worker_score(cell_type: str, indices: list[int], params: dict[str, Any]) -> list[float]:
    return _score_indices(_WORKER_SETS[cell_type], indices, params)


class Evaluator:
    """Scores parameter sets on cached :class:`EvalSet` s, serially or in a process pool.

    Why a pool created once: a trial scores every OOF image of a type (~155 shsy5y images at
    ~0.1 s each on one core: decode + metric), so spreading one trial's images over processes
    cuts its wall time; creating the pool (and shipping the cache) per trial would cost more
    than it saves.

    Use as a context manager (or call :meth:`close`) so the worker processes end.
    """

    def __init__(self, sets: Mapping[str, EvalSet], n_jobs: int = 1,
                 chunks_per_job: int = 3, start_method: str | None = None) -> None:
        """Args:
            sets: cell type -> images to score.
            n_jobs: processes per trial; 1 = serial in this process (no pool).
            chunks_per_job: tasks per process and trial; > 1 evens out unequal images.
            start_method: multiprocessing start method of the pool; None = "fork" on Linux
                (the cache is shared copy-on-write, nothing is copied), else "spawn" (the
                cache is pickled once per worker).
        """
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
            raise ValueError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
        self.sets = dict(sets)
        self.n_jobs = n_jobs
        if start_method is None:
            # Fork shares the cache for free, but forking a process whose TensorFlow runtime
            # has started its thread pools can deadlock the child (seen when tuning runs in the
            # same process as training or inference, e.g. the test suite): spawn there.
            tf_loaded = "tensorflow" in sys.modules
            start_method = "fork" if sys.platform.startswith("linux") and not tf_loaded \
                else "spawn"
        self.start_method = start_method
        self._chunks: dict[str, list[list[int]]] = {}
        for cell_type, eval_set in self.sets.items():
            n_chunks = max(1, min(len(eval_set), n_jobs * max(1, chunks_per_job)))
            # Largest images first, dealt round-robin: chunks of near-equal cost.
            order = np.argsort(-np.asarray(eval_set.costs), kind="stable")
            self._chunks[cell_type] = [[int(i) for i in order[k::n_chunks]]
                                       for k in range(n_chunks)]
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        if n_jobs > 1 and any(len(s) > 1 for s in self.sets.values()):
            self._pool = self._start_pool()

    def _start_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        ctx = multiprocessing.get_context(self.start_method)
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.n_jobs, mp_context=ctx, initializer=_init_worker,
            initargs=(self.sets,))
        # Start every worker now, before this process opens databases or starts threads.
        list(pool.map(_worker_ready, range(self.n_jobs)))
        return pool

    def image_scores(self, cell_type: str, params: Mapping[str, Any]) -> np.ndarray:
        """Score of every image of ``cell_type`` (in ``EvalSet.ids`` order) with ``params``."""
        if cell_type not in self.sets:
            raise KeyError(f"no images loaded for cell type {cell_type!r} "
                           f"(loaded: {sorted(self.sets)})")
        eval_set = self.sets[cell_type]
        params = dict(params)
        chunks = self._chunks[cell_type]
        scores = np.zeros(len(eval_set), np.float64)
        if self._pool is None or len(chunks) == 1:
            scores[:] = _score_indices(eval_set, range(len(eval_set)), params)
            return scores
        try:
            results = self._pool.map(_worker_score, [cell_type] * len(chunks), chunks,
                                     [params] * len(chunks))
            for indices, values in zip(chunks, results):
                scores[indices] = values
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise TuningError(f"a scoring worker process died ({exc}); out of memory? try "
                              f"fewer --n-jobs") from None
        return scores

    def score(self, cell_type: str, params: Mapping[str, Any]) -> float:
        """Mean competition score over the images of ``cell_type`` (the tuning objective)."""
        return float(self.image_scores(cell_type, params).mean())

    def close(self) -> None:
        """End the worker processes (no-op when serial)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Finding and loading the OOF images
# --------------------------------------------------------------------------------------------


def _parse_folds(folds: Iterable[int] | None) -> list[int] | None:
    if folds is None:
        return None
    out = sorted({int(f) for f in folds})
    if any(f < 0 for f in out):
        raise TuningError(f"folds must be >= 0, got {out}")
    return out or None


def _check_cell_types(cell_types: Iterable[str] | None) -> list[str]:
    if cell_types is None:
        return list(CELL_TYPES)
    chosen = list(dict.fromkeys(cell_types))
    unknown = [t for t in chosen if t not in CELL_TYPES]
    if unknown or not chosen:
        raise TuningError(f"unknown cell type(s) {unknown or chosen}; valid: {list(CELL_TYPES)}")
    return [t for t in CELL_TYPES if t in chosen]


def collect_oof(exp_dir: str | os.PathLike, data: TrainData,
                folds: Iterable[int] | None = None) -> dict[str, list[tuple[int, str, Path]]]:
    """The OOF files of an experiment, grouped by each image's true cell type.

    Args:
        exp_dir: ``output/<exp>``, holding ``fold<K>/oof/<id>.npz``.
        data: the training data the experiment was trained on (truth and cell types).
        folds: only these folds; None = every fold found.

    Returns:
        cell type -> [(fold, image id, path)], types in ``CELL_TYPES`` order, only types with
        at least one image.

    Raises:
        TuningError: no OOF file at all (with how to make them), an OOF id that
            ``train.csv`` does not know, or one id in two folds.
    """
    exp_dir = Path(exp_dir)
    folds = _parse_folds(folds)
    found = list(oof.iter_oof_files(exp_dir, folds))
    if not found:
        which = f"folds {folds}" if folds else "any fold"
        trained = [d.name for _, d in fold_dirs(exp_dir) if oof_dir(d).is_dir()]
        extra = f" (folds with OOF predictions: {trained})" if trained else ""
        raise TuningError(
            f"no out-of-fold predictions for {which} in {exp_dir}{extra}: expected "
            f"{exp_dir}/fold<K>/{oof.OOF_DIRNAME}/<image id>.npz; "
            f"`{_train_hint(exp_dir)}` writes them when it finishes a fold")
    grouped: dict[str, list[tuple[int, str, Path]]] = {}
    seen: dict[str, Path] = {}
    for fold, image_id, path in found:
        if image_id in seen:
            raise TuningError(f"image {image_id!r} has OOF predictions in two folds: "
                              f"{seen[image_id]} and {path}; an image is validated in one fold "
                              f"only (was folds.csv changed between trainings?)")
        seen[image_id] = path
        try:
            cell_type = data.cell_type(image_id)
        except DataError:
            raise TuningError(f"{path}: image id {image_id!r} is not in {data.csv_path}; were "
                              f"these OOF maps made from another data root?") from None
        grouped.setdefault(cell_type, []).append((fold, image_id, path))
    return {t: grouped[t] for t in CELL_TYPES if t in grouped}


def _collect_from_folds_csv(data: TrainData, folds: list[int] | None
                            ) -> dict[str, list[tuple[int, str, Path]]]:
    """Images of the chosen folds from ``<root>/folds.csv`` (classical tuning with no OOF)."""
    from cellseg.data.folds import load_folds

    table = load_folds(data.root / "folds.csv", data.ids)
    if folds is not None:
        table = table[table["fold"].isin(folds)]
    grouped: dict[str, list[tuple[int, str, Path]]] = {}
    for image_id, fold in zip(table["id"], table["fold"]):
        if image_id in data.ids:
            grouped.setdefault(data.cell_type(image_id), []).append(
                (int(fold), str(image_id), data.image_path(image_id)))
    return {t: sorted(grouped[t], key=lambda r: r[1]) for t in CELL_TYPES if t in grouped}


def load_eval_sets(
    cfg: Config,
    method: str = "deep",
    folds: Iterable[int] | None = None,
    cell_types: Iterable[str] | None = None,
    data: TrainData | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, EvalSet]:
    """Load the images to tune on, once: OOF maps (deep) or raw images (classical) + truth.

    Args:
        cfg: the experiment's config (``experiment_dir()`` and ``data.root``).
        method: "deep" or "classical". Classical tuning uses the OOF ids too, so both rows of
            the comparison are scored on the same images; with no OOF predictions at all it
            falls back to the images of the chosen folds in ``<data root>/folds.csv``.
        folds: folds whose OOF images to use; None = every fold with OOF files.
        cell_types: subset of ``CELL_TYPES``; None = all.
        data: an already-opened :class:`TrainData` (default: open ``cfg.data.root``).
        log: progress messages (None = quiet).

    Returns:
        cell type -> :class:`EvalSet`, only types with images. A requested type without OOF
        images is skipped with a warning.

    Raises:
        TuningError: no OOF predictions (says how to make them), no image of any requested
            type, or an OOF file that does not match its image (shape, id).
    """
    if method not in METHODS:
        raise TuningError(f"method must be one of {list(METHODS)}, got {method!r}")
    wanted = _check_cell_types(cell_types)
    folds = _parse_folds(folds)
    if data is None:
        try:
            data = TrainData(cfg.data.root)
        except DataError as exc:
            raise TuningError(f"cannot read the training data (truth for the OOF images): "
                              f"{exc}") from None
    exp_dir = cfg.experiment_dir()
    has_oof = next(iter(oof.iter_oof_files(exp_dir, folds)), None) is not None
    if method == "classical" and not has_oof:
        try:
            grouped = _collect_from_folds_csv(data, folds)
        except DataError as exc:
            raise TuningError(f"no OOF predictions in {exp_dir} to take the image ids from, "
                              f"and no usable folds.csv: {exc}") from None
        if log:
            log(f"no OOF predictions in {exp_dir}: tuning the classical baseline on the images "
                f"of folds {folds or 'all'} from {data.root / 'folds.csv'}")
    else:
        grouped = collect_oof(exp_dir, data, folds)
    missing = [t for t in wanted if t not in grouped]
    present = [t for t in wanted if t in grouped]
    if not present:
        have = {t: len(v) for t, v in grouped.items()}
        raise TuningError(
            f"no OOF images of cell type(s) {wanted} in {exp_dir} (folds {folds or 'all'}); "
            f"OOF images per type there: {have}. Train the folds that hold them "
            f"(`{_train_hint(exp_dir)}`) or choose other --cell-types / --folds")
    for cell_type in missing:
        warnings.warn(f"no OOF images of cell type {cell_type!r} in {exp_dir} (folds "
                      f"{folds or 'all'}): skipping it; its parameters stay at the defaults",
                      stacklevel=2)
    sets: dict[str, EvalSet] = {}
    for cell_type in present:
        t0 = time.perf_counter()
        ids, fold_list, inputs, truths = [], [], [], []
        for fold, image_id, path in grouped[cell_type]:
            shape = data.shape(image_id)
            try:
                if method == "deep":
                    probs, _ = oof.load_oof(path)
                    if probs.ndim != 3 or probs.shape[:2] != shape:
                        raise TuningError(
                            f"{path}: OOF maps have shape {probs.shape}, expected {shape[0]} x "
                            f"{shape[1]} x C (height x width of image {image_id} in "
                            f"{data.csv_path.name})")
                    x = oof.quantize(probs)  # exact: the file holds uint8 / 255
                else:
                    x = data.load_image(image_id)
                inst = data.load_instances(image_id)
            except TuningError:
                raise
            except DataError as exc:
                raise TuningError(str(exc)) from None
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise TuningError(f"{path}: unreadable OOF file for image {image_id} ({exc}); "
                                  f"re-run `{_train_hint(exp_dir, fold)}`") from None
            ids.append(image_id)
            fold_list.append(int(fold))
            inputs.append(x)
            truths.append([p.astype(np.int32) for p in inst.pixels])
        sets[cell_type] = EvalSet(method, cell_type, ids, fold_list, inputs, truths)
        if log:
            used = sorted(set(fold_list))
            log(f"[{cell_type}] {len(ids)} images (folds {used}) loaded in "
                f"{time.perf_counter() - t0:.1f} s, {sets[cell_type].nbytes / 2**20:.0f} MB")
    return sets


# --------------------------------------------------------------------------------------------
# Storage and studies
# --------------------------------------------------------------------------------------------


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


def method_defaults(cfg: Config, method: str) -> dict[str, Any]:
    """Untuned parameters: the config's ``postprocess`` section (deep) or the classical
    function's signature defaults."""
    if method == "deep":
        # decode_instances' own defaults fill any knob the config does not name.
        return dataclasses.asdict(cfg.postprocess)
    if method == "classical":
        return dict(CLASSICAL_DEFAULTS)
    raise TuningError(f"method must be one of {list(METHODS)}, got {method!r}")


def sampler_seed(seed: int, n_existing: int, worker_index: int = 0, cell_type: str = "") -> int:
    """Seed of this process's TPE sampler for one study.

    Why not ``seed`` itself: a resumed study (or a second worker) would otherwise re-draw the
    same random start-up points as the first run, and every cell type would try the same
    points. Mixing in the trial count at start, the worker index and the cell type keeps one
    process's run reproducible and different runs distinct.
    """
    type_code = CELL_TYPES.index(cell_type) + 1 if cell_type in CELL_TYPES else 0
    state = np.random.SeedSequence([int(seed), int(n_existing), int(worker_index), type_code])
    return int(state.generate_state(1)[0])


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python scalars (YAML's safe dumper takes only plain types)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal parameter dicts (floats within rounding; True is not 1)."""
    if set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, (bool, np.bool_)) or isinstance(y, (bool, np.bool_)):
            if not (isinstance(x, (bool, np.bool_)) and isinstance(y, (bool, np.bool_))
                    and bool(x) == bool(y)):
                return False
        elif isinstance(x, (int, float, np.number)) and isinstance(y, (int, float, np.number)):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


@dataclass
class CellTypeResult:
    """Outcome of one cell type's study (one row of the printed table and the YAML)."""

    cell_type: str
    study_name: str
    params: dict[str, Any]
    oof_score: float
    default_score: float
    n_images: int
    n_trials: int
    n_trials_this_run: int
    folds: list[int]
    best_trial: int | None
    plots: list[str] = field(default_factory=list)
    held_out_score: float | None = None  # see held_out_score()
    oof_fingerprint: str = ""

    def to_yaml(self) -> dict[str, Any]:
        """The entry of ``postprocess.yaml``'s ``cell_types`` mapping."""
        return {
            "params": {k: _plain(v) for k, v in self.params.items()},
            "oof_score": round(float(self.oof_score), 6),
            "default_score": round(float(self.default_score), 6),
            "n_images": int(self.n_images),
            "n_trials": int(self.n_trials),
            "folds": [int(f) for f in self.folds],
            "study": self.study_name,
            "best_trial": self.best_trial,
            "held_out_score": (None if self.held_out_score is None
                               else round(float(self.held_out_score), 6)),
            "oof_fingerprint": self.oof_fingerprint,
        }


def _open_study(storage: Any, name: str, eval_set: EvalSet, seed: int, worker_index: int,
                storage_label: str) -> tuple[Any, int]:
    import optuna

    # Created first with a throw-away sampler to read the trial count; the real sampler's
    # seed depends on it.
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuningError(f"study {name!r} in {storage_label} minimises; expected a study that "
                          f"maximises the competition score (use another --storage or --exp)")
    fingerprint = eval_set.fingerprint()
    attrs = study.user_attrs
    if "oof_fingerprint" in attrs and attrs["oof_fingerprint"] != fingerprint:
        raise TuningError(
            f"study {name!r} in {storage_label} was tuned on other OOF maps or images "
            f"(fingerprint {attrs['oof_fingerprint']}, now {fingerprint}); use another "
            f"--storage or --exp")
    if "oof_fingerprint" not in attrs:
        study.set_user_attr("oof_fingerprint", fingerprint)
        study.set_user_attr("folds", sorted(set(eval_set.folds)))
        study.set_user_attr("n_images", len(eval_set))
        study.set_user_attr("method", eval_set.method)
        study.set_user_attr("cell_type", eval_set.cell_type)
    n_existing = len(study.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler(
        seed=sampler_seed(seed, n_existing, worker_index, eval_set.cell_type))
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    return study, n_existing


def tune_cell_type(
    evaluator: Evaluator,
    cell_type: str,
    storage: Any,
    name: str,
    defaults: Mapping[str, Any],
    space: Mapping[str, SearchRange],
    n_trials: int | None,
    timeout: float | None = None,
    seed: int = 42,
    worker_index: int = 0,
    show_progress_bar: bool = False,
    storage_label: str = "",
    log: Callable[[str], None] | None = print,
) -> CellTypeResult:
    """Run (or continue) one cell type's study and pick its best parameters.

    Args:
        evaluator: holds the cell type's images.
        cell_type: which :class:`EvalSet` to tune on.
        storage: an Optuna storage (see :func:`make_storage`).
        name: the study name (:func:`study_name`).
        defaults: the untuned parameters; the ones in ``space`` are enqueued as the first trial
            of a new study (or the next, if the study has not tried them yet), so the best is
            never worse than the defaults.
        space: knobs to tune; knobs not in it stay at ``defaults``.
        n_trials: trials this process runs (other workers add their own); None = until
            ``timeout``; 0 = none (just report the study's best).
        timeout: seconds for this study in this process; None = no limit.
        seed: base seed of the TPE sampler (see :func:`sampler_seed`).
        worker_index: distinguishes concurrent workers' samplers.
        show_progress_bar: Optuna's progress bar (needs ``n_trials`` or ``timeout``).
        storage_label: how to name the storage in messages.
        log: progress messages (None = quiet).

    Returns:
        The :class:`CellTypeResult`; ``params`` are the defaults overlaid with the best
        trial's values, or the defaults if no trial beat them.
    """
    import optuna

    eval_set = evaluator.sets[cell_type]
    study, n_existing = _open_study(storage, name, eval_set, seed, worker_index,
                                    storage_label or "the storage")
    start_params = {k: _plain(defaults[k]) for k in space if k in defaults}
    if start_params and (n_trials is None or n_trials > 0):
        # First trial of a new study; also later if the config's defaults changed since.
        study.enqueue_trial(start_params, skip_if_exists=True)
    if log:
        more = "until the timeout" if n_trials is None else f"{n_trials} more"
        log(f"[{cell_type}] study {name!r}: {n_existing} trial(s) so far, running {more}"
            + (f" (timeout {timeout:g} s)" if timeout else ""))

    ran = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal ran
        ran += 1
        params = {**defaults, **suggest_params(trial, space)}
        scores = evaluator.image_scores(cell_type, params)
        trial.set_user_attr(IMAGE_SCORES_ATTR, [round(float(v), 6) for v in scores])
        return float(scores.mean())

    if n_trials is None or n_trials > 0:
        study.optimize(objective, n_trials=n_trials, timeout=timeout,
                       show_progress_bar=show_progress_bar)

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # The default score: the enqueued defaults trial's value (same images: the fingerprint
    # check guarantees it), else one evaluation here.
    default_score: float | None = None
    for t in complete:
        if _same_params(t.params, start_params):
            default_score = float(t.value)
            break
    if default_score is None:
        default_score = evaluator.score(cell_type, defaults)
    params = dict(defaults)
    best_score, best_number = default_score, None
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        if best.value > default_score:
            params.update(best.params)
            best_score, best_number = float(best.value), best.number
    return CellTypeResult(
        cell_type=cell_type, study_name=name, params=params, oof_score=best_score,
        default_score=default_score, n_images=len(eval_set), n_trials=len(complete),
        n_trials_this_run=ran, folds=sorted(set(eval_set.folds)),
        best_trial=best_number, held_out_score=held_out_score(complete, eval_set.ids),
        oof_fingerprint=eval_set.fingerprint())


def held_out_score(trials: Sequence[Any], ids: Sequence[str]) -> float | None:
    """The tuned score on images that did not choose the parameters.

    The tuned score (``oof_score``) is in-sample: the best of many trials, measured on the
    images that picked it, so it flatters (more with few images). Here the images are split
    in two halves (alternating in id order); the trial that is best on one half is scored on
    the other, both ways, and the per-image scores averaged. Uses the per-image scores every
    trial stores, so it costs no extra decoding. None with fewer than 2 images or no trial
    with per-image scores.
    """
    rows = [t.user_attrs.get(IMAGE_SCORES_ATTR) for t in trials]
    rows = [r for r in rows if r is not None and len(r) == len(ids)]
    if len(ids) < 2 or not rows:
        return None
    table = np.asarray(rows, np.float64)  # trials x images
    order = np.argsort(np.asarray(ids, dtype=object))
    half_a, half_b = order[0::2], order[1::2]
    held = np.empty(len(ids), np.float64)
    for pick, score in ((half_a, half_b), (half_b, half_a)):
        best = int(np.argmax(table[:, pick].mean(axis=1)))  # first best on a tie
        held[score] = table[best, score]
    return float(held.mean())


def save_plots(study: Any, out_dir: str | os.PathLike, prefix: str) -> list[Path]:
    """Optimisation history and parameter importances of a study, as PNGs (atomically).

    Importances need at least two completed trials whose scores differ; otherwise (or if
    Optuna cannot compute them) only the history is drawn.

    Returns:
        Paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out_dir = Path(out_dir)
    written: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_optimization_history(study)
        ax.set_title(f"{study.study_name}: optimisation history")
        path = out_dir / f"{prefix}-history.png"
        fileio.save_figure(ax.figure, path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(path)
        varied = len(complete) > 1 and len({t.value for t in complete}) > 1
        if varied:
            try:
                ax = ovm.plot_param_importances(study)
            except (RuntimeError, ValueError, ZeroDivisionError):
                ax = None
            if ax is not None:
                ax.set_title(f"{study.study_name}: parameter importances")
                path = out_dir / f"{prefix}-importances.png"
                fileio.save_figure(ax.figure, path, dpi=100, bbox_inches="tight")
                plt.close(ax.figure)
                written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


@dataclass
class TuningReport:
    """What :func:`run_tuning` did: per-type results and the file it wrote."""

    method: str
    results: list[CellTypeResult]
    output_path: Path
    storage: str
    doc: dict[str, Any]


def _merge_existing(path: Path, method: str, tuned: Iterable[str]) -> dict[str, Any]:
    """Entries of cell types not tuned now, kept from an existing output file of this method."""
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    if not isinstance(doc, dict) or doc.get("method") != method:
        return {}
    types = doc.get("cell_types")
    if not isinstance(types, dict):
        return {}
    return {t: v for t, v in types.items() if t in CELL_TYPES and t not in set(tuned)}


def _log_fresh_study(storage: Any, name: str, base: str, log: Callable[[str], None]) -> None:
    """Say so when this is a new study beside older ones of other OOF maps (retrained folds)."""
    import optuna

    try:
        names = {st.study_name for st in optuna.get_all_study_summaries(storage,
                                                                         include_best_trial=False)}
    except Exception:  # noqa: BLE001 (only a message depends on it)
        return
    older = sorted(n for n in names if n.startswith(base + "-") and n != name)
    if name not in names and older:
        log(f"OOF maps differ from those of {', '.join(older)} (folds retrained or other "
            f"folds): starting a fresh study {name!r}; the old trials stay in their study")


def tuned_on(exp_dir: Path, folds: Sequence[int], method: str) -> dict[str, Any]:
    """What the tuned parameters are valid for: the OOF maps' heads and TTA (from each fold's
    ``result.json``) and a hash of each fold's model file. ``infer.py`` warns when it runs
    with other heads, TTA or models (cellseg.tune.tuned_params.check_tuned_on)."""
    import json

    from cellseg.tune.tuned_params import model_digest

    heads, tta, models = set(), set(), {}
    for k in folds:
        fold_dir = experiment.fold_dir(exp_dir, k)
        result = fold_dir / "result.json"
        if result.is_file():
            try:
                r = json.loads(result.read_text())
                heads.add(str(r.get("oof_heads")))
                tta.add(tuple(r.get("oof_tta") or ()))
            except (ValueError, OSError):
                pass
        model = fold_dir / BEST_MODEL
        if model.is_file():
            models[int(k)] = model_digest(model)
    if method != "deep":
        return {}
    return {
        "heads": heads.pop() if len(heads) == 1 else sorted(heads) or None,
        "tta": list(tta.pop()) if len(tta) == 1 else [list(t) for t in sorted(tta)] or None,
        "models": models,
    }


def run_tuning(
    cfg: Config,
    method: str = "deep",
    folds: Iterable[int] | None = None,
    cell_types: Iterable[str] | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    n_jobs: int | None = None,
    worker_index: int = 0,
    show_progress_bar: bool = False,
    plots: bool = True,
    data: TrainData | None = None,
    log: Callable[[str], None] | None = print,
) -> TuningReport:
    """Tune post-processing per cell type on OOF predictions and write the result file.

    Args:
        cfg: the experiment's config (name, output_dir, data.root, postprocess, tune).
        method: "deep" (writes ``postprocess.yaml``) or "classical"
            (``postprocess_classical.yaml``).
        folds: OOF folds to tune on; None = all folds with OOF files.
        cell_types: subset of ``CELL_TYPES``; None = all with OOF images.
        n_trials: trials per cell type *in this process*; None = ``cfg.tune.n_trials``
            (unless ``timeout`` is given, then until the timeout).
        timeout: seconds per cell type study; None = no limit.
        storage: Optuna storage URL or journal path (see :func:`make_storage`); None = SQLite
            ``<exp dir>/tuning.db``.
        n_jobs: processes scoring a trial's images; None = ``cfg.tune.n_jobs``.
        worker_index: distinct per concurrent worker (sampler seed).
        show_progress_bar: Optuna's progress bar per study.
        plots: write ``<exp dir>/tuning/<method>-<type>-{history,importances}.png``.
        data: an opened :class:`TrainData` (default: ``cfg.data.root``).
        log: progress messages (None = quiet).

    Returns:
        A :class:`TuningReport`.

    Raises:
        TuningError: no OOF predictions, no images of the requested types, storage problems,
            a study tuned on other images.
    """
    import optuna

    if method not in METHODS:
        raise TuningError(f"method must be one of {list(METHODS)}, got {method!r}")
    if n_trials is None and timeout is None:
        n_trials = cfg.tune.n_trials
    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 0):
        raise TuningError(f"n_trials must be >= 0, got {n_trials!r}")
    if timeout is not None and not timeout > 0:
        raise TuningError(f"timeout must be > 0 seconds, got {timeout!r}")
    n_jobs = cfg.tune.n_jobs if n_jobs is None else n_jobs
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise TuningError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    exp_dir = cfg.experiment_dir()
    folds = _parse_folds(folds)
    parse_storage(storage, exp_dir)  # fail on a typo before loading the images
    sets = load_eval_sets(cfg, method, folds, cell_types, data=data, log=log)
    defaults = method_defaults(cfg, method)
    space = SEARCH_SPACES[method]
    results: list[CellTypeResult] = []
    label = describe_storage(storage or default_storage(exp_dir))
    # The pool forks before the storage opens its database connection.
    with Evaluator(sets, n_jobs=n_jobs) as evaluator:
        store = make_storage(storage, exp_dir)
        for cell_type in sets:
            name = study_name(cfg.name, method, cell_type, sets[cell_type].fingerprint())
            if log:
                _log_fresh_study(store, name, study_name(cfg.name, method, cell_type), log)
            result = tune_cell_type(
                evaluator, cell_type, store, name, defaults, space, n_trials, timeout,
                seed=cfg.tune.seed, worker_index=worker_index,
                show_progress_bar=show_progress_bar, storage_label=label, log=log)
            if plots:
                study = optuna.load_study(study_name=name, storage=store)
                written = save_plots(study, exp_dir / PLOTS_DIR, f"{method}-{cell_type}")
                result.plots = [str(p) for p in written]
            results.append(result)

    out_path = exp_dir / OUTPUT_FILES[method]
    entries = _merge_existing(out_path, method, [r.cell_type for r in results])
    entries.update({r.cell_type: r.to_yaml() for r in results})
    tuned_folds = sorted({f for r in results for f in r.folds})
    doc = {
        "method": method,
        "experiment": cfg.name,
        "folds": tuned_folds,
        **tuned_on(exp_dir, tuned_folds, method),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "storage": label,
        "optuna": optuna.__version__,
        "cell_types": {t: entries[t] for t in CELL_TYPES if t in entries},
    }
    fileio.write_text(out_path, yaml.safe_dump(doc, sort_keys=False))
    return TuningReport(method=method, results=results, output_path=out_path, storage=label,
                        doc=doc)


def format_table(results: Iterable[CellTypeResult]) -> str:
    """The end-of-run table: type, images, default score, tuned score on the images that
    chose it (in-sample) and on held-out halves (see :func:`held_out_score`), trials."""
    header = (f"{'cell type':<10} {'images':>6} {'default':>8} {'tuned':>10} {'tuned':>10} "
              f"{'trials':>7} {'(this run)':>10}")
    sub = (f"{'':<10} {'':>6} {'':>8} {'in-sample':>10} {'held-out':>10} {'':>7} {'':>10}")
    lines = [header, sub, "-" * len(header)]
    for r in results:
        held = "n/a" if r.held_out_score is None else f"{r.held_out_score:.4f}"
        lines.append(f"{r.cell_type:<10} {r.n_images:>6d} {r.default_score:>8.4f} "
                     f"{r.oof_score:>10.4f} {held:>10} "
                     f"{r.n_trials:>7d} {r.n_trials_this_run:>10d}")
    lines.append("in-sample: scored on the images that chose the parameters (optimistic); "
                 "held-out: chosen on half of the images, scored on the other half, both ways")
    return "\n".join(lines)


__all__ = [
    "METHODS",
    "OUTPUT_FILES",
    "PLOTS_DIR",
    "SEARCH_SPACES",
    "CellTypeResult",
    "EvalSet",
    "Evaluator",
    "TuningError",
    "TuningReport",
    "collect_oof",
    "default_storage",
    "describe_storage",
    "format_table",
    "held_out_score",
    "load_eval_sets",
    "make_storage",
    "method_defaults",
    "parse_storage",
    "run_tuning",
    "sampler_seed",
    "save_plots",
    "score_image",
    "study_name",
    "tune_cell_type",
    "tuned_on",
]
