"""Watching a fold train: validation on whole images, checkpoints, early stopping, the time
budget and Ctrl-C, in one Keras callback (:class:`FoldMonitor`).

Validation runs once per ``score_every`` epochs: one forward pass per full-resolution image
gives the validation loss, pixel accuracy, body IoU, cell-type accuracy and the competition
score with default post-processing (the number users care about). Its values enter Keras'
logs as ``val_*`` so the progress bar, history and early stopping see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.config import Config
from cellseg.constants import CELL_TYPE_INDEX, CELL_TYPES
from cellseg.metrics.error_analysis import error_counts
from cellseg.metrics.score import match
from cellseg.viz import plot_curves
from cellseg.experiment import BEST_MODEL, CURVES_FILE, HISTORY_FILE, LAST_MODEL, STATE_FILE
from cellseg.model.predict import normalize_image, predict_images
from cellseg.model.targets import targets_as_float
from cellseg.postprocess.decode import decode_with_params
from cellseg.train.batches import Sample


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
        t = targets_as_float(s.targets)
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
                 type_probs: dict[str, np.ndarray] | None = None) -> None:
        super().__init__()
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
                self._save(self._out(BEST_MODEL))
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

    def _save(self, path: Path) -> None:
        """Save atomically (with the optimizer state; ``finish_fold`` re-saves ``best.keras``
        without it once the run is over)."""
        with fileio.atomic_path(path, suffix=".tmp.keras") as tmp:
            self.model.save(tmp)


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
