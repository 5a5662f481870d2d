"""The visual report: built from whatever an experiment folder holds, never failing on gaps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_data import make_tiny_root

from cellseg.constants import CELL_TYPES
from cellseg.evaluate.report import REPORT_FILE, build_report, data_statistics, default_data_dir


def _png(path: Path, shape: tuple[int, int] = (20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), 200, np.uint8))


def _fake_experiment(output: Path, exp: str, data_root: Path) -> Path:
    """An experiment folder with every file the report reads (values are made up)."""
    exp_dir = output / exp
    fold = exp_dir / "fold0"
    fold.mkdir(parents=True)
    (fold / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(data_root)}}))
    metrics = {"val_score": 0.41, "val_body_accuracy": 0.97, "val_body_iou": 0.88,
               "val_cell_type_acc": 1.0, **{f"val_score_{t}": 0.4 for t in CELL_TYPES}}
    (fold / "result.json").write_text(json.dumps({
        "oof_metrics": metrics, "n_val_images": 3, "best_epoch": 2, "epochs_run": 3,
        "train_seconds": 90.0, "params": 1234}))
    _png(fold / "curves.png")
    tuned = {"cell_types": {t: {"params": {"seed_threshold": 0.55, "min_area": 12},
                                "oof_score": 0.5, "default_score": 0.4, "n_images": 1,
                                "n_trials": 5} for t in CELL_TYPES}}
    (exp_dir / "postprocess.yaml").write_text(yaml.safe_dump(tuned))
    (exp_dir / "postprocess_classical.yaml").write_text(yaml.safe_dump(tuned))
    (exp_dir / "eval").mkdir()
    (exp_dir / "eval" / "summary.md").write_text(
        "# Evaluation\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    _png(exp_dir / "eval" / "overlays" / "best_01_000000000009.png")
    _png(exp_dir / "eval" / "overlays" / "worst_01_00000000000a.png")
    return exp_dir


def _referenced_images(page: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)


def test_full_report_on_tiny_data(tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "data", n_images=9, shape=(64, 96), n_test=2)
    output = tmp_path / "output"
    _fake_experiment(output, "tiny", root)
    ablation = tmp_path / "ablation.md"
    ablation.write_text("# Ablation\n\n| method | score |\n|---|---|\n| U-Net | 0.3 |\n")

    report = build_report("tiny", output_dir=output, ablation=ablation, n_samples=1)

    page = report.path.read_text()
    assert report.path == output / "tiny" / "report" / REPORT_FILE
    assert report.skipped == []
    for title in ("Data", "Samples with true masks", "Training", "Predictions", "Ablation"):
        assert f"## {title}" in page
    # Every picture the page shows is in the report folder.
    images = _referenced_images(page)
    assert {"cell_types.png", "cells_per_image.png", "curves_fold0.png"} <= set(images)
    assert sum(name.startswith("sample_") for name in images) == len(CELL_TYPES)
    assert any(name.startswith("overlay_best_01") for name in images)
    for name in images:
        assert (report.path.parent / name).is_file(), name
    assert "| U-Net | 0.3 |" in page  # the ablation table is included
    assert "0.410" in page  # the fold's OOF score
    assert "seed_threshold=0.55" in page  # tuned parameters


def test_missing_inputs_are_skipped_with_notes(tmp_path: Path) -> None:
    report = build_report("nothing", data_dir=tmp_path / "no_data", output_dir=tmp_path / "out",
                          ablation=tmp_path / "no_ablation.md")
    page = report.path.read_text()
    assert report.path.is_file()
    assert _referenced_images(page) == []
    assert len(report.skipped) >= 5
    assert "## Skipped parts" in page
    assert "train.csv" in page and "no_ablation.md" in page


def test_rebuild_replaces_old_pictures(tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "data", n_images=9, shape=(64, 96), n_test=1)
    out = tmp_path / "report"
    _png(out / "stale.png")
    build_report("x", data_dir=root, out_dir=out, output_dir=tmp_path / "output",
                 ablation=None, n_samples=0)
    assert not (out / "stale.png").exists()
    assert (out / "cell_types.png").is_file()


def test_data_statistics_counts_rows_and_areas(tmp_path: Path) -> None:
    table = pd.DataFrame({
        "id": ["a", "a", "b"], "cell_type": ["cort", "cort", "astro"],
        "annotation": ["1 3 10 2", "20 4", "5 10"]})
    per_image, per_type = data_statistics(table)
    assert per_image.set_index("id")["cells"].to_dict() == {"a": 2, "b": 1}
    by_type = per_type.set_index("cell type")
    assert by_type.loc["cort", "cells"] == 2
    assert by_type.loc["cort", "median cell area px"] == pytest.approx(4.5)  # areas 5 and 4
    assert by_type.loc["astro", "median cell area px"] == 10


def test_default_data_dir_comes_from_saved_config(tmp_path: Path) -> None:
    exp = _fake_experiment(tmp_path / "output", "e", tmp_path / "somewhere")
    assert default_data_dir(exp) == tmp_path / "somewhere"


def test_cli_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cellseg.commands import report as report_cli

    root = make_tiny_root(tmp_path / "data", n_images=9, shape=(64, 96), n_test=1)
    rc = report_cli.main(["--exp", "cli", "--data-dir", str(root), "--output-dir",
                          str(tmp_path / "output"), "--ablation", str(tmp_path / "none.md")])
    assert rc == 0
    assert (tmp_path / "output" / "cli" / "report" / REPORT_FILE).is_file()
    assert "skipped:" in capsys.readouterr().out
