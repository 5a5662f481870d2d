"""Test-set inference: fold ensemble x TTA through run_inference, the infer.py CLI end to end,
and clean failures (no partial submission.csv) on missing or corrupt test images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_evaluate import make_disk_dataset

from cellseg.config import Config, ModelConfig, load_config, save_config
from cellseg.constants import CELL_TYPES
from cellseg.data.data_root import DataError
from cellseg.exceptions import InferenceError
from cellseg.experiment import find_fold_models, resolve_config
from cellseg.infer.submission import validate_submission
from cellseg.infer.inference import run_inference
from cellseg.fileio import write_yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*postprocess.yaml not found:UserWarning")
TINY = ModelConfig(widths=[4, 8, 16])


def save_model(model, fold_dir: Path, cfg: Config, finished: bool = True) -> None:
    fold_dir.mkdir(parents=True, exist_ok=True)
    model.save(fold_dir / "best.keras")
    save_config(cfg, fold_dir / "config.yaml")
    if finished:
        (fold_dir / "result.json").write_text("{}")


def threshold_model(cell_type_index: int = 2):
    """A stand-in for a trained network on bright disks: body = sigmoid(10 x - 5) of the
    normalised image (disks are ~+3 sigma), border = 0, and a fixed cell-type answer. It is
    made of stock Keras layers, so it saves and reloads in safe mode like a real model."""
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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """Data root with 3 test images + truth, and experiments:
    ``rand`` (two tiny Attention UNet++ folds with fixed random weights), ``nohead`` (no
    cell-type head) and ``thresh`` (two folds of :func:`threshold_model`)."""
    import keras

    from cellseg.model.network import build_model

    root = tmp_path_factory.mktemp("infer")
    data = root / "data"
    make_disk_dataset(data, n_images=3)
    out = root / "output"
    base = {"output_dir": str(out), "data": {"root": str(data)},
            "model": {"widths": [4, 8, 16]}, "augment": {"crop_size": 64},
            "infer": {"tta": ["identity", "hflip"], "batch_size": 2}}
    for name in ("rand", "nohead", "thresh"):
        cfg_path = root / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump({**base, "name": name}))
    for fold in (0, 1):
        keras.utils.set_random_seed(10 + fold)
        cfg = load_config(root / "rand.yaml")
        save_model(build_model(TINY, name=f"rand_fold{fold}"), out / "rand" / f"fold{fold}", cfg)
        save_model(threshold_model(), out / "thresh" / f"fold{fold}",
                   load_config(root / "thresh.yaml"))
    # Tuned parameters for thresh (only cort, so the others fall back to defaults).
    write_yaml(out / "thresh" / "postprocess.yaml", {"method": "deep", "cell_types": {
        "cort": {"params": {"seed_threshold": 0.6, "min_area": 12}}}})
    keras.utils.set_random_seed(3)
    no_head = ModelConfig(widths=[4, 8, 16], cell_type_head=False)
    save_model(build_model(no_head), out / "nohead" / "fold0", load_config(root / "nohead.yaml"))
    return {"root": root, "data": data, "out": out}


def test_find_fold_models_errors_name_the_training_command(tmp_path):
    with pytest.raises(InferenceError, match=r"no trained model.*python src/train.py --fold K"):
        find_fold_models(tmp_path / "exp")
    (tmp_path / "exp" / "fold0").mkdir(parents=True)
    (tmp_path / "exp" / "fold0" / "best.keras").write_bytes(b"x")
    (tmp_path / "exp" / "fold0" / "result.json").write_text("{}")
    assert find_fold_models(tmp_path / "exp") == [(0, tmp_path / "exp" / "fold0" / "best.keras")]
    with pytest.raises(InferenceError, match=r"fold3/best.keras not found.*--fold 3 --exp exp"):
        find_fold_models(tmp_path / "exp", [0, 3])


@pytest.mark.slow
def test_tta_ensemble_gives_a_valid_submission(workspace, tmp_path):
    cfg, exp_dir, saved = resolve_config(workspace["root"] / "rand.yaml")
    assert saved == exp_dir / "fold0" / "config.yaml" and cfg.model.widths == [4, 8, 16]
    out = tmp_path / "submission.csv"
    with pytest.warns(UserWarning, match="postprocess.yaml not found"):
        summary = run_inference(
            cfg, exp_dir, workspace["data"], out, tta=["identity", "hflip", "vflip", "hvflip"],
            save_probs_dir=tmp_path / "probs", save_overlays_dir=tmp_path / "overlays",
            progress=False)
    test_dir = workspace["data"] / "test"
    assert validate_submission(out, test_dir).n_images == 3
    assert summary["folds"] == [0, 1] and summary["n_images"] == 3
    assert set(summary["image_cell_types"]) == {"img00", "img01", "img02"}
    assert {"read", "model", "postprocess", "encode", "write"} <= set(summary["timing_s"])
    assert summary["seconds_per_image"]["model"] > 0
    with np.load(tmp_path / "probs" / "img01.npz", allow_pickle=False) as maps:
        assert maps["probs"].dtype == np.uint8 and maps["probs"].shape == (64, 96, 2)
        assert maps["cell_type_probs"].shape == (3,)
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
    types = pd.read_csv(tmp_path / "submission_cell_types.csv")
    assert list(types.columns) == ["id", "cell_type", *(f"prob_{t}" for t in CELL_TYPES)]
    assert sorted(types["id"]) == ["img00", "img01", "img02"]
    assert summary["cell_type_source"] == "network head"
    assert dict(zip(types["id"], types["cell_type"])) == summary["image_cell_types"]
    # Other head modes and one fold; a forced cell type.
    for heads in ("last", "prune=1"):
        s = run_inference(cfg, exp_dir, workspace["data"], out, folds=[1], heads=heads,
                          tta=["identity"], cell_type="astro", progress=False, verbose=False)
        assert s["folds"] == [1] and s["cell_type_counts"] == {"astro": 3}
        validate_submission(out, test_dir)


@pytest.mark.slow
def test_models_without_cell_type_head_need_an_override(workspace, tmp_path):
    cfg, exp_dir, _ = resolve_config(workspace["root"] / "nohead.yaml")
    out = tmp_path / "submission.csv"
    with pytest.raises(InferenceError, match="no cell-type head.*--cell-type"):
        run_inference(cfg, exp_dir, workspace["data"], out, progress=False)
    assert not out.exists()
    summary = run_inference(cfg, exp_dir, workspace["data"], out, cell_type="shsy5y",
                            progress=False, verbose=False)
    assert summary["cell_type_counts"] == {"shsy5y": 3}
    validate_submission(out, workspace["data"] / "test")


@pytest.mark.slow
def test_corrupt_image_mid_run_leaves_the_old_submission(workspace, tmp_path):
    """The PNG header is fine (so the early check passes) but the pixel data is cut off:
    the error comes while rows are streaming; the old submission.csv stays byte-identical."""
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    for src in sorted((workspace["data"] / "test").glob("*.png")):
        (data / "test" / src.name).write_bytes(src.read_bytes())
    broken = data / "test" / "img02.png"
    broken.write_bytes(broken.read_bytes()[:60])
    out = tmp_path / "submission.csv"
    out.write_text("id,predicted\nold,1 2\n")
    before = out.read_bytes()
    cfg, exp_dir, _ = resolve_config(workspace["root"] / "thresh.yaml")
    with pytest.warns(UserWarning, match=r"no tuned parameters for \['shsy5y', 'astro'\]"), \
            pytest.raises(DataError, match=r"img02\.png: not a readable image"):
        run_inference(cfg, exp_dir, data, out, progress=False, verbose=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "submission.csv"]


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "src" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_cli_end_to_end_infer_then_evaluate(workspace, tmp_path):
    """infer.py writes a valid submission; evaluate.py scores it (the stand-in model finds
    the disks, so the score is high: this also pins the row-major RLE orientation)."""
    out = tmp_path / "submission.csv"
    proc = run_script("infer.py", "--config", workspace["root"] / "thresh.yaml",
                      "--out", out, "--tta", "identity,hflip", "--no-progress",
                      "--save-overlays", tmp_path / "ov", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model ensemble + TTA" in proc.stdout and "cell types {'cort': 3}" in proc.stdout
    validate_submission(out, workspace["data"] / "test")
    proc = run_script("evaluate.py", "--submission", out, "--truth",
                      workspace["data"] / "truth.csv", "--out", tmp_path / "eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\|\s*overall\s*\|\s*3\s*\|", proc.stdout)
    score = float(proc.stdout.split("\nscore ")[1].split()[0])
    assert score > 0.8
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 3


@pytest.mark.slow
def test_cli_bad_test_images_fail_cleanly(workspace, tmp_path):
    """Garbage bytes in a test PNG and a missing test folder: exit code 2, an error naming the
    file, no traceback, and the existing submission.csv untouched."""
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    (data / "test" / "good.png").write_bytes((workspace["data"] / "test" / "img00.png")
                                            .read_bytes())
    (data / "test" / "bad.png").write_bytes(b"\x00garbage" * 50)
    out = tmp_path / "submission.csv"
    out.write_text("id,predicted\nold,1 2\n")
    before = out.read_bytes()
    proc = run_script("infer.py", "--config", workspace["root"] / "thresh.yaml", "--data-dir",
                      data, "--out", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.png: not a readable image" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes() == before
    proc = run_script("infer.py", "--config", workspace["root"] / "thresh.yaml", "--data-dir",
                      tmp_path / "nowhere", "--out", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "nowhere/test: test image folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "submission.csv"]


def test_resolve_config_prefers_the_saved_model_settings(tmp_path):
    saved = Config(name="exp", output_dir=str(tmp_path / "out"))
    saved.model.widths = [4, 8, 16]
    saved.augment.crop_size = 64
    saved.infer.batch_size = 2
    save_config(saved, tmp_path / "out" / "exp" / "fold0" / "config.yaml")
    cli = tmp_path / "cli.yaml"
    cli.write_text(yaml.safe_dump({"name": "exp", "output_dir": str(tmp_path / "out"),
                                   "data": {"root": "elsewhere"}, "infer": {"batch_size": 7}}))
    cfg, exp_dir, path = resolve_config(cli, config_explicit=True)
    assert exp_dir == tmp_path / "out" / "exp" and path is not None
    assert cfg.model.widths == [4, 8, 16]  # the model as trained
    assert cfg.infer.batch_size == 7  # this run's choices
    assert cfg.data.root == saved.data.root  # never another data root from a config file
    cfg, _, _ = resolve_config(cli, config_explicit=False)
    assert cfg.infer.batch_size == 2 and cfg.model.widths == [4, 8, 16]
    cfg, _, _ = resolve_config(cli, ["infer.batch_size=5"], config_explicit=True)
    assert cfg.infer.batch_size == 5
    # No saved config: the given one, with --exp as the name.
    cfg, exp_dir, path = resolve_config(cli, exp="other")
    assert path is None and cfg.name == "other" and exp_dir == tmp_path / "out" / "other"


@pytest.mark.slow
def test_tuned_parameters_are_used(workspace, tmp_path):
    cfg, exp_dir, _ = resolve_config(workspace["root"] / "thresh.yaml", ["infer.batch_size=1"])
    with pytest.warns(UserWarning, match="no tuned parameters"):
        summary = run_inference(cfg, exp_dir, workspace["data"], tmp_path / "s.csv", folds=[0],
                                progress=False, verbose=False)
    assert summary["postprocess_params"]["cort"]["seed_threshold"] == 0.6
    default = cfg.postprocess.seed_threshold
    assert summary["postprocess_params"]["astro"]["seed_threshold"] == default
    assert summary["cell_type_counts"] == {"cort": 3} and summary["n_masks"] > 0


@pytest.mark.slow
def test_whole_image_classifiers_choose_the_type(workspace, tmp_path):
    """Fold classifiers beside the models decide the type; the CSV holds their probabilities."""
    import shutil

    from cellseg.data.data_root import read_image
    from cellseg.experiment import CLASSIFIER_FILE
    from cellseg.model.celltype import CellTypeClassifier, image_features

    exp_src = workspace["out"] / "rand"
    out_root = tmp_path / "output"
    shutil.copytree(exp_src, out_root / "rand")
    test_dir = workspace["data"] / "test"
    images = [read_image(p) for p in sorted(test_dir.glob("*.png"))]
    feats = np.stack([image_features(im) for im in images] * 2)
    labels = ["astro", "cort", "shsy5y"] * 2
    clf = CellTypeClassifier.fit(feats, labels)
    for fold in (0, 1):
        clf.save(out_root / "rand" / f"fold{fold}" / CLASSIFIER_FILE)
    cfg, exp_dir, _ = resolve_config(workspace["root"] / "rand.yaml",
                                     [f"output_dir={out_root}"])
    out = tmp_path / "sub.csv"
    with pytest.warns(UserWarning, match="postprocess.yaml"):
        summary = run_inference(cfg, exp_dir, workspace["data"], out, tta=["identity"],
                                progress=False, verbose=False)
    assert summary["cell_type_source"] == "whole-image classifier"
    types = pd.read_csv(tmp_path / "sub_cell_types.csv")
    assert list(types["cell_type"]) == ["astro", "cort", "shsy5y"]
    probs = types[[f"prob_{t}" for t in CELL_TYPES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
    (out_root / "rand" / "fold1" / CLASSIFIER_FILE).write_text("{broken")
    with pytest.raises(InferenceError, match=CLASSIFIER_FILE):
        run_inference(cfg, exp_dir, workspace["data"], out, tta=["identity"],
                      progress=False, verbose=False)
