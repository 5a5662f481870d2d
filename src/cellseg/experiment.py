"""An experiment folder's layout: the one place that names its folders and files.

Every command reads or writes ``<output_dir>/<exp>/`` through these names (docs/design.md
section 9); a file's name is spelled nowhere else::

    output/<exp>/
      fold<K>/                   one training run (train.py --fold K)
        config.yaml              resolved config, written before training starts
        best.keras               best validation score (inference uses it)
        last.keras + state.json  last full checkpoint, for --resume
        history.csv, curves.png  per-epoch metrics and their plot
        oof/<image id>.npz       out-of-fold maps, the hand-off to tuning
        oof_scores.csv           per-image validation scores
        result.json              run summary; its presence means "finished"
        cell_type_classifier.json, init_from.json
      fold<K>.replaced/          the finished run an --overwrite is replacing (until it ends)
      tuning.db                  Optuna storage of tune.py
      postprocess.yaml           tuned post-processing, read by infer/segment/package
      confidence-<digest>.skops  per-cell confidence model that postprocess.yaml names (+ .json)
      postprocess_classical.yaml the classical baseline's (tune.py --method classical)

Like StarDist's model folder, the config that made a model is saved beside it, so every later
command rebuilds the experiment from the folder (:func:`resolve_config`), not from a YAML file
that could have changed since.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from cellseg.config import Config, ConfigError, load_config
from cellseg.exceptions import InferenceError

# per fold
SAVED_CONFIG = "config.yaml"
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
STATE_FILE = "state.json"
RESULT_FILE = "result.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
OOF_DIRNAME = "oof"
OOF_SCORES_FILE = "oof_scores.csv"
CLASSIFIER_FILE = "cell_type_classifier.json"
INIT_FILE = "init_from.json"  # which layers train.init_from loaded
REPLACED_SUFFIX = ".replaced"
# per experiment
TUNING_DB = "tuning.db"
POSTPROCESS_FILE = "postprocess.yaml"
CLASSICAL_POSTPROCESS_FILE = "postprocess_classical.yaml"  # tune.py --method classical
CONFIDENCE_MODEL = "confidence"  # tune.py: <this>-<digest>.skops + .json, named in postprocess.yaml

_FOLD_RE = re.compile(r"^fold(\d+)$")


def fold_dir_name(fold: int) -> str:
    """``3`` -> ``"fold3"``."""
    return f"fold{int(fold)}"


def fold_of(path: str | os.PathLike) -> int | None:
    """``.../fold3`` -> ``3``; None for any other folder (``fold3.replaced``, ``oof``)."""
    m = _FOLD_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def fold_dir(exp_dir: str | os.PathLike, fold: int) -> Path:
    """``<exp_dir>/fold<K>``."""
    return Path(exp_dir) / fold_dir_name(fold)


def fold_dirs(exp_dir: str | os.PathLike, folds: Sequence[int] | None = None
              ) -> list[tuple[int, Path]]:
    """``[(K, <exp_dir>/fold<K>), ...]`` of the fold folders that exist, sorted by K;
    ``folds`` (None = all) keeps only those."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = sorted((k, d) for d in exp_dir.iterdir()
                   if d.is_dir() and (k := fold_of(d)) is not None)
    if folds is not None:
        wanted = {int(k) for k in folds}
        found = [(k, d) for k, d in found if k in wanted]
    return found


def oof_dir(fold_path: str | os.PathLike) -> Path:
    """``<fold dir>/oof``: one ``<image id>.npz`` per validation image."""
    return Path(fold_path) / OOF_DIRNAME


def is_finished(fold_path: str | os.PathLike) -> bool:
    """A training run wrote its summary (``result.json``) last, so it finished."""
    return (Path(fold_path) / RESULT_FILE).is_file()


def _replaced_hint(fold_path: Path) -> str:
    """The way back when a killed ``train.py --overwrite`` left the finished model only in
    ``fold<K>.replaced/`` (else ""). Why: "no trained model" alone hides the backup."""
    aside = fold_path.with_name(fold_path.name + REPLACED_SUFFIX)
    if not (aside / BEST_MODEL).is_file():
        return ""
    return (f"the previous finished run is kept in {aside} (a train.py --overwrite of it did "
            f"not finish): to use it, remove {fold_path} and rename {aside} to "
            f"{fold_path.name}; or ")


