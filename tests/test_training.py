"""Fold training: smoke test, resume, reload, refusal to overwrite, distributed paths."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_data import make_tiny_root

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "src" / "train.py"

pytestmark = pytest.mark.slow


def tiny_config(tmp_path: Path, root: Path, **train) -> Path:
    cfg = {
        "name": "tiny", "output_dir": str(tmp_path / "out"),
        "data": {"root": str(root), "n_folds": 3},
        "model": {"widths": [4, 8, 16]},
        "augment": {"crop_size": 32},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "workers": 1,
                  "score_every": 1, **train},
        "infer": {"tta": ["identity", "hflip"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_train(*args: str, env: dict | None = None, timeout: int = 300
              ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run of fold 0, shared by the tests that only read its outputs."""
    tmp = tmp_path_factory.mktemp("train")
    root = make_tiny_root(tmp / "data")
    # max_val_images=1: per-epoch scoring on one image, while the OOF maps cover all of them.
    config = tiny_config(tmp, root, max_val_images=1)
    proc = run_train("--fold", "0", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, root, config, proc


def test_training_writes_every_output(trained):
    tmp, root, _, proc = trained
    fold_dir = tmp / "out" / "tiny" / "fold0"
    for name in ("best.keras", "last.keras", "config.yaml", "history.csv", "curves.png",
                 "state.json", "result.json", "oof_scores.csv"):
        assert (fold_dir / name).is_file(), name
    history = pd.read_csv(fold_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    for col in ("loss", "val_loss", "val_score", "val_body_iou", "val_cell_type_acc",
                "cell_type_acc", "lr"):
        assert col in history.columns, col
    assert history["loss"].notna().all()
    folds = pd.read_csv(root / "folds.csv", dtype={"id": str})
    val_ids = sorted(folds.loc[folds.fold == 0, "id"])
    oof_ids = sorted(p.stem for p in (fold_dir / "oof").glob("*.npz"))
    assert oof_ids == val_ids
    with np.load(fold_dir / "oof" / f"{val_ids[0]}.npz") as data:
        assert data["probs"].dtype == np.uint8 and data["probs"].shape == (64, 96, 2)
        assert data["cell_type_probs"].shape == (3,)
        assert abs(float(data["cell_type_probs"].sum()) - 1.0) < 1e-3
    assert len(val_ids) > 1  # more than max_val_images, and every one has OOF maps
    result = json.loads((fold_dir / "result.json").read_text())
    assert result["n_val_images"] == len(val_ids) and result["epochs_run"] == 2
    scores = pd.read_csv(fold_dir / "oof_scores.csv", dtype={"id": str})
    assert sorted(scores["id"]) == val_ids
    for col in ("tp", "fn", "fp", "merges", "splits", "mean_iou", "pred_cell_type"):
        assert col in scores.columns, col
    assert (scores["tp"] + scores["fn"] == scores["n_true"]).all()
    from cellseg.experiment import CLASSIFIER_FILE
    from cellseg.model.celltype import CellTypeClassifier

    clf = CellTypeClassifier.load(fold_dir / CLASSIFIER_FILE)
    assert sum(clf.n_train.values()) == 9 - len(val_ids)
    assert "[epoch 2/2]" in proc.stdout
    # best.keras (inference) is saved without optimizer state; last.keras (--resume) with it.
    assert "optimizer" not in saved_weight_groups(fold_dir / "best.keras")
    assert "optimizer" in saved_weight_groups(fold_dir / "last.keras")


def saved_weight_groups(path: Path) -> list[str]:
    """Top-level groups of a ``.keras`` file's weights (``layers``, ``optimizer``, ...)."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as weights:
        return list(weights.keys())


def test_warmup_cosine_values_and_older_checkpoints_reload(tmp_path):
    """The schedule's values (warm-up reaches the peak at step W - 1, one step before
    keras' CosineDecay would), and a checkpoint naming ``cellseg>WarmupCosine`` -- what
    every last.keras so far holds -- reloads with its schedule, as --resume needs."""
    import zipfile

    import keras

    from cellseg.model.schedules import WarmupCosine

    schedule = WarmupCosine(1e-3, warmup_steps=4, total_steps=14, floor=0.01)
    lr = [float(schedule(step)) for step in range(16)]
    np.testing.assert_allclose(lr[:4], [2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
    assert lr[4] == pytest.approx(1e-3) and lr[9] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr[14] == lr[15] == pytest.approx(1e-5)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule), loss="mse")
    model.train_on_batch(np.ones((2, 2), np.float32), np.ones((2, 1), np.float32))
    model.save(tmp_path / "last.keras")
    with zipfile.ZipFile(tmp_path / "last.keras") as archive:
        assert '"registered_name": "cellseg>WarmupCosine"' in archive.read("config.json").decode()
    loaded = keras.saving.load_model(tmp_path / "last.keras")
    assert loaded.optimizer.get_config()["learning_rate"]["config"] == schedule.get_config()
    assert int(loaded.optimizer.iterations) == 1
    assert float(loaded.optimizer.learning_rate) == pytest.approx(lr[1])


def test_saved_model_reloads_and_predicts_the_same(trained):
    """best.keras, reloaded, reproduces the OOF maps training wrote from its in-memory model
    (saving and loading lose nothing: weights, custom layers, heads)."""
    from cellseg.data.data_root import TrainData
    from cellseg.model.predict import load_models
    from cellseg.model.predict import normalize_image, predict_images
    from cellseg.train import oof

    tmp, root, _, _ = trained
    fold_dir = tmp / "out" / "tiny" / "fold0"
    saved = yaml.safe_load((fold_dir / "config.yaml").read_text())
    (model,) = load_models([fold_dir / "best.keras"])
    image_id = sorted(p.stem for p in (fold_dir / "oof").glob("*.npz"))[0]
    image = TrainData(root).load_image(image_id)
    probs, _ = predict_images(model, normalize_image(image)[None], heads=saved["infer"]["heads"],
                              tta=saved["infer"]["tta"])
    written, _ = oof.load_oof(fold_dir / "oof" / f"{image_id}.npz")
    # The OOF file stores probability * 255 as uint8: equal up to that rounding.
    np.testing.assert_allclose(probs[0], written, atol=1 / 255 + 1e-6)
    assert np.abs(probs[0] - written).mean() < 1 / 255


def test_refuses_to_overwrite_finished_run(trained):
    tmp, _, config, _ = trained
    proc = run_train("--fold", "0", "--config", str(config))
    assert proc.returncode == 2
    assert "refusing to overwrite" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_train("--fold", "0", "--config", str(config), "--resume")
    assert proc.returncode == 2 and "already finished" in proc.stderr


def test_missing_folds_file_is_a_clear_error(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    (root / "folds.csv").unlink()
    proc = run_train("--fold", "0", "--config", str(tiny_config(tmp_path, root)))
    assert proc.returncode == 2 and "make_folds.py" in proc.stderr


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    config = tiny_config(tmp_path, root, epochs=1, cpu_replicas=2)
    proc = run_train("--fold", "2", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(replicas: 2)" in proc.stdout
    assert (tmp_path / "out" / "tiny" / "fold2" / "best.keras").is_file()
    assert len(list((tmp_path / "out" / "tiny" / "fold2" / "oof").glob("*.npz"))) > 0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multiworker_strategy_two_local_processes(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    config = tiny_config(tmp_path, root, epochs=1)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, str(TRAIN), "--fold", "0", "--config",
                                       str(config)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "(replicas: 2)" in out and "[epoch 1/1]" in out
    fold_dir = tmp_path / "out" / "tiny" / "fold0"
    assert (fold_dir / "best.keras").is_file() and (fold_dir / "result.json").is_file()
    # Both workers took the same synchronous steps: identical training loss.
    losses = [float(out.split("[epoch 1/1] loss=")[1].split()[0]) for out, _ in outs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_curves_drawn_on_scored_epochs_and_at_the_end(tmp_path, monkeypatch):
    """history.csv / state.json / last.keras every epoch; the curves PNG (matplotlib, ~0.3 s)
    only when a validation score is added and on the last epoch."""
    import keras

    from cellseg.config import config_from_dict
    from cellseg.train import monitor as monitoring

    cfg = config_from_dict({"name": "t", "train": {"epochs": 5, "score_every": 2}})
    drawn: list[int] = []
    monkeypatch.setattr(monitoring, "plot_curves",
                        lambda history, path, title="": drawn.append(int(history["epoch"].max())))
    monkeypatch.setattr(monitoring, "validate_images",
                        lambda *a, **k: ({"val_score": 0.5, "val_loss": 1.0}, None, None))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "wait": 0}
    monitor = monitoring.FoldMonitor(cfg, tmp_path, [], state, [], write=True)
    monitor.set_model(model)
    for epoch in range(5):
        monitor.on_epoch_begin(epoch)
        monitor.on_epoch_end(epoch, {"loss": 1.0})
    assert drawn == [1, 3, 4]
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 5
    assert (tmp_path / "last.keras").is_file() and (tmp_path / "best.keras").is_file()
