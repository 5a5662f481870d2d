"""Bad input, kills and re-runs against the data-writing tools (issue 19): segment.py,
convert_coco.py, pseudo_label.py, export.py and the messages of train / infer.

The table (:data:`CASES`) holds :mod:`test_bad_input`'s promise: exit status 2, exactly one
``error:`` line at the start of a line naming what is at fault, no traceback, and nothing
under the case's folder written, changed or removed. The kill cases run the tool as a
subprocess and stop it with SIGKILL / SIGINT at a point the test chooses
(:func:`cellseg.fileio.pause_point`, honoured only when ``$CELLSEG_TEST_PAUSE_AT`` is set);
a re-run with the same command must then end with the outputs of an uninterrupted run.
One stand-in experiment (:func:`test_segment.make_experiment`, no training) serves all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from test_bad_input import Case, Workspace, check, run_main, snapshot
from test_segment import make_experiment

from cellseg import fileio

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def exp(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The stand-in experiment, three small images, a converted data root and its COCO."""
    root = tmp_path_factory.mktemp("tools")
    cfg = make_experiment(root)
    data = root / "data"  # make_experiment's tiny data root (9 images)
    images = root / "images"
    images.mkdir()
    ids = sorted(p.stem for p in (data / "train").glob("*.png"))[:3]
    for k, image_id in enumerate(ids):
        shutil.copy(data / "train" / f"{image_id}.png", images / f"{'abc'[k]}.png")
    coco = root / "coco.json"
    from cellseg.data.coco import root_to_coco, write_coco

    write_coco(root_to_coco(data, ids=ids), coco)
    return {"root": root, "config": cfg, "data": data, "images": images, "coco": coco,
            "exp_dir": root / "output" / "blobs"}