def find_fold_models(exp_dir: str | os.PathLike, folds: Sequence[int] | None = None
                     ) -> list[tuple[int, Path]]:
    """The ``fold<K>/best.keras`` files of an experiment, sorted by fold.

    Args:
        exp_dir: ``output/<exp>``.
        folds: the folds wanted; None or empty = every fold that has a ``best.keras``.

    Returns:
        ``[(fold, path), ...]``.

    Raises:
        InferenceError: no model at all, or a requested fold without one (the message names
            the missing file and the training command that makes it).
    """
    exp_dir = Path(exp_dir)
    if folds:
        found, missing = [], []
        for k in sorted({int(f) for f in folds}):
            path = fold_dir(exp_dir, k) / BEST_MODEL
            (found if path.is_file() else missing).append((k, path))
        if missing:
            k, path = missing[0]
            raise InferenceError(
                f"{path} not found: fold {k} has no trained model; {_replaced_hint(path.parent)}"
                f"train it with `python src/train.py --fold {k} --exp {exp_dir.name}` or leave "
                f"it out of --folds"
            )
    else:
        found = [(k, d / BEST_MODEL) for k, d in fold_dirs(exp_dir) if (d / BEST_MODEL).is_file()]
        if not found:
            where = exp_dir if exp_dir.is_dir() else f"{exp_dir} (folder does not exist)"
            hints = "".join(
                _replaced_hint(d.with_name(d.name[:-len(REPLACED_SUFFIX)]))
                for d in sorted(exp_dir.glob(f"fold*{REPLACED_SUFFIX}"))) if exp_dir.is_dir() \
                else ""
            raise InferenceError(
                f"no trained model in {where}: expected fold<K>/{BEST_MODEL}; {hints}train one "
                f"with `python src/train.py --fold K --exp {exp_dir.name}` (K = 0, 1, ...)"
            )
    for k, path in found:
        if not is_finished(path.parent):
            hint = _replaced_hint(path.parent)
            warnings.warn(f"{path.parent}: no {RESULT_FILE}, so fold {k}'s training did not "
                          f"finish; using its best model so far"
                          + (f" ({hint.removesuffix('; or ')})" if hint else ""), stacklevel=2)
    return found


def saved_config_path(exp_dir: str | os.PathLike, folds: Sequence[int] | None = None
                      ) -> Path | None:
    """The resolved config saved by training: ``fold0/config.yaml`` if present, else that of
    the first (requested) fold that has one; None when there is none."""
    candidates = [fold_dir(exp_dir, 0) / SAVED_CONFIG]
    if folds:
        candidates = [fold_dir(exp_dir, k) / SAVED_CONFIG for k in sorted(folds)] + candidates
    candidates += [d / SAVED_CONFIG for _, d in fold_dirs(exp_dir)]
    return next((p for p in candidates if p.is_file()), None)


def resolve_config(
    config_path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    exp: str | None = None,
    config_explicit: bool = False,
    folds: Sequence[int] | None = None,
) -> tuple[Config, Path, Path | None]:
    """The config a command after training uses, and the experiment folder it reads.

    The one rule of ``tune.py``, ``infer.py``, ``segment.py``, ``pseudo_label.py``,
    ``export.py``, ``package.py`` and the kernel: the model, its default post-processing and
    the data root the folds were trained on come from the experiment's saved
    ``fold<K>/config.yaml``; how to run this command (``infer`` and ``tune`` sections: TTA,
    heads, batch size, trials) may come from an explicit ``--config``.

    Rules: ``config_path`` (+ ``overrides``, + ``exp`` as the name) locates the experiment
    (``<output_dir>/<name>``). If it has a saved config, that is the base; an explicitly
    given ``--config`` then replaces its ``infer`` and ``tune`` sections, never its ``data``
    (a config file naming another data root must not silently move the experiment to other
    data: pass ``--data-dir`` / ``--set data.root=...`` for that). ``overrides``
    (``--set k=v``) apply last, to whichever base is used.

    Returns:
        ``(cfg, exp_dir, saved config path or None)``.

    Raises:
        ConfigError: unreadable config or bad override.
    """
    cli_cfg = load_config(config_path, list(overrides))
    if exp:
        cli_cfg = dataclasses.replace(cli_cfg, name=str(exp))
    exp_dir = cli_cfg.experiment_dir()
    saved = saved_config_path(exp_dir, folds)
    if saved is None:
        return cli_cfg, exp_dir, None
    try:
        saved_cfg = load_config(saved, list(overrides))
    except ConfigError as exc:
        raise ConfigError(f"saved experiment config: {exc}") from None
    keep = {"name": cli_cfg.name, "output_dir": cli_cfg.output_dir}
    if config_explicit:
        keep.update(infer=cli_cfg.infer, tune=cli_cfg.tune)
    return dataclasses.replace(saved_cfg, **keep), exp_dir, saved
