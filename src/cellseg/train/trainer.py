"""Training one fold: Attention UNet++ on all folds but K, validated on fold K.

What a run leaves in ``output/<exp>/fold<K>/`` (every file written atomically):

- ``config.yaml``   resolved config, written before training starts
- ``best.keras``    model with the best validation competition score (inference uses it);
                    re-saved without optimizer state when the run finishes: 1/5 of the size
                    (37.7 vs 186.4 MB for configs/default.yaml)
- ``last.keras`` + ``state.json``   last full checkpoint (weights + optimizer), for ``--resume``
- ``history.csv``, ``curves.png``   per-epoch metrics and their plot (paper's figure 10)
- ``oof/<id>.npz``  out-of-fold probability maps + cell-type probabilities (for tuning)
- ``oof_scores.csv``, ``result.json``   per-image validation scores and the run summary

Validation, checkpoints and Ctrl-C are :mod:`cellseg.train.monitor`; the devices
:mod:`cellseg.train.distribute`; whether a fold may start, resume or overwrite
:mod:`cellseg.train.fold_state`. This module runs the fold: data, model, ``fit``, OOF maps,
the cell-type classifier and the summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.config import Config, save_config
from cellseg.data.data_root import DataError, TrainData
from cellseg.data.folds import FOLDS_FILENAME, load_folds
from cellseg.exceptions import TrainingError
from cellseg.experiment import (
    BEST_MODEL,
    CLASSIFIER_FILE,
    HISTORY_FILE,
    INIT_FILE,
    LAST_MODEL,
    OOF_SCORES_FILE,
    RESULT_FILE,
    SAVED_CONFIG,
    STATE_FILE,
    fold_of,
)
from cellseg.model.celltype import CellTypeClassifier
from cellseg.model.losses import compile_kwargs
from cellseg.model.network import build_model, output_names
from cellseg.train import oof
from cellseg.train.batches import Sample, TrainBatches, load_samples
from cellseg.train.distribute import (
    is_chief,
    is_multiworker,
    local_copy,
    make_strategy,
    work_around_multiworker_build,
)
from cellseg.train.fold_state import (
    check_fold_dir,
    check_resume_config,
    fold_dir_for,
    set_aside,
)
from cellseg.train.monitor import (
    FoldMonitor,
    stop_on_ctrl_c,
    validate_images,
)
from cellseg.model.schedules import WarmupCosine


# --------------------------------------------------------------------------- the run
def init_from_model(model: keras.Model, path: str | os.PathLike) -> dict[str, Any]:
    """Copy the weights of every layer of ``path``'s model with the same name and weight
    shapes into ``model`` (pre-training -> fine-tuning); the rest keep their initialisation.

    Returns ``{"from", "loaded": [names], "not_loaded": {name: reason}}``.

    Raises:
        TrainingError: the file is missing or not a loadable model, or no layer matches.
    """
    from cellseg.exceptions import InferenceError
    from cellseg.model.predict import load_models

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"train.init_from: {path} not found (expected a .keras model, e.g. "
                            f"output/<exp>/fold0/best.keras)")
    try:
        (source,) = load_models([path])
    except InferenceError as exc:
        raise TrainingError(f"train.init_from: {exc}") from None
    by_name = {layer.name: layer for layer in source.layers}
    loaded: list[str] = []
    not_loaded: dict[str, str] = {}
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        src = by_name.get(layer.name)
        if src is None:
            not_loaded[layer.name] = "no layer of that name in the source"
            continue
        src_weights = src.get_weights()
        shapes = [w.shape for w in weights]
        src_shapes = [w.shape for w in src_weights]
        if shapes != src_shapes:
            not_loaded[layer.name] = f"shapes {src_shapes} in the source, {shapes} here"
            continue
        layer.set_weights(src_weights)
        loaded.append(layer.name)
    if not loaded:
        raise TrainingError(f"train.init_from: {path}: no layer matches this model by name and "
                            f"shape (another architecture?)")
    n = len(loaded) + len(not_loaded)
    print(f"init from {path}: {len(loaded)} of {n} layers with weights loaded"
          + (f"; re-initialised: {', '.join(f'{k} ({v})' for k, v in not_loaded.items())}"
             if not_loaded else ""), flush=True)
    return {"from": str(path), "loaded": loaded, "not_loaded": not_loaded}


def load_extra_samples(cfg: Config, exclude_ids: set[str], max_radius: int) -> list[Sample]:
    """Every image of the ``data.extra`` roots as training samples with their weight.

    Images whose id is also a validation id of the main root are left out (a copy of a
    validation image must not leak into training) with a warning.
    """
    import hashlib
    import warnings

    from cellseg.config import parse_extra

    samples: list[Sample] = []
    for entry in cfg.data.extra:
        root, weight = parse_extra(entry)
        if not (Path(root) / "train.csv").is_file():
            raise DataError(f"data.extra: {root}/train.csv not found (expected a data root "
                            f"in the competition layout, e.g. from convert_coco.py or "
                            f"pseudo_label.py)")
        data = TrainData(root)
        ids = [i for i in data.ids if i not in exclude_ids]
        if len(ids) < len(data.ids):
            warnings.warn(f"data.extra {root}: {len(data.ids) - len(ids)} image id(s) are "
                          f"validation images of this fold; left out of training", stacklevel=2)
        if cfg.data.cache_dir:
            digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
            cache_dir = str(Path(cfg.data.cache_dir) / f"extra-{digest}")
        else:
            cache_dir = str(Path(root) / ".cache")
        extra = load_samples(data, ids, cache_dir, desc=f"extra {Path(root).name}",
                             max_radius=max_radius, n_targets=cfg.model.n_targets)
        for sample in extra:
            sample.weight = weight
        print(f"extra data {root}: {len(extra)} images, weight {weight:g}", flush=True)
        samples.extend(extra)
    return samples


def split_ids(cfg: Config, data: TrainData, fold: int) -> tuple[list[str], list[str]]:
    """Training and validation image ids of ``fold`` from ``<data root>/folds.csv``."""
    folds = load_folds(Path(cfg.data.root) / FOLDS_FILENAME, ids=data.ids)
    folds = folds[folds["id"].isin(data.ids)]
    known = sorted(int(f) for f in folds["fold"].unique())
    if fold not in known:
        raise TrainingError(f"fold {fold} not in {Path(cfg.data.root) / FOLDS_FILENAME} "
                            f"(folds there: {known})")
    val = folds.loc[folds["fold"] == fold, "id"].tolist()
    train = folds.loc[folds["fold"] != fold, "id"].tolist()
    return train, val


def train_fold(cfg: Config, fold: int, resume: bool = False, overwrite: bool = False,
               verbose: int | str = "auto") -> Path:
    """Train one fold end to end; returns the fold directory (see :func:`_train_fold`).

    Keras' global dtype policy (``train.mixed_precision``) is restored afterwards, so a
    caller's later models (tests, notebooks, a second fold in one process) are not silently
    built in float16."""
    previous = keras.mixed_precision.global_policy()
    try:
        return _train_fold(cfg, fold, resume=resume, overwrite=overwrite, verbose=verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _split_fold(cfg: Config, data: TrainData, fold: int) -> tuple[list[str], list[str],
                                                                  list[str]]:
    """``(training ids, validation ids, ids scored each epoch)`` of one fold.

    ``train.max_val_images`` caps the per-epoch scoring only (a seeded sample); the OOF maps
    cover every validation image.
    """
    train_ids, val_ids = split_ids(cfg, data, fold)
    if not val_ids or not train_ids:
        raise TrainingError(f"fold {fold}: {len(train_ids)} training and {len(val_ids)} "
                            f"validation images; both must be non-empty")
    monitor_ids = val_ids
    if cfg.train.max_val_images and len(val_ids) > cfg.train.max_val_images:
        rng = np.random.default_rng(cfg.seed)
        monitor_ids = sorted(rng.choice(val_ids, cfg.train.max_val_images,
                                        replace=False).tolist())
    return train_ids, val_ids, monitor_ids


def _open_model(cfg: Config, fold: int, fold_dir: Path, strategy: Any, resume: bool,
                chief: bool, state: dict[str, Any]) -> tuple[keras.Model, list[dict[str, Any]]]:
    """The fold's compiled model and the history so far, in the strategy's scope.

    Resumed: ``last.keras`` with its optimizer, ``state`` updated from ``state.json`` and the
    history cut at that epoch. New: built, initialised from ``train.init_from`` when set
    (its report written beside the model) and compiled (:func:`compile_model`).
    """
    history: list[dict[str, Any]] = []
    with strategy.scope():
        if resume:
            state.update(json.loads((fold_dir / STATE_FILE).read_text()))
            model = keras.saving.load_model(fold_dir / LAST_MODEL)
            if (fold_dir / HISTORY_FILE).is_file():
                old = pd.read_csv(fold_dir / HISTORY_FILE)
                history = old[old["epoch"] < state["epoch"]].to_dict("records")
            print(f"resuming at epoch {state['epoch'] + 1} "
                  f"(best val_score {state['best_score']:.4f})", flush=True)
            return model, history
        model = build_model(cfg.model, name=f"{cfg.name}_fold{fold}")
        if cfg.train.init_from:
            init_report = init_from_model(model, cfg.train.init_from)
            if chief:
                fileio.write_text(fold_dir / INIT_FILE, json.dumps(init_report, indent=2))
        compile_model(model, cfg)
    return model, history


def compile_model(model: keras.Model, cfg: Config, jit_compile: bool | None = None) -> None:
    """Compile ``model`` for training as every fold is: AdamW on the warm-up + cosine
    schedule over ``train.epochs`` x ``train.steps_per_epoch``, the config's losses and
    metrics; XLA from ``train.xla`` unless ``jit_compile`` says otherwise (bench/gpu_check.py).
    Call it in the distribution strategy's scope."""
    steps = cfg.train.steps_per_epoch
    schedule = WarmupCosine(cfg.train.learning_rate, cfg.train.warmup_epochs * steps,
                            cfg.train.epochs * steps)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                       weight_decay=cfg.train.weight_decay)
    model.compile(optimizer=optimizer,
                  jit_compile=cfg.train.xla if jit_compile is None else jit_compile,
                  **compile_kwargs(model, cfg.train))


