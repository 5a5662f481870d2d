"""Training one fold: Attention UNet++ on all folds but K, validated on fold K.

What a run leaves in ``output/<exp>/fold<K>/`` (every file written atomically):

- ``config.yaml``   resolved config, written before training starts
- ``best.keras``    model with the best validation competition score (inference uses it);
                    no optimizer state: 1/5 of the size (37.7 vs 186.4 MB for configs/default.yaml)
- ``last.keras`` + ``state.json``   last full checkpoint (weights + optimizer), for ``--resume``
- ``history.csv``, ``curves.png``   per-epoch metrics and their plot (paper's figure 10)
- ``oof/<id>.npz``  out-of-fold probability maps + cell-type probabilities (for tuning)
- ``oof_scores.csv``, ``result.json``   per-image validation scores and the run summary

Validation runs in a callback on full-resolution images, once per ``score_every`` epochs: one
forward pass per image gives the validation loss, pixel accuracy, body IoU, cell-type accuracy
and the competition score with default post-processing (the number users care about). Its
values enter Keras' logs as ``val_*`` so the progress bar, history and early stopping see them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from cellseg import experiment, fileio
from cellseg.config import Config, save_config
from cellseg.constants import CELL_TYPE_INDEX, CELL_TYPES
from cellseg.data.dataset import DataError, TrainData
from cellseg.data.folds import FOLDS_FILENAME, load_folds
from cellseg.evaluate.error_analysis import error_counts
from cellseg.evaluate.metric import match
from cellseg.evaluate.viz import plot_curves
from cellseg.exceptions import TrainingError
from cellseg.experiment import (
    BEST_MODEL,
    CLASSIFIER_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    INIT_FILE,
    LAST_MODEL,
    OOF_SCORES_FILE,
    REPLACED_SUFFIX,
    RESULT_FILE,
    SAVED_CONFIG,
    STATE_FILE,
    fold_of,
)
from cellseg.infer.maps import normalize_image, predict_images
from cellseg.model.celltype import CellTypeClassifier, image_features
from cellseg.model.losses import compile_kwargs
from cellseg.model.network import build_model, output_names
from cellseg.postprocess.decode import decode_with_params
from cellseg.train import oof
from cellseg.train.batches import Sample, TrainBatches, load_samples
from cellseg.train.schedules import WarmupCosine


# --------------------------------------------------------------------------- distribution
def make_strategy(cfg: Config):
    """``tf.distribute`` strategy from the config and the environment.

    ``train.distribute``: ``auto`` = MultiWorkerMirrored when ``TF_CONFIG`` is set, Mirrored on
    several GPUs, otherwise the default strategy; or force ``none``/``mirrored``/``multiworker``.
    ``train.cpu_replicas`` > 1 splits the CPU into that many logical devices and mirrors over
    them (how tests exercise the multi-device path without a GPU).
    """
    import tensorflow as tf

    mode = cfg.train.distribute
    if cfg.train.cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * cfg.train.cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if mode in ("auto", "mirrored"):
            return tf.distribute.MirroredStrategy(devices)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    if mode == "multiworker" or (mode == "auto" and os.environ.get("TF_CONFIG")):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if mode == "mirrored" or (mode == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True unless ``TF_CONFIG`` names this process a non-chief worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    cluster = json.loads(raw).get("cluster", {})
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


# --------------------------------------------------------------------------- validation
def _bce(p: np.ndarray, t: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean())


def _dice_loss(p: np.ndarray, t: np.ndarray) -> float:
    return float(1.0 - (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0))


def validate_images(models, samples: list[Sample], cfg: Config, heads: str = "mean",
                    tta: list[str] | None = None,
                    type_probs: dict[str, np.ndarray] | None = None,
                    errors: bool = False) -> tuple[dict[str, float], pd.DataFrame,
                                                   list[tuple[np.ndarray, np.ndarray]]]:
    """Predict every validation image and measure it.

    ``type_probs``: image id -> the fold's whole-image classifier probabilities (computed once
    per fold: the images do not change between epochs); when given they replace the network
    head's (they are what inference uses). ``errors``: add the error
    analysis columns (tp, fn, fp, merges, splits, mean_iou at IoU 0.5) to each row.

    Returns:
        (metrics dict with val_* keys, per-image table, list of (probs, cell-type probs)).
    """
    rows, preds = [], []
    tw = cfg.train
    for s in samples:
        x = normalize_image(s.image)[None]
        probs, ct = predict_images(models, x, heads=heads, tta=tta or ["identity"], batch_size=1)
        probs, ct = probs[0], ct[0]
        if type_probs is not None:
            ct = type_probs[s.image_id]
        preds.append((probs, ct))
        t = s.targets.astype(np.float32)
        loss = 0.0
        for c, w in enumerate((tw.body_weight, tw.border_weight)[: t.shape[-1]]):
            loss += w * (tw.bce_weight * _bce(probs[..., c], t[..., c])
                         + tw.dice_weight * _dice_loss(probs[..., c], t[..., c]))
        body_p, body_t = probs[..., 0] > 0.5, t[..., 0] > 0.5
        inter, union = (body_p & body_t).sum(), (body_p | body_t).sum()
        labels = decode_with_params(probs, cfg.postprocess)
        res = match(s.instances.pixels, labels)
        true_type = CELL_TYPE_INDEX[s.cell_type]
        row = {
            "id": s.image_id, "cell_type": s.cell_type, "score": res.score,
            "n_true": res.n_true, "n_pred": res.n_pred, "loss": loss,
            "body_accuracy": float((body_p == body_t).mean()),
            "body_iou": float(inter / union) if union else 1.0,
            "cell_type_acc": float(int(np.argmax(ct)) == true_type) if ct.size else np.nan,
            "pred_cell_type": CELL_TYPES[int(np.argmax(ct))] if ct.size else "",
        }
        if errors:
            row.update(error_counts(s.instances.pixels, labels))
        rows.append(row)
    table = pd.DataFrame(rows)
    metrics = {f"val_{k}": float(table[k].mean())
               for k in ("loss", "score", "body_accuracy", "body_iou", "cell_type_acc")}
    for cell_type, group in table.groupby("cell_type"):
        metrics[f"val_score_{cell_type}"] = float(group["score"].mean())
    return metrics, table, preds


class FoldMonitor(keras.callbacks.Callback):
    """Validation, best/last checkpoints, history, curves, early stopping and time budget.

    One callback, not Keras' own, because these share the validation score computed here and
    the run's ``state.json``, and must survive ``--resume`` (checked against keras 3.15):

    - not ``CSVLogger``: it fixes its columns at the first epoch (an unscored epoch 0 would drop
      every ``val_*`` column), has no ``lr``/``epoch_s``, writes in place (not atomically) and,
      on resume, either truncates the file or appends after rows the checkpoint lacks;
    - not ``ModelCheckpoint``: its best score restarts at -inf on each ``fit`` (a resumed run
      would overwrite ``best.keras`` with a worse model), it writes in place (an interrupted
      save leaves a corrupt file) and it cannot drop the optimizer from ``best.keras`` only;
    - not ``EarlyStopping``: it counts epochs, not validation checks, and its wait counter
      restarts on resume (ours is in ``state.json``);
    - not ``BackupAndRestore``: it resumes on its own files (no ``--resume``, no config check),
      deletes them when training ends (we keep ``last.keras``) and restores neither
      ``state.json`` nor the history; Keras has no time-budget callback.
    """

    def __init__(self, cfg: Config, fold_dir: Path, val_samples: list[Sample],
                 state: dict[str, Any], history: list[dict[str, Any]], write: bool,
                 eval_model: keras.Model | None = None, allow_stop: bool = True,
                 type_probs: dict[str, np.ndarray] | None = None,
                 best_model: keras.Model | None = None) -> None:
        """``best_model``: an uncompiled copy (:func:`uncompiled_copy`) that receives the
        weights before ``best.keras`` is saved from it; made at the first save if omitted
        (pass it under a multi-worker strategy, where creating variables is collective)."""
        super().__init__()
        self.best_model = best_model
        self.type_probs = type_probs
        self.eval_model = eval_model
        # Multi-worker: each worker validates with its own (unsynced) batch-norm statistics,
        # so their early-stopping/time decisions could differ and leave one worker waiting on
        # a collective forever; there the run lasts exactly train.epochs.
        self.allow_stop = allow_stop
        self.cfg = cfg
        self.fold_dir = fold_dir
        self.val_samples = val_samples
        self.state = state
        self.history = history
        self.write = write  # False on non-chief workers: they save to a scratch dir
        self.t0 = time.time() - float(state.get("elapsed_s", 0.0))
        self.epoch_t0 = time.time()
        self.interrupted = False  # stopped by Ctrl-C (see stop_on_ctrl_c)

    def _out(self, name: str) -> Path:
        if self.write:
            return self.fold_dir / name
        scratch = Path(tempfile.gettempdir()) / f"cellseg_worker_{os.getpid()}"
        return scratch / name

    def _over_budget(self) -> bool:
        budget = self.cfg.train.time_budget_min
        return self.allow_stop and budget > 0 and time.time() - self.t0 > 60.0 * budget

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch_t0 = time.time()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self._over_budget():
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs if logs is not None else {}
        tcfg = self.cfg.train
        scored = (epoch + 1) % max(tcfg.score_every, 1) == 0 or epoch + 1 == tcfg.epochs \
            or self._over_budget()
        if scored:
            eval_model = self.eval_model or self.model
            if eval_model is not self.model:
                eval_model.set_weights(self.model.get_weights())
            metrics, _, _ = validate_images(eval_model, self.val_samples, self.cfg, heads="mean",
                                         type_probs=self.type_probs)
            logs.update(metrics)
            score = metrics["val_score"]
            if score > self.state.get("best_score", -1.0):
                self.state.update(best_score=score, best_epoch=epoch, wait=0)
                self._save(self._out(BEST_MODEL), optimizer=False)
            else:
                self.state["wait"] = self.state.get("wait", 0) + 1
            if self.allow_stop and self.state["wait"] >= max(tcfg.early_stopping_patience, 1):
                print(f"early stopping: no better val_score for {self.state['wait']} checks")
                self.model.stop_training = True
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch, "lr": float(keras.ops.convert_to_numpy(lr)),
               "epoch_s": round(time.time() - self.epoch_t0, 2)}
        row.update({k: float(v) for k, v in logs.items()})
        self.history.append(row)
        self.state.update(epoch=epoch + 1, elapsed_s=time.time() - self.t0)
        self._save(self._out(LAST_MODEL))
        history = pd.DataFrame(self.history)
        with fileio.atomic_path(self._out(HISTORY_FILE)) as tmp:
            history.to_csv(tmp, index=False)
        fileio.write_text(self._out(STATE_FILE), json.dumps(self.state, indent=2))
        budget_stop = self._over_budget() and not self.model.stop_training
        if scored or budget_stop or self.model.stop_training:
            # The PNG costs ~0.3 s of matplotlib (1-2 % of a CPU epoch; bench/bench_epoch.py)
            # and between scores it only gains training points: draw it when a validation
            # score is added and when training ends (history.csv has every epoch).
            plot_curves(history, self._out(CURVES_FILE), title=f"{self.cfg.name} fold")
        summary = " ".join(f"{k}={row[k]:.4f}" for k in
                           ("loss", "val_loss", "val_body_iou", "val_cell_type_acc",
                            "val_score") if k in row)
        print(f"\n[epoch {epoch + 1}/{tcfg.epochs}] {summary} "
              f"best_score={self.state.get('best_score', float('nan')):.4f} "
              f"({row['epoch_s']:.0f}s)", flush=True)
        if budget_stop:
            print(f"time budget of {tcfg.time_budget_min} min reached; stopping")
            self.model.stop_training = True
        if STOP_REQUEST.is_set():  # Ctrl-C: this epoch's checkpoint is saved above
            self.interrupted = True
            self.model.stop_training = True

    def _save(self, path: Path, optimizer: bool = True) -> None:
        """Save atomically; ``optimizer=False`` saves the weights into the uncompiled copy
        and that (inference needs no optimizer; ``last.keras`` keeps it for ``--resume``)."""
        model = self.model
        if not optimizer:
            if self.best_model is None:
                self.best_model = uncompiled_copy(self.model)
            self.best_model.set_weights(self.model.get_weights())
            model = self.best_model
        with fileio.atomic_path(path, suffix=".tmp.keras") as tmp:
            model.save(tmp)


def uncompiled_copy(model: keras.Model) -> keras.Model:
    """A new, uncompiled model of ``model``'s architecture (same config and names).

    Saving it writes no optimizer state. Keras 3 ``.keras`` files have no
    ``include_optimizer`` (``save`` ignores it except for legacy ``.h5``), and
    ``keras.models.clone_model`` compiles its clone, so the optimizer would come along.
    """
    return type(model).from_config(model.get_config())


# --------------------------------------------------------------------------- Ctrl-C
STOP_REQUEST = threading.Event()


@contextlib.contextmanager
def stop_on_ctrl_c():
    """First Ctrl-C: finish the current epoch, save its checkpoint, then stop (FoldMonitor
    checks :data:`STOP_REQUEST`); a second one stops at once.

    Why not rely on KeyboardInterrupt: under load it was seen to be swallowed (raised inside
    a finaliser during Keras' saving, where Python ignores exceptions) and training went on.
    A flag cannot be lost. Only in the main thread (signals go there); restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP_REQUEST.clear()
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ANN001
        if STOP_REQUEST.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        STOP_REQUEST.set()
        print("\nCtrl-C: stopping after this epoch (its checkpoint is kept); press Ctrl-C "
              "again to stop at once", flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        STOP_REQUEST.clear()


# --------------------------------------------------------------------------- the run
def _work_around_multiworker_build(model: keras.Model, strategy, batches: TrainBatches):
    """Two Keras 3 bugs under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    tensorflow/tensorflow#72388, both open):

    - ``fit`` first reduces a distributed data batch to build its metrics, which fails
      ("Attempt to convert a value (PerReplica...)"): build model state from one local batch
      ourselves, then let ``fit`` take the strategy from the enclosing ``strategy.scope()``;
    - the "mean" reduction of the step's scalar logs across workers uses ``axis=0`` and fails
      ("Invalid reduction dimension 0"): the train step returns each log as a length-1
      vector, so the cross-worker mean is taken over that axis and yields the scalar again.
    """
    if not _is_multiworker(strategy):
        return contextlib.nullcontext()
    with strategy.scope():
        model._symbolic_build(data_batch=batches[0])
    model._distribute_strategy = None
    step = model.train_step

    def train_step(data):
        return {k: keras.ops.reshape(v, (1,)) for k, v in step(data).items()}

    model.train_step = train_step
    return strategy.scope()


def _is_multiworker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def local_copy(model: keras.Model, strategy) -> keras.Model:
    """The model itself, or under a multi-replica strategy a plain copy for validation.

    ``predict`` under a strategy splits or (multi-worker) gathers batches across replicas;
    validation wants one local forward pass per image, so it runs on a copy outside the
    strategy that receives the trained weights before each validation.
    """
    if strategy.num_replicas_in_sync == 1:
        return model
    return keras.models.clone_model(model)


def fold_dir_for(cfg: Config, fold: int) -> Path:
    """``<output_dir>/<name>/fold<K>``."""
    return experiment.fold_dir(cfg.experiment_dir(), fold)


def _check_fold_dir(fold_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber or resume the wrong thing; deletes nothing (see _set_aside)."""
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


def _set_aside(fold_dir: Path) -> Path | None:
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


def _check_resume_config(fold_dir: Path, cfg: Config) -> None:
    path = fold_dir / SAVED_CONFIG
    if not path.is_file():
        return
    import yaml

    saved = yaml.safe_load(path.read_text()) or {}
    changed = config_changes(saved, cfg)
    if changed:
        raise TrainingError(
            f"{fold_dir}: --resume with a config that differs from the run's {path.name} in "
            f"{len(changed)} key(s): {'; '.join(changed)}. Resume with the same config and "
            f"options (the schedule and model depend on them), or start again with --overwrite"
        )


def init_from_model(model: keras.Model, path: str | os.PathLike) -> dict[str, Any]:
    """Copy the weights of every layer of ``path``'s model with the same name and weight
    shapes into ``model`` (pre-training -> fine-tuning); the rest keep their initialisation.

    Returns ``{"from", "loaded": [names], "not_loaded": {name: reason}}``.

    Raises:
        TrainingError: the file is missing or not a loadable model, or no layer matches.
    """
    from cellseg.exceptions import InferenceError
    from cellseg.infer.ensemble import load_models

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
                             max_radius=max_radius)
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
        _check_fold_dir(fold_dir, resume, overwrite)
        if resume:
            _check_resume_config(fold_dir, cfg)
    keras.utils.set_random_seed(cfg.seed + fold)
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(cfg)

    # Everything that can fail on bad data happens before the fold folder is touched.
    data = TrainData(cfg.data.root)
    train_ids, val_ids = split_ids(cfg, data, fold)
    if not val_ids or not train_ids:
        raise TrainingError(f"fold {fold}: {len(train_ids)} training and {len(val_ids)} "
                            f"validation images; both must be non-empty")
    # train.max_val_images caps per-epoch scoring only; the OOF maps cover every image.
    monitor_ids = val_ids
    if cfg.train.max_val_images and len(val_ids) > cfg.train.max_val_images:
        rng = np.random.default_rng(cfg.seed)
        monitor_ids = sorted(rng.choice(val_ids, cfg.train.max_val_images,
                                        replace=False).tolist())
    cache_dir = cfg.data.cache_dir or str(Path(cfg.data.root) / ".cache")
    print(f"fold {fold}: {len(train_ids)} training / {len(val_ids)} validation images "
          f"-> {fold_dir} (replicas: {strategy.num_replicas_in_sync})", flush=True)
    radius = cfg.train.border_radius_max
    train_samples = load_samples(data, train_ids, cache_dir, desc="train images",
                                 max_radius=radius)
    train_samples += load_extra_samples(cfg, set(val_ids), radius)
    val_samples = load_samples(data, val_ids, cache_dir, keep_instances=True, max_radius=radius,
                               desc="val images")
    if cfg.train.init_from and not resume and not Path(cfg.train.init_from).is_file():
        raise TrainingError(f"train.init_from: {cfg.train.init_from} not found (expected a "
                            f".keras model, e.g. output/<exp>/fold0/best.keras; configs/"
                            f"real_cpu.yaml's comes from `make pretrain-synthetic`; "
                            f"--set 'train.init_from=\"\"' starts from random weights)")

    replaced = _set_aside(fold_dir) if chief and overwrite else None
    main_ids = set(train_ids)
    classifier = train_cell_type_classifier([s for s in train_samples
                                             if s.image_id in main_ids], cfg.seed)
    if chief:
        classifier.save(fold_dir / CLASSIFIER_FILE)
    monitor_set = set(monitor_ids)
    monitor_samples = [s for s in val_samples if s.image_id in monitor_set]
    val_type_probs = classifier_probs(classifier, val_samples)

    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "wait": 0}
    history: list[dict[str, Any]] = []
    if chief and not resume:
        save_config(cfg, fold_dir / SAVED_CONFIG)
    steps = cfg.train.steps_per_epoch
    init_report: dict[str, Any] | None = None
    with strategy.scope():
        if resume:
            state.update(json.loads((fold_dir / STATE_FILE).read_text()))
            model = keras.saving.load_model(fold_dir / LAST_MODEL)
            if (fold_dir / HISTORY_FILE).is_file():
                old = pd.read_csv(fold_dir / HISTORY_FILE)
                history = old[old["epoch"] < state["epoch"]].to_dict("records")
            print(f"resuming at epoch {state['epoch'] + 1} "
                  f"(best val_score {state['best_score']:.4f})", flush=True)
        else:
            model = build_model(cfg.model, name=f"{cfg.name}_fold{fold}")
            if cfg.train.init_from:
                init_report = init_from_model(model, cfg.train.init_from)
                if chief:
                    fileio.write_text(fold_dir / INIT_FILE, json.dumps(init_report, indent=2))
            schedule = WarmupCosine(cfg.train.learning_rate, cfg.train.warmup_epochs * steps,
                                    cfg.train.epochs * steps)
            optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                               weight_decay=cfg.train.weight_decay)
            model.compile(optimizer=optimizer, jit_compile=cfg.train.xla,
                          **compile_kwargs(model, cfg.train))
    global_batch = cfg.train.batch_size
    batches = TrainBatches(train_samples, cfg, output_names(model), batch_size=global_batch,
                           steps=steps, seed=cfg.seed + 1000 * fold)
    batches.epoch = int(state["epoch"])
    monitor = FoldMonitor(cfg, fold_dir, monitor_samples, state, history, write=chief,
                          type_probs=val_type_probs,
                          eval_model=local_copy(model, strategy),
                          allow_stop=not _is_multiworker(strategy),
                          best_model=uncompiled_copy(model))
    t0 = time.time()
    if state["epoch"] < cfg.train.epochs:
        scope = _work_around_multiworker_build(model, strategy, batches)
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
    model = keras.saving.load_model(best_path)
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
    """The whole-image cell-type classifier of a fold, from its training images."""
    feats = np.stack([image_features(s.image) for s in samples])
    return CellTypeClassifier.fit(feats, [s.cell_type for s in samples], seed=seed)


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
