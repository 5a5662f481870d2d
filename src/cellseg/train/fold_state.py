"""A fold folder's state before training: new, finished, interrupted or being replaced.

Why its own module: an experiment folder is days of GPU time; these rules decide whether a
run may start, resume or overwrite, and never delete a finished fold before its replacement
exists (docs/design.md section 9).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cellseg import experiment, fileio
from cellseg.config import Config
from cellseg.exceptions import TrainingError
from cellseg.experiment import LAST_MODEL, REPLACED_SUFFIX, RESULT_FILE, SAVED_CONFIG, STATE_FILE


def fold_dir_for(cfg: Config, fold: int) -> Path:
    """``<output_dir>/<name>/fold<K>``."""
    return experiment.fold_dir(cfg.experiment_dir(), fold)


def check_fold_dir(fold_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber or resume the wrong thing; deletes nothing (see set_aside)."""
    finished = (fold_dir / RESULT_FILE).is_file()
    started = (fold_dir / STATE_FILE).is_file()
    if overwrite:
        return
    if resume:
        if finished:
            raise TrainingError(f"{fold_dir}: this fold already finished ({RESULT_FILE} "
                                f"exists); nothing to resume. Use --overwrite to retrain.")
        if not started or not (fold_dir / LAST_MODEL).is_file():
            raise TrainingError(f"{fold_dir}: no checkpoint ({STATE_FILE} + {LAST_MODEL}) to "
                                f"resume from; start without --resume")
        return
    if finished:
        raise TrainingError(f"{fold_dir}: a finished run is there; refusing to overwrite it "
                            f"(use --overwrite, or another --exp name)")
    if started:
        raise TrainingError(f"{fold_dir}: an interrupted run is there; continue it with "
                            f"--resume or discard it with --overwrite")


def set_aside(fold_dir: Path) -> Path | None:
    """--overwrite, once the new run's data has loaded: move the old run to
    ``fold<K>.replaced`` (deleted when the new run finishes) rather than deleting it, so a
    crash or Ctrl-C in the new run never loses a finished fold. An unfinished run is simply
    removed; an earlier ``.replaced`` is kept when the folder it would replace is unfinished.
    """
    if not fold_dir.exists():
        return None
    aside = fold_dir.with_name(fold_dir.name + REPLACED_SUFFIX)
    if not (fold_dir / RESULT_FILE).is_file():
        shutil.rmtree(fold_dir)
        return aside if aside.exists() else None
    if aside.exists():
        shutil.rmtree(aside)
    fold_dir.rename(aside)
    print(f"--overwrite: the previous run is kept in {aside} until this one finishes",
          flush=True)
    return aside


# Keys that may change on --resume: they do not change what is trained.
RESUME_FREE_KEYS = ("train.workers", "train.time_budget_min", "infer.", "tune.", "name",
                    "output_dir")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """``key: saved -> now`` for every training-relevant key that differs."""
    old, new = _flat(saved), _flat(cfg.to_dict())
    changed = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_FREE_KEYS) or old.get(key) == new.get(key):
            continue
        changed.append(f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
    return changed


def check_resume_config(fold_dir: Path, cfg: Config) -> None:
    path = fold_dir / SAVED_CONFIG
    if not path.is_file():
        return
    saved = fileio.read_yaml(path)
    changed = config_changes(saved, cfg)
    if changed:
        raise TrainingError(
            f"{fold_dir}: --resume with a config that differs from the run's {path.name} in "
            f"{len(changed)} key(s): {'; '.join(changed)}. Resume with the same config and "
            f"options (the schedule and model depend on them), or start again with --overwrite"
        )
