"""A tiny Sartorius-format data root for fast tests: dark disks with bright halos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cellseg.constants import CELL_TYPES, TRAIN_COLUMNS
from cellseg.data import rle
from cellseg.data.folds import make_folds, save_folds


def draw_image(rng: np.random.Generator, shape: tuple[int, int], n_cells: int, radius: int
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = shape
    img = np.full(shape, 128, np.float32)
    masks = []
    for _ in range(n_cells):
        cy, cx = int(rng.integers(radius, h - radius)), int(rng.integers(radius, w - radius))
        m = np.zeros(shape, np.uint8)
        cv2.circle(m, (cx, cy), radius, 1, -1)
        m = m.astype(bool)
        taken = np.any(masks, axis=0) if masks else np.zeros(shape, bool)
        m &= ~taken
        if m.sum() < 10:
            continue
        masks.append(m)
        halo = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~m
        img[m] = 80
        img[halo] = 190
    img += rng.normal(0, 4, shape)
    return np.clip(img, 0, 255).astype(np.uint8), masks


def make_tiny_root(root: Path, n_images: int = 9, shape: tuple[int, int] = (64, 96),
                   n_test: int = 2, seed: int = 0, folds: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("train", "test"):
        (root / sub).mkdir(exist_ok=True)
    rows, truth_rows = [], []
    h, w = shape
    for k in range(n_images + n_test):
        image_id = f"{k:012x}"
        cell_type = CELL_TYPES[k % 3]
        img, masks = draw_image(rng, shape, n_cells=6, radius=5 + 2 * (k % 3))
        is_test = k >= n_images
        cv2.imwrite(str(root / ("test" if is_test else "train") / f"{image_id}.png"), img)
        for m in masks:
            (truth_rows if is_test else rows).append({
                "id": image_id, "annotation": rle.encode(m), "width": w, "height": h,
                "cell_type": cell_type, "plate_time": "11h30m00s", "sample_date": "2020-09-14",
                "sample_id": f"{cell_type}[x]_S{k % (n_images // 3 * 3 or 3)}",
                "elapsed_timedelta": "0 days 11:30:00"})
    pd.DataFrame(rows, columns=list(TRAIN_COLUMNS)).to_csv(root / "train.csv", index=False)
    pd.DataFrame(truth_rows, columns=list(TRAIN_COLUMNS)).to_csv(root / "test_truth.csv",
                                                                  index=False)
    test_ids = sorted(p.stem for p in (root / "test").glob("*.png"))
    pd.DataFrame({"id": test_ids, "predicted": ""}).to_csv(root / "sample_submission.csv",
                                                           index=False)
    table = pd.read_csv(root / "train.csv", dtype={"id": str})
    images = table.groupby("id", as_index=False).first()[["id", "cell_type", "sample_id"]]
    save_folds(make_folds(images, n_folds=folds, seed=seed), root / "folds.csv")
    return root


def make_tiny_experiment(root: Path, seed: int, infer: dict | None = None) -> Path:
    """Two folds (``output/tiny/fold{0,1}``) of a tiny Attention UNet++ (project layers:
    attention gates, deep supervision, cell-type head) with fixed random weights, each with the
    config it was "trained" with; returns the config file. For the export tests."""
    import keras
    import yaml

    from cellseg.config import ModelConfig, load_config, save_config
    from cellseg.model.network import build_model

    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(root / "output"), "data": {"root": str(root / "none")},
        "model": {"widths": [4, 8, 16]}, **({"infer": infer} if infer else {})}))
    for fold in (0, 1):
        keras.utils.set_random_seed(seed + fold)
        d = root / "output" / "tiny" / f"fold{fold}"
        d.mkdir(parents=True)
        build_model(ModelConfig(widths=[4, 8, 16]), name=f"m{seed}_{fold}").save(d / "best.keras")
        save_config(load_config(cfg_path), d / "config.yaml")
        (d / "result.json").write_text("{}")
    return cfg_path