@pytest.fixture
def ws(exp: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """``work/`` with a copy of the images (``imgs``), a finished data root (``data``: what
    an --overwrite must not lose), a file where a folder is expected, and ``outside/``."""
    w = Workspace(tmp_path)
    w.work.mkdir()
    shutil.copytree(exp["images"], w.work / "imgs")
    shutil.copytree(exp["data"], w.data)
    w.out.mkdir()
    w.file.write_text("not a folder\n")
    w.outside.mkdir()
    (w.outside / "keep.txt").write_text("sentinel\n")
    monkeypatch.chdir(w.work)
    return w


def seg_args(exp: dict, *args: str) -> list[str]:
    return [*args, "--config", str(exp["config"]), "--no-progress"]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------ edits
def nothing(w: Workspace) -> None:
    pass


def coco_edit(fn):
    """Write ``work/coco.json``: the fixture's COCO with ``fn(doc)`` applied."""
    def edit(w: Workspace) -> None:
        doc = json.loads(Path(os.environ["_TOOLS_COCO"]).read_text())
        fn(doc)
        (w.work / "coco.json").write_text(json.dumps(doc))
    return edit


def dup_file_name(doc: dict) -> None:
    doc["images"][1]["file_name"] = doc["images"][0]["file_name"]


def unknown_category(doc: dict) -> None:
    doc["annotations"][0]["category_id"] = 99


def corrupt_image(w: Workspace) -> None:
    """A valid PNG header with a truncated body (sizes check, decoding fails)."""
    png = sorted((w.work / "imgs").glob("*.png"))[1]
    truncate(png, 0.4)


def read_only_parent(w: Workspace) -> None:
    ro = w.work / "ro"
    ro.mkdir()
    ro.chmod(0o555)


def json_input(w: Workspace) -> None:
    (w.work / "imgs" / "notes.json").write_text("{}\n")


def replaced_fold(w: Workspace) -> None:
    """A killed train.py --overwrite: the finished model only in fold0.replaced/."""
    exp_dir = w.work / "exp" / "blobs"
    shutil.copytree(Path(os.environ["_TOOLS_EXP"]), exp_dir)
    (exp_dir / "fold0").rename(exp_dir / "fold0.replaced")


def truncated_model(w: Workspace) -> None:
    exp_dir = w.work / "exp" / "blobs"
    shutil.copytree(Path(os.environ["_TOOLS_EXP"]), exp_dir)
    truncate(exp_dir / "fold0" / "best.keras", 0.5)


SEG = ["{work}/imgs"]
EXP_HERE = ["--set", "output_dir={work}/exp"]
COCO_IN = ["--images", "{work}/imgs", "--annotations", "{work}/coco.json",
           "--cell-type-from-category"]

CASES: dict[str, list[Case]] = {
    "segment": [
        Case("out_is_file", nothing, [*SEG, "--out", "{file}"], ["--out", "a_file.txt",
                                                                  "is a file"]),
        Case("out_under_file", nothing, [*SEG, "--out", "{file}/sub/deeper"],
             ["--out", "a_file.txt", "expected a folder"]),
        Case("out_read_only", read_only_parent, [*SEG, "--out", "{work}/ro/seg"],
             ["--out", "ro/seg", "not writable"],
             marks=(pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere"),)),
        Case("out_equals_input", nothing, [*SEG, "--out", "{work}/imgs"],
             ["--out", "imgs", "holds the input image", "a.png"]),
        Case("out_inside_recursive_input", nothing,
             [*SEG, "--recursive", "--out", "{work}/imgs/seg"],
             ["--out", "imgs/seg", "inside the input folder", "--recursive"]),
        Case("scale_inf", nothing, [*SEG, "--out", "{out}/s", "--scale", "inf"],
             ["--scale", "inf", "outside"]),
        Case("scale_1e9", nothing, [*SEG, "--out", "{out}/s", "--scale", "1e9"],
             ["--scale", "1e+09", "outside"]),
        Case("scale_1e-9", nothing, [*SEG, "--out", "{out}/s", "--scale", "1e-9"],
             ["--scale", "1e-09", "outside"]),
        Case("scale_nan", nothing, [*SEG, "--out", "{out}/s", "--scale", "nan"],
             ["--scale", "nan"]),
        Case("cell_diameter_tiny", nothing, [*SEG, "--out", "{out}/s", "--cell-diameter",
                                             "1e-300", "--reference-diameter", "10"],
             ["--cell-diameter", "outside"]),
        Case("cell_diameter_huge_scale", nothing, [*SEG, "--out", "{out}/s", "--cell-diameter",
                                                   "0.001"], ["--cell-diameter", "outside"]),
        *[Case(f"reference_diameter_{v}", nothing,
               [*SEG, "--out", "{out}/s", "--cell-diameter", "20", "--reference-diameter", v],
               ["--reference-diameter", "> 0"]) for v in ("0", "-5", "nan", "inf")],
        Case("json_input", json_input, ["{work}/imgs/notes.json", "--out", "{out}/s"],
             ["notes.json", "unsupported file type", "'.json'"]),
        Case("fold_only_in_replaced", replaced_fold, [*SEG, "--out", "{out}/s", *EXP_HERE],
             ["fold0.replaced", "rename"]),
        Case("fold_only_in_replaced_folds", replaced_fold,
             [*SEG, "--out", "{out}/s", "--folds", "0", *EXP_HERE],
             ["fold0", "no trained model", "fold0.replaced"]),
        Case("truncated_model", truncated_model, [*SEG, "--out", "{out}/s", *EXP_HERE],
             ["best.keras", "exists but is not a loadable Keras model", "truncated"]),
    ],
    "convert_coco": [
        Case("overwrite_corrupt_image_keeps_root", corrupt_image,
             ["--images", "{work}/imgs", "--annotations", "{work}/coco.json", "--out", "{data}",
              "--cell-type", "cort", "--overwrite"], ["b.png", "cannot read"]),
        Case("corrupt_image_new_out", corrupt_image,
             ["--images", "{work}/imgs", "--annotations", "{work}/coco.json", "--out",
              "{out}/root", "--cell-type", "cort"], ["b.png", "cannot read"]),
        Case("duplicate_file_name", coco_edit(dup_file_name), [*COCO_IN, "--out", "{out}/r"],
             ["coco.json", "image ids", "both name file", "one image entry per file"]),
        Case("unknown_category_id", coco_edit(unknown_category), [*COCO_IN, "--out", "{out}/r"],
             ["coco.json", "category_id 99", "not in 'categories'"]),
        Case("to_coco_onto_folder", nothing,
             ["--to-coco", "{data}", "--annotations", "{out}", "--overwrite"],
             ["--annotations", "is a folder", "json"]),
        Case("out_under_file", nothing, [*COCO_IN, "--out", "{file}/root"],
             ["a_file.txt", "expected a folder"]),
    ],
    "pseudo_label": [
        Case("out_not_empty", nothing, ["--config", "_CFG_", "--images", "{work}/imgs",
                                        "--out", "{data}"], ["{data}", "not empty",
                                                             "--overwrite"]),
        Case("out_under_file", nothing, ["--config", "_CFG_", "--images", "{work}/imgs",
                                         "--out", "{file}/root"],
             ["a_file.txt", "expected a folder"]),
    ],
    "export": [
        Case("out_under_file", nothing, ["--config", "_CFG_", "--out", "{file}/x"],
             ["--out", "a_file.txt", "expected a folder"]),
    ],
}


def _prepare(module: str, case: Case, exp: dict, w: Workspace, monkeypatch) -> Case:
    monkeypatch.setenv("_TOOLS_COCO", str(exp["coco"]))
    monkeypatch.setenv("_TOOLS_EXP", str(exp["exp_dir"]))
    if module == "convert_coco":
        # The fixture's COCO names <id>.png; the workspace images are a/b/c.png.
        doc = json.loads(exp["coco"].read_text())
        for entry, name in zip(doc["images"], ("a.png", "b.png", "c.png")):
            entry["file_name"] = name
        (w.work / "coco.json").write_text(json.dumps(doc))
        monkeypatch.setenv("_TOOLS_COCO", str(w.work / "coco.json"))
    args = [a.replace("_CFG_", str(exp["config"])).replace("_COCO_", str(exp["coco"]))
            for a in case.args]
    if module == "segment":
        args = seg_args(exp, *args)
    elif module == "convert_coco":
        args = [*args, "--no-progress"]
    return Case(case.id, case.edit, args, case.expect, case.marks)


@pytest.mark.parametrize("module", list(CASES))
def test_table_ids_unique(module: str) -> None:
    ids = [c.id for c in CASES[module]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", [c.param() for c in CASES["segment"]])
def test_segment(case: Case, exp, ws, capsys, monkeypatch) -> None:
    check("segment", _prepare("segment", case, exp, ws, monkeypatch), ws, capsys)


@pytest.mark.parametrize("case", [c.param() for c in CASES["convert_coco"]])
def test_convert_coco(case: Case, exp, ws, capsys, monkeypatch) -> None:
    check("convert_coco", _prepare("convert_coco", case, exp, ws, monkeypatch), ws, capsys)


@pytest.mark.parametrize("case", [c.param() for c in CASES["pseudo_label"]])
def test_pseudo_label(case: Case, exp, ws, capsys, monkeypatch) -> None:
    check("pseudo_label", _prepare("pseudo_label", case, exp, ws, monkeypatch), ws, capsys)


@pytest.mark.parametrize("case", [c.param() for c in CASES["export"]])
def test_export(case: Case, exp, ws, capsys, monkeypatch) -> None:
    check("export", _prepare("export", case, exp, ws, monkeypatch), ws, capsys)
