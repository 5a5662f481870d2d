"""A visual report of one experiment: a markdown page with PNGs, from files already written.

Why: people judge a segmentation model by looking at it. The pipeline already writes
everything needed (train.csv, training curves, fold results, tuned post-processing, the
evaluation's overlays, the ablation table); this module only gathers them on one page, in the
order of the paper's figures, so that a run can be shown without a notebook:

1. **Data** (paper figures 6-7): images and cells per cell type, cells-per-image histograms
   and a per-type statistics table, from ``train.csv``;
2. **Samples** (figure 8): one or more training images per type with their true masks
   (:func:`cellseg.viz.overlay`: image | outlines | one colour per cell);
3. **Training**: each fold's ``curves.png`` and its ``result.json`` (OOF score per type,
   body pixel accuracy / IoU, epochs);
4. **Post-processing**: default vs tuned OOF score per type (``postprocess.yaml``, and the
   classical baseline's ``postprocess_classical.yaml``);
5. **Predictions**: the evaluation summary and its best / worst overlays
   (``output/<exp>/eval/``, written by ``src/evaluate.py``);
6. **Ablation**: ``bench/results/ablation.md`` when it exists.

Nothing is recomputed, no model is loaded (no TensorFlow). A missing input skips its part with
a note on the page, never an error: a report of a half-finished experiment is still useful.
The report folder is rebuilt on each run (it only holds copies and drawings).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cellseg import fileio
from cellseg.constants import CELL_TYPES, DEFAULT_DATA_DIR
from cellseg.experiment import (
    CLASSICAL_POSTPROCESS_FILE,
    CURVES_FILE,
    POSTPROCESS_FILE,
    RESULT_FILE,
    SAVED_CONFIG,
    fold_dirs,
)

REPORT_FILE = "report.md"
DEFAULT_ABLATION = Path(__file__).resolve().parents[3] / "bench" / "results" / "ablation.md"


@dataclass
class Report:
    """What :func:`build_report` wrote.

    Attributes:
        path: the markdown page.
        sections: titles of the sections written.
        skipped: one note per part that was skipped, saying which input was missing.
        files: every file written (page and images).
    """

    path: Path
    sections: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


class _Page:
    """Markdown being assembled, with the files it references."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.lines: list[str] = []
        self.report = Report(out_dir / REPORT_FILE)

    def section(self, title: str) -> None:
        self.lines += [f"## {title}", ""]
        self.report.sections.append(title)

    def text(self, text: str) -> None:
        self.lines += [text, ""]

    def skip(self, what: str, why: str) -> None:
        self.lines += [f"_Skipped: {what}: {why}._", ""]
        self.report.skipped.append(f"{what}: {why}")

    def image(self, name: str, caption: str) -> None:
        self.lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        self.report.files.append(self.out_dir / name)

    def copy(self, src: Path, name: str, caption: str) -> None:
        with fileio.atomic_path(self.out_dir / name, suffix=f".tmp{src.suffix}") as tmp:
            shutil.copyfile(src, tmp)
        self.image(name, caption)


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table (``DataFrame.to_markdown``); numeric columns right-aligned.

    Cells are formatted here, not by tabulate's ``floatfmt``: a missing float must read "–",
    not "nan", and a column mixing numbers and text must not be re-parsed as numbers.
    """
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    text = pd.DataFrame([[cell(v) for v in row] for row in df.itertuples(index=False)],
                        columns=[str(c) for c in df.columns])
    align = ["right" if pd.api.types.is_numeric_dtype(t) else "left" for t in df.dtypes]
    return text.to_markdown(index=False, disable_numparse=True, colalign=align)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fileio.save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------ data
def data_statistics(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image cell counts and the per-type table of a ``train.csv``.

    The cell area is the sum of the run lengths of its RLE row (no mask is decoded).

    Returns:
        ``(per_image, per_type)``: per image id, cell type and cell count; per type images,
        cells, cells per image (min / median / max) and median cell area in px.
    """
    lengths = [np.asarray(a.split()[1::2], dtype=np.int64).sum() for a in table["annotation"]]
    t = table.assign(area=lengths)
    per_image = t.groupby("id", sort=False).agg(cell_type=("cell_type", "first"),
                                               cells=("annotation", "size")).reset_index()
    rows = []
    for cell_type in [c for c in CELL_TYPES if c in set(per_image["cell_type"])]:
        n = per_image.loc[per_image["cell_type"] == cell_type, "cells"]
        rows.append({"cell type": cell_type, "images": int(n.size), "cells": int(n.sum()),
                     "cells/image min": int(n.min()), "median": float(n.median()),
                     "max": int(n.max()),
                     "median cell area px": float(t.loc[t["cell_type"] == cell_type,
                                                        "area"].median())})
    return per_image, pd.DataFrame(rows)


