"""What ``segment.py`` writes per image, in formats Fiji, napari and QuPath open.

``NAME_labels.tif`` (uint16 label image, uint32 above 65,535 cells), ``NAME_cells.csv`` (one
row per cell), ``NAME_overlay.png`` (image | cells) and, on request, ``NAME_rois.zip`` (ImageJ
polygon ROIs); each written atomically. ``NAME_segment.json`` is written last: what made the
outputs (input hash, model hashes, folds, heads, TTA, scale, tiles, channel, tuned-parameter
hash, cell-type override) and each output's size and hash, so a re-run can tell a finished,
current image from one made by other settings or changed since (:func:`record_problem`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.data.images import write_png

OVERLAY_MAX_SIDE = 2048
UINT16_MAX_CELLS = 65535


CSV_COLUMNS: tuple[str, ...] = (
    "id", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y",
    "bbox_max_x", "equivalent_diameter", "mean_intensity", "cell_type", "cell_type_prob",
    "confidence",
)


def cell_table(labels: np.ndarray, intensity: np.ndarray, confidence: np.ndarray,
               cell_type: str, cell_type_prob: float = float("nan")):
    """One row per cell (pixels of the input image; bbox max exclusive), as a DataFrame."""
    from skimage.measure import regionprops_table

    if labels.max() == 0:
        return pd.DataFrame(columns=list(CSV_COLUMNS))
    props = regionprops_table(
        labels, intensity_image=intensity,
        properties=("label", "area", "centroid", "bbox", "equivalent_diameter_area",
                    "intensity_mean"))
    ids = props["label"].astype(np.int64)
    return pd.DataFrame({
        "id": ids, "area": props["area"].astype(np.int64),
        "centroid_y": np.round(props["centroid-0"], 2),
        "centroid_x": np.round(props["centroid-1"], 2),
        "bbox_min_y": props["bbox-0"], "bbox_min_x": props["bbox-1"],
        "bbox_max_y": props["bbox-2"], "bbox_max_x": props["bbox-3"],
        "equivalent_diameter": np.round(props["equivalent_diameter_area"], 3),
        "mean_intensity": np.round(props["intensity_mean"], 3),
        "cell_type": cell_type,
        "cell_type_prob": round(float(cell_type_prob), 4),
        "confidence": np.round(confidence[ids], 4),
    }, columns=list(CSV_COLUMNS))


def labels_to_shape(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (pixel centres mapped, no new ids)."""
    h0, w0 = shape
    h, w = labels.shape
    if (h, w) == (h0, w0):
        return labels
    rows = np.minimum(((np.arange(h0) + 0.5) * (h / h0)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(w0) + 0.5) * (w / w0)).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def label_dtype(n_cells: int) -> type:
    """uint16 (what every viewer opens) up to 65,535 cells, uint32 beyond."""
    return np.uint16 if n_cells <= UINT16_MAX_CELLS else np.uint32


def write_label_tiff(path: str | os.PathLike, labels: np.ndarray) -> np.dtype:
    """Write the label image as a zlib-compressed TIFF (atomically); returns its dtype."""
    import tifffile

    dtype = label_dtype(int(labels.max()))
    with fileio.atomic_path(path, suffix=".tmp.tif") as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype, copy=False), photometric="minisblack",
                         compression="zlib", metadata={"axes": "YX"})
    return np.dtype(dtype)