def _train_fold(cfg: Config, fold: int, resume: bool = False, overwrite: bool = False,
                verbose: int | str = "auto") -> Path:
    """Train one fold end to end; returns the fold directory.

    Args:
        cfg: resolved config (``data.root`` must hold ``train.csv`` and ``folds.csv``).
        fold: validation fold index.
        resume: continue from ``last.keras`` + ``state.json``.
        overwrite: delete an existing fold directory first.
        verbose: Keras ``fit`` verbosity (progress bar).
    """
    chief = is_chief()
    fold_dir = fold_dir_for(cfg, fold)
    if chief:
        check_fold_dir(fold_dir, resume, overwrite)
        if resume:
            check_resume_config(fold_dir, cfg)
    keras.utils.set_random_seed(cfg.seed + fold)
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(cfg)

    # Everything that can fail on bad data happens before the fold folder is touched.
    data = TrainData(cfg.data.root)
    train_ids, val_ids, monitor_ids = _split_fold(cfg, data, fold)
    cache_dir = cfg.data.cache_dir or str(Path(cfg.data.root) / ".cache")
    print(f"fold {fold}: {len(train_ids)} training / {len(val_ids)} validation images "
          f"-> {fold_dir} (replicas: {strategy.num_replicas_in_sync})", flush=True)
    radius, n_targets = cfg.train.border_radius_max, cfg.model.n_targets
    train_samples = load_samples(data, train_ids, cache_dir, desc="train images",
                                 max_radius=radius, n_targets=n_targets)
    train_samples += load_extra_samples(cfg, set(val_ids), radius)
    val_samples = load_samples(data, val_ids, cache_dir, keep_instances=True, max_radius=radius,
                               desc="val images", n_targets=n_targets)
    if cfg.train.init_from and not resume and not Path(cfg.train.init_from).is_file():
        raise TrainingError(f"train.init_from: {cfg.train.init_from} not found (expected a "
                            f".keras model, e.g. output/<exp>/fold0/best.keras; configs/"
                            f"real_cpu.yaml's comes from `make pretrain-synthetic`; "
                            f"--set 'train.init_from=\"\"' starts from random weights)")

    replaced = set_aside(fold_dir) if chief and overwrite else None
    main_ids = set(train_ids)
    classifier = train_cell_type_classifier([s for s in train_samples
                                             if s.image_id in main_ids], cfg.seed)
    if chief:
        classifier.save(fold_dir / CLASSIFIER_FILE)
    monitor_set = set(monitor_ids)
    monitor_samples = [s for s in val_samples if s.image_id in monitor_set]
    val_type_probs = classifier_probs(classifier, val_samples)

    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "wait": 0}
    if chief and not resume:
        save_config(cfg, fold_dir / SAVED_CONFIG)
    steps = cfg.train.steps_per_epoch
    model, history = _open_model(cfg, fold, fold_dir, strategy, resume, chief, state)
    global_batch = cfg.train.batch_size
    batches = TrainBatches(train_samples, cfg, output_names(model), batch_size=global_batch,
                           steps=steps, seed=cfg.seed + 1000 * fold)
    batches.epoch = int(state["epoch"])
    monitor = FoldMonitor(cfg, fold_dir, monitor_samples, state, history, write=chief,
                          type_probs=val_type_probs,
                          eval_model=local_copy(model, strategy),
                          allow_stop=not is_multiworker(strategy))
    t0 = time.time()
    if state["epoch"] < cfg.train.epochs:
        scope = work_around_multiworker_build(model, strategy, batches)
        with scope, stop_on_ctrl_c():
            model.fit(batches, epochs=cfg.train.epochs, initial_epoch=int(state["epoch"]),
                      callbacks=[monitor], verbose=verbose)
    if monitor.interrupted:
        raise KeyboardInterrupt  # train.py prints the --resume command
    train_s = time.time() - t0
    if not chief:
        return fold_dir
    finish_fold(cfg, fold_dir, val_samples, train_s)
    if replaced is not None and replaced.exists():
        shutil.rmtree(replaced)
    return fold_dir