def _data_section(page: _Page, data_dir: Path) -> pd.DataFrame | None:
    """Figures 6-7 and the statistics table; returns the train table (None if missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellseg.data.data_root import DataError, read_train_csv

    page.section("Data")
    csv = data_dir / "train.csv"
    try:
        table = read_train_csv(csv)
    except DataError as exc:
        page.skip("data statistics and samples", str(exc))
        return None
    per_image, per_type = data_statistics(table)
    page.text(f"`{csv}`: {per_image.shape[0]:,} images, {len(table):,} annotated cells.")
    page.text(_table(per_type, digits=0))

    types = list(per_type["cell type"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    colors = plt.cm.tab10(np.arange(len(types)))
    axes[0].bar(types, per_type["images"], color=colors)
    axes[0].set_title("images per cell type")
    axes[1].bar(types, per_type["cells"], color=colors)
    axes[1].set_title("annotated cells per cell type")
    for ax, col in zip(axes, ("images", "cells")):
        for i, v in enumerate(per_type[col]):
            ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    _save(fig, page.out_dir / "cell_types.png")
    page.image("cell_types.png", "Images and annotated cells per cell type (paper fig. 6)")

    fig, axes = plt.subplots(1, len(types), figsize=(3.6 * len(types), 3.0), squeeze=False)
    for ax, cell_type, color in zip(axes[0], types, colors):
        n = per_image.loc[per_image["cell_type"] == cell_type, "cells"]
        ax.hist(n, bins=min(30, max(5, n.size // 3)), color=color)
        ax.set_title(f"{cell_type} (median {n.median():.0f})")
        ax.set_xlabel("cells per image")
    axes[0][0].set_ylabel("images")
    fig.tight_layout()
    _save(fig, page.out_dir / "cells_per_image.png")
    page.image("cells_per_image.png", "Cells per image, per cell type (paper fig. 7)")
    return table


def _samples_section(page: _Page, data_dir: Path, n_samples: int, seed: int) -> None:
    """Figure 8: training images of each type with their true masks."""
    from cellseg.data.data_root import DataError, TrainData
    from cellseg.viz import save_overlay

    page.section("Samples with true masks")
    try:
        data = TrainData(data_dir)
    except DataError as exc:
        page.skip("sample images", str(exc))
        return
    rng = np.random.default_rng(seed)
    images = data.images
    shown = 0
    for cell_type in CELL_TYPES:
        ids = images.loc[images["cell_type"] == cell_type, "id"].tolist()
        if not ids:
            continue
        for image_id in rng.choice(ids, size=min(n_samples, len(ids)), replace=False):
            try:
                image = data.load_image(str(image_id))
            except DataError as exc:
                page.skip(f"sample {image_id}", str(exc))
                continue
            inst = data.load_instances(str(image_id))
            name = f"sample_{cell_type}_{image_id}.png"
            save_overlay(page.out_dir / name, image, None, inst.labels)
            page.image(name, f"{cell_type} {image_id}: {inst.n_cells} true cells "
                             f"(image | outlines | one colour per cell; paper fig. 8)")
            shown += 1
    if not shown:
        page.skip("sample images", f"no readable training image under {data.image_dir}")


# ------------------------------------------------------------------------------ experiment
def _training_section(page: _Page, exp_dir: Path) -> None:
    import json

    page.section("Training")
    folds = fold_dirs(exp_dir)
    if not folds:
        page.skip("training curves and fold results", f"no fold*/ folder in {exp_dir}")
        return
    rows = []
    for k, d in folds:
        result = d / RESULT_FILE
        if result.is_file():
            try:
                r = json.loads(result.read_text())
            except json.JSONDecodeError as exc:
                page.skip(f"fold {k} results", f"{result} is not valid JSON ({exc})")
                r = None
            if r is not None:
                m = r.get("oof_metrics", {})
                row = {"fold": k, "OOF score": m.get("val_score", np.nan)}
                for t in CELL_TYPES:
                    row[t] = m.get(f"val_score_{t}", np.nan)
                row.update({"body acc.": m.get("val_body_accuracy", np.nan),
                            "body IoU": m.get("val_body_iou", np.nan),
                            "type acc.": m.get("val_cell_type_acc", np.nan),
                            "OOF images": r.get("n_val_images", ""),
                            "best / run epochs": f"{r.get('best_epoch', '?')} / "
                                                 f"{r.get('epochs_run', '?')}",
                            "train min": r.get("train_seconds", np.nan) / 60,
                            "params": f"{r.get('params', 0):,}"})
                rows.append(row)
        else:
            page.skip(f"fold {k} results", f"no {result.name} (training not finished)")
    if rows:
        page.text("Out-of-fold (OOF) metrics with the config's default post-processing "
                  "(`fold*/result.json`):")
        page.text(_table(pd.DataFrame(rows)))
    for k, d in folds:
        curves = d / CURVES_FILE
        if curves.is_file():
            page.copy(curves, f"curves_fold{k}.png",
                      f"Fold {k}: loss, body IoU / accuracy, cell-type accuracy and "
                      f"validation score per epoch")
        else:
            page.skip(f"fold {k} curves", f"no {curves}")


def _tuned_table(path: Path) -> pd.DataFrame | None:
    from cellseg.postprocess.tuned import TunedPostprocess

    try:
        tuned = TunedPostprocess.read(path)
    except (OSError, ValueError):
        return None
    rows = []
    for t, v in tuned.cell_types.items():
        rows.append({"cell type": t, "images": "" if v.n_images is None else v.n_images,
                     "default": np.nan if v.default_score is None else v.default_score,
                     "tuned": np.nan if v.oof_score is None else v.oof_score,
                     "trials": "" if v.n_trials is None else v.n_trials,
                     "params": ", ".join(f"{k}={x:.3g}" if isinstance(x, float) else
                                         f"{k}={x}" for k, x in v.params.items())})
    return pd.DataFrame(rows) if rows else None


def _tuning_section(page: _Page, exp_dir: Path) -> None:
    page.section("Post-processing (tuned per cell type)")
    found = False
    for name, what in ((POSTPROCESS_FILE, "network maps + watershed"),
                       (CLASSICAL_POSTPROCESS_FILE, "classical baseline on the raw image")):
        path = exp_dir / name
        if not path.is_file():
            page.skip(what, f"no {path}")
            continue
        df = _tuned_table(path)
        if df is None:
            page.skip(what, f"{path} has no readable cell_types section")
            continue
        found = True
        page.text(f"**{what}** (`{name}`): OOF score with the defaults and tuned")
        page.text(_table(df))
    history = sorted((exp_dir / "tuning").glob("deep-*-history.png"))
    for p in history:
        page.copy(p, f"tuning_{p.name}", f"Optuna history: {p.stem}")
    if found and not history:
        page.text("(no tuning plots: tune.py ran with --no-plots)")


def _eval_section(page: _Page, eval_dir: Path) -> None:
    page.section("Predictions")
    summary = eval_dir / "summary.md"
    if summary.is_file():
        text = summary.read_text().strip()
        text = "\n".join(line for line in text.splitlines() if not line.startswith("# "))
        page.text(text)
    else:
        page.skip("evaluation summary", f"no {summary} (run src/evaluate.py --out "
                                        f"{eval_dir})")
    overlays = eval_dir / "overlays"
    files = sorted(overlays.glob("*.png")) if overlays.is_dir() else []
    if not files:
        page.skip("prediction overlays", f"no PNG in {overlays}")
        return
    page.text("Image | true cells | predicted cells, coloured by error kind at IoU 0.5: green "
              "matched, red missed, orange false positive, magenta merge, cyan split.")
    for p in sorted(files, key=lambda p: (not p.name.startswith("best"), p.name)):
        tag = p.stem.split("_")
        caption = (f"{tag[0]} #{int(tag[1])}: {'_'.join(tag[2:])}" if len(tag) > 2
                   and tag[1].isdigit() else p.stem)
        page.copy(p, f"overlay_{p.name}", caption)


def _ablation_section(page: _Page, ablation: Path | None) -> None:
    page.section("Ablation")
    if ablation is None or not ablation.is_file():
        page.skip("ablation table", f"no {ablation} (run python bench/ablation.py)")
        return
    lines = ablation.read_text().strip().splitlines()
    body = [("#" + line if line.startswith("#") else line) for line in lines
            if not line.startswith("# ")]
    page.text(f"From `{ablation}`:")
    page.text("\n".join(body))


# ------------------------------------------------------------------------------ main entry
def default_data_dir(exp_dir: Path) -> Path:
    """The data root an experiment was trained on (its saved config), else the default."""
    for cfg_path in [d / SAVED_CONFIG for _, d in fold_dirs(exp_dir)]:
        if not cfg_path.is_file():
            continue
        try:
            doc = fileio.read_yaml(cfg_path)
        except (OSError, yaml.YAMLError):
            continue
        root = (doc.get("data") or {}).get("root")
        if root:
            return Path(root)
    return Path(DEFAULT_DATA_DIR)


def build_report(exp: str, data_dir: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None,
                 output_dir: str | os.PathLike = "output",
                 ablation: str | os.PathLike | None = DEFAULT_ABLATION,
                 eval_dir: str | os.PathLike | None = None,
                 n_samples: int = 1, seed: int = 0,
                 sections: Sequence[str] = ("data", "samples", "training", "tuning",
                                            "predictions", "ablation")) -> Report:
    """Write ``<out_dir>/report.md`` and its PNGs for experiment ``exp``.

    Args:
        exp: experiment name (folder ``<output_dir>/<exp>``; need not exist).
        data_dir: data root with ``train.csv`` and ``train/``; default: the experiment's
            saved ``data.root``, else the competition's default folder.
        out_dir: default ``<output_dir>/<exp>/report``.
        output_dir: where experiments live.
        ablation: the ablation markdown to include (None: skip).
        eval_dir: the evaluation folder (default ``<output_dir>/<exp>/eval``).
        n_samples: sample images per cell type.
        seed: which samples.
        sections: subset of the parts to write.

    Returns:
        A :class:`Report` (page path, sections, skipped parts with reasons, files).
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    exp_dir = Path(output_dir) / exp
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir(exp_dir)
    out = Path(out_dir) if out_dir is not None else exp_dir / "report"
    if out.is_dir():
        # Only our own products: report.md and the PNGs it references.
        for p in out.glob("*.png"):
            p.unlink()
        (out / REPORT_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    page = _Page(out)
    page.lines += [f"# Report: experiment `{exp}`", "",
                   f"Experiment folder `{exp_dir}`"
                   + ("" if exp_dir.is_dir() else " (does not exist)")
                   + f"; data root `{data_dir}`.", ""]
    table = None
    if "data" in sections:
        table = _data_section(page, data_dir)
    if "samples" in sections and n_samples:
        if table is None and "data" in sections:
            page.section("Samples with true masks")
            page.skip("sample images", f"no readable {data_dir / 'train.csv'}")
        else:
            _samples_section(page, data_dir, n_samples, seed)
    if "training" in sections:
        _training_section(page, exp_dir)
    if "tuning" in sections:
        _tuning_section(page, exp_dir)
    if "predictions" in sections:
        _eval_section(page, Path(eval_dir) if eval_dir is not None else exp_dir / "eval")
    if "ablation" in sections:
        _ablation_section(page, Path(ablation) if ablation is not None else None)
    if page.report.skipped:
        page.lines += ["## Skipped parts", ""] + [f"- {s}" for s in page.report.skipped] + [""]
    fileio.write_text(page.report.path, "\n".join(page.lines).rstrip() + "\n")
    page.report.files.insert(0, page.report.path)
    return page.report


__all__ = ["REPORT_FILE", "Report", "build_report", "data_statistics", "default_data_dir"]
