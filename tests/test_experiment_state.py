"""Experiment state that must not silently lie: resume, overwrite, Ctrl-C, init-from, extra data.

Each test reproduces a failure seen before the fix (issue 11 items 4, 7, 9; issue 12 item 2).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_data import make_tiny_root

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "src" / "train.py"

pytestmark = pytest.mark.slow


def tiny_cfg_dict(tmp_path: Path, root: Path, name: str = "tiny", **train) -> dict:
    return {
        "name": name, "output_dir": str(tmp_path / "out"),
        "data": {"root": str(root), "n_folds": 3},
        "model": {"widths": [4, 8, 16]},
        "augment": {"crop_size": 32},
        "train": {"epochs": 3, "steps_per_epoch": 2, "batch_size": 2, "workers": 1,
                  "score_every": 1, "warmup_epochs": 1, **train},
        "infer": {"tta": ["identity"]},
    }


def write_cfg(tmp_path: Path, d: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def run_train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _full_model(path: Path):
    """A checkpoint with its optimizer (compiled), as --resume loads it."""
    import keras

    from cellseg.model import losses, network  # noqa: F401  (custom objects)
    from cellseg.model import predict  # noqa: F401  (registers the custom Keras objects)

    return keras.saving.load_model(path)


# ------------------------------------------------------------------------------ resume
def test_resume_refuses_a_changed_config_and_names_the_keys(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    config = write_cfg(tmp_path, tiny_cfg_dict(tmp_path, root, epochs=1))
    assert run_train("--fold", "1", "--config", str(config)).returncode == 0
    fold_dir = tmp_path / "out" / "tiny" / "fold1"
    (fold_dir / "result.json").unlink()  # looks interrupted
    saved = (fold_dir / "config.yaml").read_text()
    proc = run_train("--fold", "1", "--config", str(config), "--resume",
                     "--set", "train.epochs=3", "--set", "train.learning_rate=0.5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.epochs: 1 -> 3" in proc.stderr and "train.learning_rate" in proc.stderr
    assert (fold_dir / "config.yaml").read_text() == saved  # not rewritten


def test_resume_after_interrupt_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Same weights and learning-rate schedule as a run that never stopped (not only the
    epoch counter): the optimizer state and the 3-epoch schedule come back with last.keras."""
    from cellseg.config import config_from_dict
    from cellseg.train import trainer

    root = make_tiny_root(tmp_path / "data")
    straight = config_from_dict(tiny_cfg_dict(tmp_path, root, name="straight"))
    trainer.train_fold(straight, 1, verbose=0)

    cfg = config_from_dict(tiny_cfg_dict(tmp_path, root, name="stopped"))
    original = trainer.FoldMonitor.on_epoch_end

    def interrupt_after_first(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.FoldMonitor, "on_epoch_end", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_fold(cfg, 1, verbose=0)
    monkeypatch.setattr(trainer.FoldMonitor, "on_epoch_end", original)
    stopped_dir = tmp_path / "out" / "stopped" / "fold1"
    assert json.loads((stopped_dir / "state.json").read_text())["epoch"] == 1
    assert not (stopped_dir / "result.json").exists()
    trainer.train_fold(cfg, 1, resume=True, verbose=0)

    straight_dir = tmp_path / "out" / "straight" / "fold1"
    h_straight = pd.read_csv(straight_dir / "history.csv")
    h_resumed = pd.read_csv(stopped_dir / "history.csv")
    assert h_resumed["epoch"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(h_resumed["lr"], h_straight["lr"], rtol=1e-6)
    resumed, uninterrupted = (_full_model(d / "last.keras") for d in (stopped_dir, straight_dir))
    # The optimizer came back with the weights: same step count, Adam moments close.
    assert int(resumed.optimizer.iterations) == int(uninterrupted.optimizer.iterations) == 6
    for a, b in zip(resumed.optimizer.variables, uninterrupted.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-3)
    # Weights agree to float round-off of multithreaded CPU kernels (~4e-4 seen).
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    # No early stopping: only the interrupt may end this run before its 200 epochs.
    config = write_cfg(tmp_path, tiny_cfg_dict(tmp_path, root, epochs=200,
                                               early_stopping_patience=1000))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--fold", "0", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    fold_dir = tmp_path / "out" / "tiny" / "fold0"
    deadline = time.time() + 240
    while not (fold_dir / "state.json").is_file() and time.time() < deadline:
        time.sleep(0.5)
    # One Ctrl-C: the current epoch finishes and is saved, then the run stops (a flag, not a
    # KeyboardInterrupt that a finaliser could swallow: once seen under load).
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("train.py did not stop after one Ctrl-C")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "--resume" in err and "last.keras" in err
    assert "stopping after this epoch" in out
    assert (fold_dir / "last.keras").is_file() and not (fold_dir / "result.json").exists()


# ------------------------------------------------------------------------------ overwrite
def test_overwrite_with_bad_data_keeps_the_finished_fold(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    config = write_cfg(tmp_path, tiny_cfg_dict(tmp_path, root, epochs=1))
    assert run_train("--fold", "0", "--config", str(config)).returncode == 0
    fold_dir = tmp_path / "out" / "tiny" / "fold0"
    before = {p.name: p.read_bytes() for p in fold_dir.iterdir() if p.is_file()}
    train_ids = pd.read_csv(root / "folds.csv", dtype={"id": str})["id"]
    (root / "train" / f"{train_ids.iloc[0]}.png").write_bytes(b"not a png")
    proc = run_train("--fold", "0", "--config", str(config), "--overwrite")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1 and train_ids.iloc[0] in proc.stderr
    after = {p.name: p.read_bytes() for p in fold_dir.iterdir() if p.is_file()}
    assert after == before


def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(tmp_path, monkeypatch):
    from cellseg.config import config_from_dict
    from cellseg.train import trainer

    root = make_tiny_root(tmp_path / "data")
    cfg = config_from_dict(tiny_cfg_dict(tmp_path, root, epochs=1))
    fold_dir = trainer.train_fold(cfg, 0, verbose=0)
    old_result = (fold_dir / "result.json").read_text()

    def crash(*a, **k):
        raise RuntimeError("simulated crash in the new run")

    monkeypatch.setattr(trainer, "finish_fold", crash)
    with pytest.raises(RuntimeError):
        trainer.train_fold(cfg, 0, overwrite=True, verbose=0)
    aside = fold_dir.with_name("fold0.replaced")
    assert (aside / "result.json").read_text() == old_result
    monkeypatch.undo()
    trainer.train_fold(cfg, 0, overwrite=True, verbose=0)
    assert not aside.exists() and (fold_dir / "result.json").is_file()


# ------------------------------------------------------------------------------ init-from
def _renamed_root(root: Path, prefix: str) -> Path:
    """Give a tiny root's images other ids (tiny roots all use the same ones)."""
    table = pd.read_csv(root / "train.csv", dtype={"id": str})
    for image_id in table["id"].unique():
        (root / "train" / f"{image_id}.png").rename(root / "train" / f"{prefix}{image_id}.png")
    table["id"] = prefix + table["id"]
    table.to_csv(root / "train.csv", index=False)
    return root


def test_init_from_loads_matching_layers_and_reinitialises_the_rest(tmp_path):
    import keras

    from cellseg.config import ModelConfig
    from cellseg.model.network import build_model
    from cellseg.train import trainer

    source = build_model(ModelConfig(widths=[4, 8, 16], n_targets=3), name="src")
    path = tmp_path / "src.keras"
    source.save(path)
    target = build_model(ModelConfig(widths=[4, 8, 16], n_targets=2), name="dst")
    before = {layer.name: layer.get_weights() for layer in target.layers}
    report = trainer.init_from_model(target, path)
    src_layers = {layer.name: layer for layer in source.layers}
    assert report["loaded"] and report["not_loaded"]
    for name in report["loaded"]:
        for a, b in zip(target.get_layer(name).get_weights(), src_layers[name].get_weights()):
            np.testing.assert_array_equal(a, b)
    # The heads have 3 channels in the source and 2 here: kept as initialised, and named.
    assert any(n.endswith("_logits") for n in report["not_loaded"])
    for name in report["not_loaded"]:
        for a, b in zip(target.get_layer(name).get_weights(), before[name]):
            np.testing.assert_array_equal(a, b)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="unrelated")])
    other.save(tmp_path / "other.keras")
    with pytest.raises(trainer.TrainingError, match="no layer matches"):
        trainer.init_from_model(build_model(ModelConfig(widths=[4, 8, 16])),
                                 tmp_path / "other.keras")