def finish_fold(cfg: Config, fold_dir: Path, val_samples: list[Sample],
                train_s: float) -> dict[str, Any]:
    """Reload the best model, write OOF maps, per-image scores and ``result.json``."""
    best_path = fold_dir / BEST_MODEL
    if not best_path.is_file():
        raise TrainingError(f"{fold_dir}: no {BEST_MODEL}; training stopped before the first "
                            f"validation (raise train.epochs or train.time_budget_min)")
    # Re-saved without optimizer state: inference needs none, and the file shrinks to a fifth
    # (37.7 vs 186.4 MB for configs/default.yaml). Done here, not during training, because
    # building an uncompiled copy mid-run draws from Keras' random generators and so changes
    # the training run (last.keras keeps the optimizer for --resume).
    model = keras.saving.load_model(best_path, compile=False)
    with fileio.atomic_path(best_path, suffix=".tmp.keras") as tmp:
        model.save(tmp)
    classifier_path = fold_dir / CLASSIFIER_FILE
    type_probs = (classifier_probs(CellTypeClassifier.load(classifier_path), val_samples)
                  if classifier_path.is_file() else None)
    t0 = time.time()
    metrics, table, preds = validate_images(model, val_samples, cfg, heads=cfg.infer.heads,
                                            tta=cfg.infer.tta, type_probs=type_probs,
                                            errors=True)
    for s, (probs, ct) in zip(val_samples, preds):
        oof.save_oof(fold_dir, s.image_id, probs, ct)
    with fileio.atomic_path(fold_dir / OOF_SCORES_FILE) as tmp:
        table.to_csv(tmp, index=False)
    state = json.loads((fold_dir / STATE_FILE).read_text())
    result = {
        "fold": fold_of(fold_dir),
        "best_epoch": int(state["best_epoch"]) + 1,
        "epochs_run": int(state["epoch"]),
        "best_val_score_during_training": float(state["best_score"]),
        "oof_metrics": metrics,
        "oof_heads": cfg.infer.heads,
        "oof_tta": list(cfg.infer.tta),
        "train_seconds": round(train_s, 1),
        "oof_seconds": round(time.time() - t0, 1),
        "n_val_images": len(val_samples),
        "params": int(model.count_params()),
        "config": dataclasses.asdict(cfg),
    }
    fileio.write_text(fold_dir / RESULT_FILE, json.dumps(result, indent=2))
    per_type = table.groupby("cell_type")["score"].mean().round(4).to_dict()
    print(f"fold {result['fold']} done: OOF competition score {metrics['val_score']:.4f} "
          f"(per type {per_type}), best epoch {result['best_epoch']}, "
          f"{train_s / 60:.1f} min training", flush=True)
    return result


