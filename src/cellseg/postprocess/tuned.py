"""The tuned post-processing, ``output/<exp>/postprocess.yaml``: one typed owner for its format.

Like StarDist's ``thresholds.json``: :func:`cellseg.tune.study.run_tuning` writes it, ``export``
and ``package`` copy it, and ``infer`` / ``segment`` / ``pseudo_label`` read it through
:meth:`TunedPostprocess.params_by_type`, which fills every knob a file does not name from the
config's :class:`~cellseg.config.PostprocessParams` (the one place each default stands)::

    method: deep            # decode_instances on network maps (or classical)
    experiment: default
    folds: [0, 1]           # OOF folds tuned on
    heads: mean             # what the OOF maps were made with: infer warns on other ones
    tta: [identity, hflip]
    models: {0: 9c1e..., 1: 4d2a...}   # hash of each fold's best.keras when tuned
    date: ..., storage: ..., optuna: 5.1.0
    cell_types:
      shsy5y:
        params: {seed_threshold: 0.62, mask_threshold: 0.41, ...}
        oof_score: 0.41      # mean competition score on OOF images with these params
        default_score: 0.37  # same images, config defaults
        n_images: 31
        n_trials: 60
        folds: [0, 1]
        study: default-deep-shsy5y-5be0...
        best_trial: 12
        held_out_score: 0.39 # chosen on half the images, scored on the other half
        oof_fingerprint: 5be0...   # hash of the OOF maps + truth (the Optuna study's name)
        confidence_cutoff: 0.25    # drop cells whose confidence is below (0 = no filter)
        confidence_score: 0.42     # OOF score with that cut-off (cross-fitted confidences)
    confidence_model: confidence-3f2a9c01d4e5.skops  # per-cell confidence model beside this
                                      # file (cellseg.postprocess.confidence; record in .json)
    routing_scores:          # [true type][parameters used] -> mean OOF score; an image whose
      shsy5y: {shsy5y: 0.14, astro: 0.05, cort: 0.12}   # type is uncertain gets the type with
      ...                    # the best expected score (cellseg.model.celltype.choose_cell_type)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cellseg import fileio
from cellseg.config import Config, PostprocessParams
from cellseg.constants import CELL_TYPES
from cellseg.experiment import POSTPROCESS_FILE

#: The keys of the file's top level, in the order they are written.
_RUN_KEYS = ("method", "experiment", "folds", "heads", "tta", "models", "date", "storage",
             "optuna", "source", "confidence_model", "routing_scores")
_DEEP_KNOBS = frozenset(f.name for f in dataclasses.fields(PostprocessParams))


def plain_scalar(value: Any) -> Any:
    """NumPy scalars -> Python scalars (YAML's safe dumper takes only plain types)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


@dataclass
class TunedCellType:
    """One cell type's tuned parameters and how they were found."""

    params: dict[str, Any]
    oof_score: float | None = None
    default_score: float | None = None
    n_images: int | None = None
    n_trials: int | None = None
    folds: list[int] = field(default_factory=list)
    study: str | None = None
    best_trial: int | None = None
    held_out_score: float | None = None
    oof_fingerprint: str = ""
    confidence_cutoff: float = 0.0
    confidence_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry of the file's ``cell_types`` mapping (plain YAML types)."""
        return {
            "params": {k: plain_scalar(v) for k, v in self.params.items()},
            "oof_score": _round(self.oof_score),
            "default_score": _round(self.default_score),
            "n_images": None if self.n_images is None else int(self.n_images),
            "n_trials": None if self.n_trials is None else int(self.n_trials),
            "folds": [int(f) for f in self.folds],
            "study": self.study,
            "best_trial": self.best_trial,
            "held_out_score": _round(self.held_out_score),
            "oof_fingerprint": self.oof_fingerprint,
            "confidence_cutoff": round(float(self.confidence_cutoff), 6),
            "confidence_score": _round(self.confidence_score),
        }

    @classmethod
    def from_dict(cls, entry: Any, where: str) -> TunedCellType:
        """Parse one ``cell_types`` entry; ValueError naming ``where`` when it is malformed."""
        if not isinstance(entry, Mapping) or not isinstance(entry.get("params"), Mapping):
            raise ValueError(f"{where}.params must be a mapping")
        known = {f.name for f in dataclasses.fields(cls)} - {"params"}
        given = {k: v for k, v in entry.items() if k in known and v is not None}
        cut = given.get("confidence_cutoff", 0.0)
        if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0 <= cut <= 1:
            raise ValueError(f"{where}.confidence_cutoff must be a number in [0, 1], got {cut!r}")
        return cls(params=dict(entry["params"]), **given)


@dataclass
class TunedPostprocess:
    """The whole file: per-type entries plus what they are valid for."""

    cell_types: dict[str, TunedCellType] = field(default_factory=dict)
    method: str = "deep"
    experiment: str | None = None
    folds: list[int] = field(default_factory=list)
    heads: Any = None
    tta: Any = None
    models: dict[int, str] = field(default_factory=dict)
    date: str | None = None
    storage: str | None = None
    optuna: str | None = None
    source: str | None = None  # set by export: where the parameters came from
    confidence_model: str | None = None  # file name beside this one (None = no filter)
    routing_scores: dict[str, dict[str, float]] | None = None  # see the module doc

    # ------------------------------------------------------------------ file format
    def to_dict(self) -> dict[str, Any]:
        """The YAML document; heads/tta/models only for the deep method (the classical
        baseline reads raw images, not maps)."""
        doc: dict[str, Any] = {}
        for key in _RUN_KEYS:
            value = getattr(self, key)
            if key in ("heads", "tta", "models") and self.method != "deep":
                continue
            if key in ("experiment", "date", "storage", "optuna", "source",
                       "confidence_model", "routing_scores") and value is None:
                continue
            doc[key] = {int(k): str(v) for k, v in value.items()} if key == "models" else value
        doc["cell_types"] = {t: self.cell_types[t].to_dict() for t in CELL_TYPES
                             if t in self.cell_types}
        return doc

    def write(self, path: str | os.PathLike) -> Path:
        """Write the file atomically; returns its path."""
        path = Path(path)
        fileio.write_yaml(path, self.to_dict())
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> TunedPostprocess:
        """Read and check a file.

        Raises:
            ValueError: not YAML, no ``cell_types`` mapping, an unknown cell type, an entry
                without a ``params`` mapping, or (deep method) an unknown knob; each names the
                file and the field.
        """
        path = Path(path)
        try:
            doc = fileio.read_yaml(path)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
        types = doc.get("cell_types") if isinstance(doc, dict) else None
        if not isinstance(types, dict):
            raise ValueError(f"{path}: expected a 'cell_types' mapping")
        method = str(doc.get("method", "deep"))
        entries: dict[str, TunedCellType] = {}
        for cell_type, entry in types.items():
            if cell_type not in CELL_TYPES:
                raise ValueError(f"{path}: unknown cell type {cell_type!r} (known: {CELL_TYPES})")
            entries[cell_type] = TunedCellType.from_dict(entry, f"{path}: cell_types.{cell_type}")
            unknown = sorted(set(entries[cell_type].params) - _DEEP_KNOBS)
            if method == "deep" and unknown:
                raise ValueError(f"{path}: cell_types.{cell_type}.params: unknown knob(s) "
                                 f"{unknown}; valid: {sorted(_DEEP_KNOBS)}")
        models = doc.get("models")
        return cls(cell_types=entries, method=method, experiment=doc.get("experiment"),
                   folds=[int(f) for f in doc.get("folds") or []], heads=doc.get("heads"),
                   tta=doc.get("tta"),
                   models=({int(k): str(v) for k, v in models.items()}
                           if isinstance(models, dict) else {}),
                   date=doc.get("date"), storage=doc.get("storage"), optuna=doc.get("optuna"),
                   source=doc.get("source"),
                   confidence_model=_model_file_name(doc.get("confidence_model"), path),
                   routing_scores=_routing_scores(doc.get("routing_scores"), path))

    @classmethod
    def find(cls, exp_dir: str | os.PathLike,
             name: str = POSTPROCESS_FILE) -> TunedPostprocess | None:
        """The experiment's file, or None when it has none (not tuned yet)."""
        path = Path(exp_dir) / name
        return cls.read(path) if path.is_file() else None

    # ------------------------------------------------------------------ use
    def cutoffs(self) -> dict[str, float]:
        """Each tuned type's confidence cut-off (0 = keep every cell)."""
        return {t: float(e.confidence_cutoff) for t, e in self.cell_types.items()}

    def load_confidence(self, exp_dir: str | os.PathLike) -> Any:
        """The per-cell confidence model this file names (a
        :class:`~cellseg.postprocess.confidence.CellConfidence`), or None when it names none
        or every cut-off is 0.

        Raises:
            ConfidenceModelError: the named model is missing, altered or unsafe.
        """
        if self.confidence_model is None or not any(v > 0 for v in self.cutoffs().values()):
            return None
        from cellseg.postprocess.confidence import CellConfidence

        return CellConfidence.load(Path(exp_dir) / self.confidence_model)

    def copy_confidence(self, exp_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
        """Copy the confidence model this file names (``.skops`` and its ``.json`` record)
        from ``exp_dir`` into ``out_dir``, beside a copy of this file; checked first
        (:meth:`load_confidence`), so a broken model fails here, not in the kernel."""
        if self.load_confidence(exp_dir) is None:
            return
        for suffix in (".skops", ".json"):
            name = Path(str(self.confidence_model)).with_suffix(suffix).name
            shutil.copy2(Path(exp_dir) / name, Path(out_dir) / name)

    def params_by_type(self, base: PostprocessParams) -> dict[str, dict[str, Any]]:
        """Every cell type's decoding knobs: ``base`` (the config's defaults) overlaid with
        the tuned values of the types the file holds."""
        defaults = dataclasses.asdict(base)
        return {t: {**defaults, **(self.cell_types[t].params if t in self.cell_types else {})}
                for t in CELL_TYPES}

    def mismatch(self, heads: str, tta: Sequence[str],
                 model_files: Sequence[tuple[int, Path]]) -> list[str]:
        """Why maps made now differ from the tuned ones: other heads, other TTA, or fold
        models retrained since tuning (their hashes differ). Empty when they match or the
        file predates these records."""
        reasons = []
        if self.heads not in (None, heads):
            reasons.append(f"heads {self.heads!r} when tuned, {heads!r} now")
        if self.tta is not None and list(self.tta) != list(tta):
            reasons.append(f"TTA {self.tta} when tuned, {list(tta)} now")
        changed = [k for k, p in model_files if k in self.models
                   and Path(p).is_file() and model_digest(p) != self.models[k]]
        if changed:
            reasons.append(f"fold model(s) {changed} retrained since tuning")
        return reasons


def _routing_scores(value: Any, path: Path) -> dict[str, dict[str, float]] | None:
    """``routing_scores``: a mapping true type -> routed type -> score, known types only."""
    if value is None:
        return None
    ok = isinstance(value, Mapping) and all(
        t in CELL_TYPES and isinstance(row, Mapping)
        and all(r in CELL_TYPES and isinstance(v, (int, float)) and not isinstance(v, bool)
                for r, v in row.items()) for t, row in value.items())
    if not ok:
        raise ValueError(f"{path}: routing_scores must map a cell type to a mapping of cell "
                         f"types to scores ({list(CELL_TYPES)}), got {value!r}")
    return {str(t): {str(r): float(v) for r, v in row.items()} for t, row in value.items()}


def _model_file_name(value: Any, path: Path) -> str | None:
    """``confidence_model``: a plain file name beside the YAML file (never a path: a file
    from someone else's package must not point the loader elsewhere)."""
    if value is None:
        return None
    name = str(value)
    if Path(name).name != name or name in ("", ".", "..") or not name.endswith(".skops"):
        raise ValueError(f"{path}: confidence_model must be a .skops file name beside it, got "
                         f"{value!r}")
    return name


def model_digest(path: str | os.PathLike) -> str:
    """Short SHA-1 of a model file: tells a retrained fold from the one that was tuned."""
    return fileio.file_digest(path, "sha1")[:16]


#: Default of the ``tuned`` arguments below: read ``postprocess.yaml`` from ``exp_dir`` (a
#: caller that has read it already passes what it read, even None, so one load sees one file).
READ_FROM_EXP_DIR: Any = object()


def params_by_type(exp_dir: str | os.PathLike, cfg: Config, warn: bool = True,
                   tuned: TunedPostprocess | None = READ_FROM_EXP_DIR
                   ) -> dict[str, dict[str, Any]]:
    """Per-cell-type decoding knobs of an experiment: its tuned file over the config's
    defaults; warns when the file is missing or lacks a type.

    Raises:
        ValueError: a malformed file (:meth:`TunedPostprocess.read`).
    """
    if tuned is READ_FROM_EXP_DIR:
        tuned = TunedPostprocess.find(exp_dir)
    path = Path(exp_dir) / POSTPROCESS_FILE
    if tuned is None:
        if warn:
            warnings.warn(f"{path} not found: using the config's default post-processing "
                          f"(run `python src/tune.py --exp {Path(exp_dir).name}` to tune it)",
                          stacklevel=2)
        return TunedPostprocess().params_by_type(cfg.postprocess)
    missing = [t for t in CELL_TYPES if t not in tuned.cell_types]
    if missing and warn:
        warnings.warn(f"{path}: no tuned parameters for {missing}; using defaults for them",
                      stacklevel=2)
    return tuned.params_by_type(cfg.postprocess)


def check_tuned_on(exp_dir: str | os.PathLike, heads: str, tta: list[str],
                   model_files: list[tuple[int, Path]],
                   tuned: TunedPostprocess | None = READ_FROM_EXP_DIR) -> list[str]:
    """Warn (and return the reasons) when the experiment's tuned parameters were found on
    other maps than this run makes (:meth:`TunedPostprocess.mismatch`); an unreadable or
    missing file passes silently (reading the parameters reports it)."""
    if tuned is READ_FROM_EXP_DIR:
        try:
            tuned = TunedPostprocess.find(exp_dir)
        except ValueError:
            return []
    reasons = [] if tuned is None else tuned.mismatch(heads, tta, model_files)
    if reasons:
        warnings.warn(f"{Path(exp_dir) / POSTPROCESS_FILE} was tuned for other maps than this "
                      f"run makes ({'; '.join(reasons)}): its parameters may not fit; re-run "
                      f"`python src/tune.py --exp {Path(exp_dir).name}` or match the settings",
                      stacklevel=2)
    return reasons


__all__ = ["TunedCellType", "TunedPostprocess", "check_tuned_on", "model_digest",
           "params_by_type", "plain_scalar"]
