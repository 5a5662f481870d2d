"""Competition score of a post-processing parameter set on an :class:`EvalSet`'s images.

Why a process pool: each trial scores every image of a cell type (decode + metric), so it
spreads its images over ``cfg.tune.n_jobs`` processes, created once per run (on Linux forked, so
the cached images are shared copy-on-write, not copied), or scores them serially for
``n_jobs=1``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cellseg.metrics.score import match
from cellseg.exceptions import TuningError
from cellseg.postprocess.classical import classical_segment
from cellseg.postprocess.decode import decode_with_params
from cellseg.train import oof
from cellseg.tune.eval_sets import EvalSet


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


__all__ = ["Evaluator", "score_image"]
