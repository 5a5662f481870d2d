"""The tuned post-processing file, ``output/<exp>/postprocess.yaml``: format, read, write.

Written by ``tune.py``, read by ``infer.py`` and the Kaggle kernel. Per cell type it holds
the parameters of :func:`cellseg.postprocess.decode.decode_instances` and how they were found::

    method: deep            # decode_instances on network maps
    folds: [0, 1]           # OOF folds tuned on
    heads: mean             # what the OOF maps were made with: infer warns on other ones
    tta: [identity, hflip]
    models: {0: 9c1e..., 1: 4d2a...}   # hash of each fold's best.keras when tuned
    cell_types:
      shsy5y:
        params: {seed_threshold: 0.62, mask_threshold: 0.41, min_seed_area: 14, min_area: 30}
        oof_score: 0.41      # mean competition score on OOF images with these params
        default_score: 0.37  # same images, config defaults
        n_images: 31
        n_trials: 60
        held_out_score: 0.39 # chosen on half the images, scored on the other half
        oof_fingerprint: 5be0...   # hash of the OOF maps + truth (the Optuna study's name)
      astro: ...
      cort: ...
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from cellseg import fileio
from cellseg.config import Config
from cellseg.constants import CELL_TYPES
from cellseg.experiment import POSTPROCESS_FILE


def defaults(cfg: Config) -> dict[str, dict[str, Any]]:
    """Config defaults for every cell type."""
    return {t: dataclasses.asdict(cfg.postprocess) for t in CELL_TYPES}


def load_params(exp_dir: str | os.PathLike, cfg: Config, warn: bool = True
                ) -> dict[str, dict[str, Any]]:
    """Per-cell-type parameters from ``<exp_dir>/postprocess.yaml``; config defaults (with a
    warning) when the file is missing or lacks a type."""
    path = Path(exp_dir) / POSTPROCESS_FILE
    params = defaults(cfg)
    if not path.is_file():
        if warn:
            warnings.warn(f"{path} not found: using the config's default post-processing "
                          f"(run `python src/tune.py --exp {Path(exp_dir).name}` to tune it)",
                          stacklevel=2)
        return params
    try:
        doc = fileio.read_yaml(path)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    types = doc.get("cell_types") if isinstance(doc, dict) else None
    if not isinstance(types, dict):
        raise ValueError(f"{path}: expected a 'cell_types' mapping")
    for cell_type, entry in types.items():
        if cell_type not in CELL_TYPES:
            raise ValueError(f"{path}: unknown cell type {cell_type!r} (known: {CELL_TYPES})")
        if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
            raise ValueError(f"{path}: cell_types.{cell_type}.params must be a mapping")
        params[cell_type] = {**params[cell_type], **entry["params"]}
    missing = [t for t in CELL_TYPES if t not in types]
    if missing and warn:
        warnings.warn(f"{path}: no tuned parameters for {missing}; using defaults for them",
                      stacklevel=2)
    return params


def model_digest(path: str | os.PathLike) -> str:
    """Short SHA-1 of a model file: tells a retrained fold from the one that was tuned."""
    return fileio.file_digest(path, "sha1")[:16]


def check_tuned_on(exp_dir: str | os.PathLike, heads: str, tta: list[str],
                   model_files: list[tuple[int, Path]]) -> list[str]:
    """Warn (and return the reasons) when the post-processing was tuned on OOF maps made with
    other heads or TTA, or with fold models that have been retrained since (their hashes in
    ``postprocess.yaml`` differ). Older files without these keys pass silently."""
    path = Path(exp_dir) / POSTPROCESS_FILE
    if not path.is_file():
        return []
    try:
        doc = fileio.read_yaml(path)
    except yaml.YAMLError:
        return []
    if not isinstance(doc, dict):
        return []
    reasons = []
    if doc.get("heads") not in (None, heads):
        reasons.append(f"heads {doc['heads']!r} when tuned, {heads!r} now")
    if doc.get("tta") is not None and list(doc["tta"]) != list(tta):
        reasons.append(f"TTA {doc['tta']} when tuned, {list(tta)} now")
    models = doc.get("models")
    if isinstance(models, dict):
        recorded = {int(k): str(v) for k, v in models.items()}
        changed = [k for k, p in model_files if k in recorded
                   and Path(p).is_file() and model_digest(p) != recorded[k]]
        if changed:
            reasons.append(f"fold model(s) {changed} retrained since tuning")
    if reasons:
        warnings.warn(f"{path} was tuned for other maps than this run makes ("
                      f"{'; '.join(reasons)}): its parameters may not fit; re-run "
                      f"`python src/tune.py --exp {Path(exp_dir).name}` or match the settings",
                      stacklevel=2)
    return reasons


def save_params(exp_dir: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write ``postprocess.yaml`` atomically; returns its path."""
    path = Path(exp_dir) / POSTPROCESS_FILE
    fileio.write_yaml(path, doc)
    return path