def cell_contours(labels: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """``(id, points)`` per cell: the outer contour (x, y) of its largest piece (OpenCV, on
    the cell's bounding box only, so the cost follows the cells, not the image)."""
    from scipy import ndimage

    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = np.pad((labels[sl] == i).astype(np.uint8), 1)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        pts = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
        pts += (sl[1].start - 1, sl[0].start - 1)
        yield i, pts


def write_rois(path: str | os.PathLike, labels: np.ndarray) -> int:
    """ImageJ ROI zip, one polygon per cell named by its id (as in the CSV and the label
    image); returns how many were written. Fiji: ROI Manager > More > Open; QuPath: File >
    Import objects / drag and drop."""
    from roifile import ImagejRoi, roiwrite

    rois = []
    for i, pts in cell_contours(labels):
        if len(pts) < 3:  # a one- or two-pixel cell: a tiny square around it
            x, y = pts[0]
            pts = np.array([[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1]], np.float64)
        rois.append(ImagejRoi.frompoints(pts, name=f"{i:06d}"))
    with fileio.atomic_path(path, suffix=".tmp.zip") as tmp:
        tmp.unlink()
        if rois:
            roiwrite(tmp, rois)
        else:
            import zipfile

            zipfile.ZipFile(tmp, "w").close()
    return len(rois)


def display_uint8(image: np.ndarray) -> np.ndarray:
    """Contrast-stretched uint8 copy (0.5-99.5 percentiles) for pictures of any bit depth."""
    x = image.astype(np.float32)
    lo, hi = np.percentile(x[:: max(1, x.shape[0] // 1024), :: max(1, x.shape[1] // 1024)],
                           (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def overlay_picture(image: np.ndarray, labels: np.ndarray,
                    max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """RGB picture: image | cells filled in random colours with white outlines, downsampled
    so the long side of a panel is at most ``max_side``."""
    from cellseg.viz import outlines

    h, w = image.shape
    f = min(1.0, max_side / max(h, w))
    size = (max(1, int(round(h * f))), max(1, int(round(w * f))))
    small = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA) if f < 1 else image
    gray = display_uint8(small)
    lab = labels_to_shape(labels, size)
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    colours = np.random.default_rng(0).integers(60, 256, size=(int(lab.max()) + 1, 3))
    fill = rgb.copy()
    m = lab > 0
    fill[m] = (0.5 * rgb[m] + 0.5 * colours[lab[m]]).astype(np.uint8)
    fill[outlines(lab)] = (255, 255, 255)
    sep = np.full((size[0], 4, 3), 255, np.uint8)
    return np.concatenate([rgb, sep, fill], axis=1)


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """:func:`overlay_picture` as a PNG (atomically)."""
    write_png(path, cv2.cvtColor(overlay_picture(image, labels), cv2.COLOR_RGB2BGR))


def output_paths(out_dir: str | os.PathLike, name: str, rois: bool) -> dict[str, Path]:
    """Where one image's outputs go (``labels``, ``cells``, ``overlay``, maybe ``rois``)."""
    out_dir = Path(out_dir)
    paths = {"labels": out_dir / f"{name}_labels.tif", "cells": out_dir / f"{name}_cells.csv",
             "overlay": out_dir / f"{name}_overlay.png"}
    if rois:
        paths["rois"] = out_dir / f"{name}_rois.zip"
    return paths


RECORD_SUFFIX = "_segment.json"
RECORD_FORMAT = 1


def record_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``NAME_segment.json``: what made the image's outputs (written after them)."""
    return Path(out_dir) / f"{name}{RECORD_SUFFIX}"


def output_files(name: str) -> list[str]:
    """Every file name one image's outputs may have, record included (to find the temporary
    files a killed run left of them)."""
    return [f"{name}{s}" for s in ("_labels.tif", "_cells.csv", "_overlay.png", "_rois.zip",
                                   RECORD_SUFFIX)]


def _file_entry(path: Path) -> dict[str, object]:
    return {"file": fileio.printable(path.name), "bytes": path.stat().st_size,
            "sha256": fileio.file_digest(path)}


def write_record(path: Path, settings: dict, input_sha256: str, outputs: dict[str, Path],
                 result: dict) -> None:
    """The record of one finished image (atomically, after every output exists)."""
    import json

    doc = {"format": RECORD_FORMAT, "input_sha256": input_sha256, "settings": settings,
           "outputs": {k: _file_entry(p) for k, p in outputs.items()}, "result": result}
    fileio.write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def read_record(path: Path) -> dict | None:
    """The record, or None when missing or unreadable (the image is then redone)."""
    import json

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == RECORD_FORMAT else None


def record_problem(record: dict | None, settings: dict, input_sha256: str,
                   paths: dict[str, Path]) -> str | None:
    """Why an image's outputs must be redone (missing record, another model or option, a
    changed input, an output missing or changed since), or None when they are current."""
    if record is None:
        return "no record of a finished run"
    if record.get("input_sha256") != input_sha256:
        return "the input image changed"
    old = record.get("settings", {})
    changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
    if changed:
        return f"made with other {', '.join(changed)}"
    outputs = record.get("outputs", {})
    for key, path in paths.items():
        entry = outputs.get(key)
        if entry is None or not path.is_file():
            return f"{path.name} missing"
        if path.stat().st_size != entry.get("bytes") or \
                fileio.file_digest(path) != entry.get("sha256"):
            return f"{path.name} changed since it was written"
    return None
