"""Pseudo-labels: confident cells kept, uncertain images skipped, odd names, the CLI end to end
with a real (tiny, deterministic) fold ensemble."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from cellseg.config import PostprocessParams
from cellseg.constants import CELL_TYPES
from cellseg.data.data_root import TrainData, read_train_csv
from cellseg.infer import pseudo_labels
from cellseg.infer.ensemble import FoldEnsemble

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from cellseg.commands import pseudo_label

pytestmark = [pytest.mark.filterwarnings("ignore:.*postprocess.yaml not found:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*no tuned parameters for:UserWarning")]

# Disk intensities; the fake ensemble reads body probability = intensity / 255.
BRIGHT, GOOD, FAINT, UNSEEDED = 242, 230, 153, 102  # 0.95, 0.90, 0.60, 0.40
CENTRES = {BRIGHT: (15, 15), GOOD: (15, 50), FAINT: (45, 15), UNSEEDED: (45, 50)}


def disk_image(shape=(64, 80), values=(BRIGHT, GOOD, FAINT, UNSEEDED), radius=7) -> np.ndarray:
    img = np.zeros(shape, np.uint8)
    for v in values:
        cy, cx = CENTRES[v]
        cv2.circle(img, (cx, cy), radius, int(v), -1)
    return img


class FakeEnsemble:
    """FoldEnsemble's interface without TensorFlow: body = image / 255, no border; the cell
    type is cort unless pixel (0, 0) is 1 (then the type probabilities are uncertain)."""

    folds = (0, 1)
    heads = "mean"
    tta = ("identity", "hflip")
    cell_type_override = None
    cell_type_source = "fake"

    def __init__(self) -> None:
        self.params = {t: dataclasses.asdict(PostprocessParams()) for t in CELL_TYPES}
        self.calls: list[int] = []

    def predict(self, images):
        self.calls.append(len(images))
        assert len({im.shape for im in images}) == 1
        body = np.stack([im.astype(np.float32) / 255 for im in images])
        probs = np.stack([body, np.zeros_like(body)], axis=-1)
        types = np.array([[0.4, 0.3, 0.3] if im[0, 0] == 1 else [0.05, 0.05, 0.9]
                          for im in images], np.float32)
        return probs, types

    def cell_type(self, row):
        return CELL_TYPES[int(np.argmax(row))]

    confidence = None  # no per-cell confidence model: FoldEnsemble's own decode path
    cutoffs: dict = {}

    decode = FoldEnsemble.decode
    decode_scored = FoldEnsemble.decode_scored


def _cells_at(root: Path, image_id: str) -> set[int]:
    data = TrainData(root)
    inst = data.load_instances(image_id)
    found = set()
    for v, (cy, cx) in CENTRES.items():
        if cy < inst.shape[0] and cx < inst.shape[1] and inst.labels[cy, cx] > 0:
            found.add(v)
    return found


def test_cell_scores_and_selection():
    img = disk_image()
    ens = FakeEnsemble()
    probs, _ = ens.predict([img])
    labels = ens.decode(probs[0], "cort", img)
    scores = pseudo_labels.cell_scores(probs[0], labels)
    assert scores.confidence.size == 4
    assert np.allclose(sorted(scores.confidence), sorted(v / 255 for v in CENTRES), atol=1e-6)
    kept, conf, n = pseudo_labels.select_cells(probs[0], labels, seed_threshold=0.5, threshold=0.8)
    assert n == 4 and conf.size == 2 and (conf >= 0.8).all()
    assert set(np.unique(kept)) == {0, 1, 2}
    # Without a confidence floor the faint seeded disk stays; the unseeded one never does.
    kept, conf, _ = pseudo_labels.select_cells(probs[0], labels, seed_threshold=0.5, threshold=0.5)
    assert conf.size == 3 and kept[CENTRES[UNSEEDED]] == 0
    tuned = {"cort": {"seed_threshold": 0.6, "mask_threshold": 0.1}}
    assert pseudo_labels.type_thresholds(tuned, 0.5) == {"cort": 0.6}
    assert pseudo_labels.type_thresholds(tuned, 0.8) == {"cort": 0.8}
    # A mask threshold above the seed's: every cell's mean exceeds it, so the upper half counts.
    tuned = {"shsy5y": {"seed_threshold": 0.6, "mask_threshold": 0.7}}
    assert pseudo_labels.type_thresholds(tuned, 0.5) == {"shsy5y": pytest.approx(0.85)}


def test_pseudo_root_is_training_data(tmp_path):
    images = tmp_path / "unlabelled"
    images.mkdir()
    names = ["-rf x.png", "a b;rm.png", "a_b.png", "ünï çödé.png", "---.png", "small.png",
             "uncertain.png", "faint.png", ".hidden.png", "notes.txt"]
    for name in names:
        img = disk_image()
        if name == "small.png":
            img = disk_image((40, 70), (BRIGHT, GOOD))  # another shape: its own batch
        if name == "uncertain.png":
            img[0, 0] = 1
        if name == "faint.png":
            img = disk_image(values=(GOOD, FAINT, UNSEEDED))  # 1 of 3 kept: < 0.5
        (images / name).write_bytes(cv2.imencode(".png", img)[1].tobytes())
    ens = FakeEnsemble()
    out = tmp_path / "pseudo"
    summary = pseudo_labels.pseudo_label(ens, images, out, tmp_path / "exp", min_confidence=0.8)
    data = TrainData(out)
    data.check_images()
    table = read_train_csv(out / "train.csv")
    assert ((table["confidence"] >= 0.8) & (table["confidence"] <= 1.0)).all()
    assert set(table["cell_type"]) == {"cort"}
    ids = set(data.ids)
    assert ids == {"rf_x", "a_b_rm", "a_b", "_n____d_", "small"} | {i for i in ids
                                                                if i.startswith("img_")}
    assert len(ids) == 6  # "---.png" has nothing usable: a hash id
    assert all(p.name.endswith(".png") for p in (out / "train").iterdir())
    for image_id in ids:
        assert _cells_at(out, image_id) == {BRIGHT, GOOD}
    report = pd.read_csv(out / pseudo_labels.IMAGES_FILE, keep_default_na=False)
    assert len(report) == 8  # hidden file and notes.txt are not images
    status = dict(zip(report["file"], report["status"]))
    assert status["uncertain.png"].startswith("skipped: cell type uncertain")
    assert status["faint.png"].startswith("skipped: kept 1 of 3")
    assert summary.counts["images_written"] == 6
    assert summary.counts["skipped_type_uncertain"] == 1
    assert summary.counts["skipped_few_kept"] == 1
    assert "cell type uncertain: 1 images" in str(summary)
    source = json.loads((out / "source.json").read_text())
    assert source["folds"] == [0, 1] and source["tta"] == ["identity", "hflip"]
    assert source["thresholds"]["cort"] == 0.8 and source["min_type_prob"] == 0.6
    assert source["postprocess_params"]["cort"]["seed_threshold"] == 0.5
    assert sorted(ens.calls) == [1, 7]  # grouped by shape
    # A second run refuses to replace it; --overwrite replaces only the data root's files.
    with pytest.raises(ValueError, match="--overwrite"):
        pseudo_labels.pseudo_label(ens, images, out, tmp_path / "exp")
    (out / "keep.txt").write_text("mine")
    ens.params["cort"]["mask_threshold"] = 0.1  # threshold max(0.5, 0.55, 0) = 0.55
    pseudo_labels.pseudo_label(ens, images, out, tmp_path / "exp", min_confidence=0.0,
                        min_kept_fraction=0.0, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    table = read_train_csv(out / "train.csv")
    assert table["confidence"].min() == pytest.approx(FAINT / 255, abs=1e-4)


def test_cli_bad_input_exit_2(tmp_path, capsys):
    images = tmp_path / "unlabelled"
    images.mkdir()
    rc = pseudo_label.main(["--exp", "none", "--images", str(images), "--out",
                            str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and "no image" in err[0]
    cv2.imwrite(str(images / "a.png"), disk_image())
    rc = pseudo_label.main(["--exp", "none", "--images", str(images), "--out",
                            str(tmp_path / "o"), "--min-confidence", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--min-confidence" in err[0]
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "train.csv").write_text("x")
    rc = pseudo_label.main(["--exp", "none", "--images", str(images), "--out",
                            str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--overwrite" in err[0]
    rc = pseudo_label.main(["--exp", "none", "--images", str(images), "--out",
                            str(tmp_path / "o2"), "--config", str(tmp_path / "cfg.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:")


# --------------------------------------------------------------------------------------------
# End to end with a real FoldEnsemble (two folds of a fixed-weight Keras model)
# --------------------------------------------------------------------------------------------


def threshold_model(cell_type_index: int = 2):
    """Body = sigmoid(10 x - 5) of the normalised image, border ~ 0, a fixed cell type; stock
    Keras layers, so it saves and reloads in safe mode like a trained model."""
    import keras

    inp = keras.Input((None, None, 1), name="image")
    seg_layer = keras.layers.Conv2D(2, 1, activation="sigmoid", name="seg1")
    ct_layer = keras.layers.Dense(3, activation="softmax", name="cell_type")
    outputs = {"seg1": seg_layer(inp),
               "cell_type": ct_layer(keras.layers.GlobalAveragePooling2D()(inp))}
    model = keras.Model(inp, outputs, name="threshold")
    seg_layer.set_weights([np.array([[[[10.0, 0.0]]]], np.float32),
                           np.array([-5.0, -10.0], np.float32)])
    bias = np.zeros(3, np.float32)
    bias[cell_type_index] = 5.0
    ct_layer.set_weights([np.zeros((1, 3), np.float32), bias])
    return model


@pytest.mark.slow
def test_cli_end_to_end_with_fold_ensemble(tmp_path, capsys):
    from cellseg.config import load_config, save_config
    from cellseg.postprocess.tuned import TunedCellType, TunedPostprocess

    out_dir = tmp_path / "output"
    cfg_path = tmp_path / "thresh.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "thresh", "output_dir": str(out_dir), "data": {"root": str(tmp_path / "d")},
        "model": {"widths": [4, 8, 16]}, "augment": {"crop_size": 64},
        "infer": {"tta": ["identity", "hflip"], "batch_size": 2}}))
    cfg = load_config(cfg_path)
    for fold in (0, 1):
        fold_dir = out_dir / "thresh" / f"fold{fold}"
        fold_dir.mkdir(parents=True)
        threshold_model().save(fold_dir / "best.keras")
        save_config(cfg, fold_dir / "config.yaml")
        (fold_dir / "result.json").write_text("{}")
    TunedPostprocess(cell_types={"cort": TunedCellType(
        params={"seed_threshold": 0.6, "min_area": 12})}).write(
            out_dir / "thresh" / "postprocess.yaml")
    images = tmp_path / "unlabelled"
    images.mkdir()
    # Bright disks (kept) and one dim disk whose body probability stays below 0.9.
    for k in range(3):
        img = np.full((48, 64), 20, np.uint8)
        for j, (cy, cx) in enumerate(((12, 12), (12, 45), (35, 25))):
            cv2.circle(img, (cx + k, cy), 6, 255 if j < 2 else 70, -1)
        cv2.imwrite(str(images / f"semi {k}.png"), img)
    root = tmp_path / "pseudo"
    args = ["--exp", "thresh", "--config", str(cfg_path), "--images", str(images),
            "--out", str(root), "--folds", "0,1", "--min-confidence", "0.9",
            "--min-kept-fraction", "0.5", "--no-progress"]
    rc = pseudo_label.main(args)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "folds [0, 1]" in captured.out and "3 of 3 images" in captured.out
    data = TrainData(root)
    data.check_images()
    assert data.ids == ["semi_0", "semi_1", "semi_2"]
    table = read_train_csv(root / "train.csv")
    assert set(table["cell_type"]) == {"cort"}
    assert table["confidence"].between(0.9, 1.0).all()
    assert (table.groupby("id").size() == 2).all()  # the dim disk is dropped everywhere
    source = json.loads((root / "source.json").read_text())
    assert source["folds"] == [0, 1] and source["tta"] == ["identity", "hflip"]
    assert source["heads"] == "mean" and source["exp"] == "thresh"
    assert source["thresholds"]["cort"] == 0.9
    assert source["postprocess_params"]["cort"]["seed_threshold"] == 0.6
    assert source["postprocess_sha256"] and source["command"][0].endswith("pseudo_label.py")
    report = pd.read_csv(root / pseudo_labels.IMAGES_FILE)
    assert (report["cells_predicted"] == 3).all() and (report["cells_kept"] == 2).all()
    assert (report["prob_cort"] > 0.9).all()
    # Rerun without --overwrite refuses before loading any model.
    rc = pseudo_label.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--overwrite" in err[0]
