"""Pictures people would rather see than read: training curves and instance overlays."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cellseg import fileio  # noqa: E402


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


# Error-kind colours (RGB) of :func:`error_overlay`; a legend is drawn under the panels.
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "matched": (0, 200, 0),
    "missed": (255, 0, 0),
    "false positive": (255, 165, 0),
    "merge": (255, 0, 255),
    "split": (0, 255, 255),
}
FILL_ALPHA = 0.5  # cell interiors: (1 - alpha) * image + alpha * colour; outlines are solid


def _kind_colours(record, side: str) -> np.ndarray:
    """RGB colour per cell of one side of an :class:`cellseg.metrics.error_analysis.ErrorRecord`.

    Truth: split > inside a merge > missed > matched. Prediction: merge > piece of a split cell
    > false positive > matched. (The cause wins over the bare miss / false positive.)
    """
    c = {k: np.array(v, np.uint8) for k, v in ERROR_COLOURS.items()}
    if side == "true":
        out = np.where(record.missed[:, None], c["missed"], c["matched"])
        out = np.where(record.true_in_merge[:, None], c["merge"], out)
        return np.where(record.true_split[:, None], c["split"], out).astype(np.uint8)
    out = np.where(record.false_positive[:, None], c["false positive"], c["matched"])
    out = np.where(record.pred_split_piece[:, None], c["split"], out)
    return np.where(record.pred_merge[:, None], c["merge"], out).astype(np.uint8)


def _paint(gray: np.ndarray, labels: np.ndarray, ids: np.ndarray,
           colours: np.ndarray) -> np.ndarray:
    """Cells of ``labels`` (ids ``ids``) filled and outlined with their colours; labels not in
    ``ids`` (e.g. a true cell hidden by overlaps) stay unpainted."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    top = max(int(labels.max(initial=0)), int(ids.max(initial=0)))
    lut = np.full((top + 1, 3), -1, np.int64)
    if ids.size:
        lut[ids] = colours
    col = lut[labels]
    painted = (col[..., 0] >= 0) & (labels > 0)
    out = gray.copy()
    blend = (1 - FILL_ALPHA) * gray[painted] + FILL_ALPHA * col[painted]
    out[painted] = blend.astype(np.uint8)
    edge = outlines(labels) & painted
    out[edge] = col[edge].astype(np.uint8)
    return out


def _legend(width: int, counts: str) -> np.ndarray:
    """A black strip with one coloured square + name per error kind, then ``counts``; items
    wrap onto more lines when the panels are narrow, so every colour stays visible."""
    scale = float(np.clip(width / 1600, 0.35, 1.0))
    font = cv2.FONT_HERSHEY_SIMPLEX
    line_h = int(30 * scale) + 8
    box = int(14 * scale) + 2
    items = [(name, colour) for name, colour in ERROR_COLOURS.items()] + [(counts, None)]
    placed, x, line = [], 6, 0
    for text, colour in items:
        item_w = (box + 4 if colour else 0) + cv2.getTextSize(text, font, scale, 1)[0][0]
        if x > 6 and x + item_w > width:
            x, line = 6, line + 1
        placed.append((x, line, text, colour))
        x += item_w + 14
    strip = np.zeros(((line + 1) * line_h, width, 3), np.uint8)
    for x, line, text, colour in placed:
        base = (line + 1) * line_h - int(9 * scale) - 3
        if colour is not None:
            cv2.rectangle(strip, (x, base - box + 1), (x + box, base), colour, thickness=-1)
            x += box + 4
        cv2.putText(strip, text, (x, base), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, record) -> np.ndarray:
    """RGB panel: image | true cells by error kind | predicted cells by error kind, with a
    legend and the counts underneath.

    Colours (:data:`ERROR_COLOURS`): green matched, red missed true cell, orange false-positive
    prediction, magenta merge (the merged prediction and the true cells inside it), cyan split
    (the split true cell and its pieces). Cells are filled half-transparent and outlined.

    Args:
        image: gray uint8 H x W.
        truth: true label image whose ids are ``record.true_ids`` (for list truth: cell k =
            k + 1, i.e. :attr:`cellseg.data.data_root.Instances.labels`).
        pred: predicted label image (ids ``record.pred_ids``).
        record: :func:`cellseg.metrics.error_analysis.error_analysis` of this truth and prediction.
    """
    gray = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_GRAY2RGB)
    true_panel = _paint(gray, truth, record.true_ids, _kind_colours(record, "true"))
    pred_panel = _paint(gray, pred, record.pred_ids, _kind_colours(record, "pred"))
    sep = np.full((gray.shape[0], 4, 3), 255, np.uint8)
    panels = np.concatenate([gray, sep, true_panel, sep, pred_panel], axis=1)
    counts = (f"image | truth | prediction:  TP {record.tp}  FN {record.fn}  FP {record.fp}  "
              f"merges {record.merges}  splits {record.splits}  (IoU > 0.5)")
    return np.concatenate([panels, _legend(panels.shape[1], counts)], axis=0)


def save_error_overlay(path: str | os.PathLike, image: np.ndarray, truth: np.ndarray,
                       pred: np.ndarray, record) -> None:
    """Write :func:`error_overlay` as a PNG (atomically)."""
    panel = error_overlay(image, truth, pred, record)
    with fileio.atomic_path(path, suffix=".tmp.png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def plot_iou_hist(records_by_type: dict[str, list], path: str | os.PathLike,
                  threshold: float = 0.5) -> None:
    """Histogram per cell type of every true cell's IoU: matched cells at their matched IoU
    (green), missed cells at their best IoU with any prediction (red; 0 = nothing there).

    Why both: the green part is the matched-IoU distribution that decides the high thresholds
    of the score; the red part tells near misses (0.3-0.5: boundary errors) from cells with
    nothing predicted (0).
    """
    names = list(records_by_type)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.3),
                             squeeze=False)
    edges = np.linspace(0, 1, 21)
    for ax, name in zip(axes[0], names):
        recs = records_by_type[name]
        matched = np.concatenate([r.matched_iou[r.true_match >= 0] for r in recs] or [[]])
        missed = np.concatenate([r.best_iou[r.true_match < 0] for r in recs] or [[]])
        ax.hist([missed, matched], bins=edges, stacked=True,
                color=[np.array(ERROR_COLOURS["missed"]) / 255,
                       np.array(ERROR_COLOURS["matched"]) / 255],
                label=[f"missed: best IoU ({missed.size})", f"matched IoU ({matched.size})"])
        ax.axvline(threshold, color="k", lw=0.8, ls="--")
        mean = f"{matched.mean():.3f}" if matched.size else "-"
        ax.set_title(f"{name}: mean matched IoU {mean}", fontsize=9)
        ax.set_xlabel("IoU with prediction")
        ax.set_ylabel("true cells")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fileio.save_figure(fig, path, dpi=110)
    plt.close(fig)