def test_train_cli_init_from_and_extra_data(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    extra = _renamed_root(make_tiny_root(tmp_path / "extra", seed=5), "x")
    config = write_cfg(tmp_path, tiny_cfg_dict(tmp_path, root, epochs=1))
    assert run_train("--fold", "0", "--config", str(config), "--exp", "pre").returncode == 0
    pre = tmp_path / "out" / "pre" / "fold0" / "best.keras"
    proc = run_train("--fold", "0", "--config", str(config), "--exp", "fine",
                     "--init-from", str(pre), "--extra-data", f"{extra}:2.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "extra data" in proc.stdout and "9 images, weight 2.5" in proc.stdout
    fold_dir = tmp_path / "out" / "fine" / "fold0"
    saved = yaml.safe_load((fold_dir / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(pre)
    assert saved["data"]["extra"] == [f"{extra}:2.5"]
    init = json.loads((fold_dir / "init_from.json").read_text())
    assert init["from"] == str(pre) and not init["not_loaded"]
    # The cell-type classifier learnt from the main root's training images only.
    from cellseg.experiment import CLASSIFIER_FILE
    from cellseg.model.celltype import CellTypeClassifier

    folds = pd.read_csv(root / "folds.csv")
    n_main_train = int((folds["fold"] != 0).sum())
    clf = CellTypeClassifier.load(fold_dir / CLASSIFIER_FILE)
    assert sum(clf.n_train.values()) == n_main_train
    bad = run_train("--fold", "0", "--config", str(config), "--exp", "bad",
                    "--init-from", str(tmp_path / "missing.keras"))
    assert bad.returncode == 2 and "missing.keras" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "out" / "bad").exists()


def test_extra_images_that_are_validation_images_are_left_out(tmp_path):
    from cellseg.config import config_from_dict
    from cellseg.train.trainer import load_extra_samples

    root = make_tiny_root(tmp_path / "data")
    d = tiny_cfg_dict(tmp_path, root)
    d["data"]["extra"] = [str(root)]  # the main root itself as "extra" data
    cfg = config_from_dict(d)
    folds = pd.read_csv(root / "folds.csv", dtype={"id": str})
    val = set(folds.loc[folds.fold == 0, "id"])
    with pytest.warns(UserWarning, match="validation images"):
        samples = load_extra_samples(cfg, val, 4)
    assert {s.image_id for s in samples} == set(folds["id"]) - val


def test_weighted_sampling_follows_the_weights():
    from cellseg.config import config_from_dict
    from cellseg.train.batches import Sample, TrainBatches

    cfg = config_from_dict({"augment": {"crop_size": 32}, "train": {"batch_size": 1}})
    img = np.zeros((32, 32), np.uint8)
    tgt = np.zeros((32, 32, 2), np.uint8)
    samples = [Sample("a", "cort", img, tgt, weight=1.0), Sample("b", "cort", img, tgt,
                                                                 weight=3.0)]
    batches = TrainBatches(samples, cfg, ["seg0"], workers=1)
    rng = np.random.default_rng(0)
    picks = [batches._pick(rng).image_id for _ in range(4000)]
    share_b = picks.count("b") / len(picks)
    assert 0.72 < share_b < 0.78  # 3 / (1 + 3)
