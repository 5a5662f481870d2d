"""Pictures people would rather see than read: training curves and instance overlays."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import fileio  # noqa: E402


def plot_curves(history: pd.DataFrame, path: str | os.PathLike, title: str = "") -> None:
    """Loss, body IoU / accuracy and validation score per epoch (the paper's figure 10)."""
    epochs = history["epoch"].to_numpy() + 1
    panels = [
        ("loss", [c for c in ("loss", "val_loss") if c in history]),
        ("body IoU / pixel accuracy",
         [c for c in history.columns if c.endswith(("body_iou", "body_accuracy"))]),
        ("cell-type accuracy", [c for c in history.columns if c.endswith("cell_type_acc")]),
        ("competition score (val)", [c for c in ("val_score",) if c in history]),
    ]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, cols) in zip(axes[0], panels):
        for col in cols:
            values = pd.to_numeric(history[col], errors="coerce")
            ok = values.notna().to_numpy()
            ax.plot(epochs[ok], values[ok], marker="o", ms=3, label=col)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fileio.save_figure(fig, path, dpi=110)
    plt.close(fig)


def _colors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 256, size=(n + 1, 3)).astype(np.uint8)


def outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean map of instance boundaries (pixels whose 4-neighbour has another label)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[1:] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    return edge & (lab > 0)


def overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """RGB panel: image | true outlines (green) + predicted outlines (magenta) | colour per
    predicted instance."""
    gray = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_GRAY2RGB)
    lines = gray.copy()
    if truth is not None:
        lines[outlines(truth)] = (0, 230, 0)
    lines[outlines(pred)] = (255, 0, 255)
    colours = _colors(int(pred.max()))
    fill = gray.copy()
    mask = pred > 0
    fill[mask] = (0.45 * gray[mask] + 0.55 * colours[pred[mask]]).astype(np.uint8)
    sep = np.full((gray.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([gray, sep, lines, sep, fill], axis=1)


def save_overlay(path: str | os.PathLike, image: np.ndarray, truth: np.ndarray | None,
                 pred: np.ndarray) -> None:
    """Write :func:`overlay` as a PNG (atomically)."""
    panel = overlay(image, truth, pred)
    with fileio.atomic_path(path, suffix=".tmp.png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