def train_cell_type_classifier(samples: list[Sample], seed: int = 0) -> CellTypeClassifier:
    """The whole-image cell-type classifier of a fold, from its training images and seeded,
    degraded copies of them (:meth:`CellTypeClassifier.fit_images`: blur, noise, uneven
    illumination must not change an image's type; bench/results/celltype_stress.md). It runs
    before the network trains, when every core is free, so its features use them all."""
    return CellTypeClassifier.fit_images([s.image for s in samples],
                                         [s.cell_type for s in samples], seed=seed,
                                         n_threads=min(os.cpu_count() or 1, 16))


def classifier_probs(classifier: CellTypeClassifier, samples: list[Sample]
                     ) -> dict[str, np.ndarray]:
    """Image id -> whole-image cell-type probabilities of ``samples``."""
    probs = classifier.predict_images([s.image for s in samples])
    return {s.image_id: p for s, p in zip(samples, probs)}


def require_data(cfg: Config) -> None:
    """Clear errors for a missing data root or folds file, saying which command makes them."""
    root = Path(cfg.data.root)
    if not (root / "train.csv").is_file():
        raise DataError(f"{root}/train.csv not found: put the competition data in {root} "
                        f"(see input/README.md) or make synthetic data with "
                        f"`python src/make_synthetic.py --out {root}`")
    if not (root / FOLDS_FILENAME).is_file():
        raise DataError(f"{root / FOLDS_FILENAME} not found: run "
                        f"`python src/make_folds.py --data-dir {root}` first")
