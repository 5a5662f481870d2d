"""Bad input against every CLI: the README's promise, checked case by case.

Every case must end with exit status 2, exactly one ``error:`` line naming the file, row or
field at fault, no traceback, no NumPy repr, and nothing written or changed anywhere in the
case's folder (a sentinel PNG outside the data root included). Cases fail before any training,
so the CLIs run in this process (``main(argv)``; one TensorFlow import for all train.py cases
instead of one per case); :func:`test_real_exit_status` runs two cases as subprocesses.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from tiny_data import make_tiny_root

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "default.yaml")
TRAVERSAL = "../../../outside/x"  # from <data>/train/ or <data>/.cache/ to <case>/outside/
ROW = 3  # the 0-based train.csv row a case breaks: line 5 in an editor


# ------------------------------------------------------------------------------ workspace
@pytest.fixture(scope="module")
def base_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny data root per module; each case works on a copy."""
    return make_tiny_root(tmp_path_factory.mktemp("bad_input") / "root")


@dataclass
class Workspace:
    """``case/work`` is the current folder; ``case/outside`` holds what must stay untouched."""

    top: Path
    work: Path = field(init=False)
    data: Path = field(init=False)
    out: Path = field(init=False)
    file: Path = field(init=False)
    outside: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work = self.top / "work"
        self.data = self.work / "data"
        self.out = self.work / "out"
        self.file = self.work / "a_file.txt"
        self.outside = self.top / "outside"

    def fmt(self, arg: str) -> str:
        return arg.format(data=self.data, out=self.out, file=self.file, work=self.work,
                          outside=self.outside, cfg=CONFIG)

    def edit_csv(self, name: str, fn: Callable[[pd.DataFrame], None]) -> None:
        path = self.data / name
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        fn(df)
        df.to_csv(path, index=False)

    def first_id(self, name: str = "train.csv") -> str:
        return str(pd.read_csv(self.data / name, dtype=str)["id"].iloc[ROW])


@pytest.fixture
def ws(base_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    w = Workspace(tmp_path)
    shutil.copytree(base_root, w.data)
    w.out.mkdir()
    w.file.write_text("not a folder\n")
    w.outside.mkdir()
    # A valid image of the tiny root's size, where a hostile id would lead a reader or writer.
    cv2.imwrite(str(w.outside / "x.png"), np.full((64, 96), 99, np.uint8))
    (w.outside / "keep.txt").write_text("sentinel\n")
    monkeypatch.chdir(w.work)
    return w


def snapshot(top: Path) -> dict[str, str]:
    """Every file (content hash) and folder under ``top``."""
    out = {}
    for p in sorted(top.rglob("*")):
        rel = str(p.relative_to(top))
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------ edits
def rle_at_row(text: str) -> Callable[[Workspace], None]:
    def edit(w: Workspace) -> None:
        w.edit_csv("train.csv", lambda df: df.__setitem__(
            "annotation", df["annotation"].where(df.index != ROW, text)))
    return edit


def truth_rle_at_row(text: str) -> Callable[[Workspace], None]:
    def edit(w: Workspace) -> None:
        w.edit_csv("test_truth.csv", lambda df: df.__setitem__(
            "annotation", df["annotation"].where(df.index != ROW, text)))
    return edit


def id_everywhere(new: str) -> Callable[[Workspace], None]:
    """Rename the image of train.csv row ROW (and its folds.csv row) to ``new``."""
    def edit(w: Workspace) -> None:
        old = w.first_id()
        for name in ("train.csv", "folds.csv"):
            w.edit_csv(name, lambda df: df.__setitem__("id", df["id"].replace(old, new)))
    return edit


def truth_id(new: str) -> Callable[[Workspace], None]:
    def edit(w: Workspace) -> None:
        old = pd.read_csv(w.data / "test_truth.csv", dtype=str)["id"].iloc[0]
        for name in ("test_truth.csv", "sample_submission.csv"):
            w.edit_csv(name, lambda df: df.__setitem__("id", df["id"].replace(old, new)))
    return edit


def write(name: str, text: str) -> Callable[[Workspace], None]:
    def edit(w: Workspace) -> None:
        (w.data / name).write_text(text)
    return edit


def header_only(name: str) -> Callable[[Workspace], None]:
    def edit(w: Workspace) -> None:
        path = w.data / name
        path.write_text(path.read_text().splitlines()[0] + "\n")
    return edit


def fold_value(value: str) -> Callable[[Workspace], None]:
    def edit(w: Workspace) -> None:
        w.edit_csv("folds.csv", lambda df: df.__setitem__(
            "fold", df["fold"].where(df.index != ROW, value)))
    return edit


def width_value(value: str) -> Callable[[Workspace], None]:
    def edit(w: Workspace) -> None:
        w.edit_csv("train.csv", lambda df: df.__setitem__(
            "width", df["width"].where(df.index != ROW, value)))
    return edit


def nothing(w: Workspace) -> None:
    pass


# Malformed RLE strings of item 11, on a 96 x 64 image (6144 pixels).
BAD_RLE = {
    "odd_tokens": ("1 2 3", "odd number of tokens"),
    "non_numeric": ("1 x", "not an integer"),
    "float": ("1.5 2", "not an integer"),
    "zero_length": ("5 0", "length 0 < 1"),
    "overlap": ("1 5 3 2", "overlaps"),
    "past_end": ("6140 10", "past the image end"),
    "past_int64": ("99999999999999999999 1", "too large"),
    "wraps_int64": ("9223372036854775000 10000", "past the image end"),
}


@dataclass
class Case:
    id: str
    edit: Callable[[Workspace], None]
    args: list[str]
    expect: list[str]  # substrings of the error line ({row_id} = the id of train.csv row ROW)
    marks: tuple = ()

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


def rle_cases(args: list[str], edit_of=rle_at_row, csv: str = "train.csv") -> list[Case]:
    return [Case(f"rle_{name}", edit_of(text), args, [csv, "row 5", why])
            for name, (text, why) in BAD_RLE.items()]


TRAIN = ["--fold", "0", "--config", "{cfg}", "--data-dir", "{data}", "--exp", "bi"]
TUNE = ["--config", "{cfg}", "--data-dir", "{data}", "--exp", "bi", "--no-plots",
        "--n-trials", "1"]
TUNE_CLASSICAL = [*TUNE, "--method", "classical"]
FOLDS = ["--data-dir", "{data}", "--n-folds", "3"]  # the tiny root has 3 samples per type
EVALUATE = ["--submission", "{data}/sample_submission.csv", "--truth", "{data}/test_truth.csv",
            "--out", "{out}/eval", "--images", "{data}/test"]

CASES: dict[str, list[Case]] = {
    "train": [
        Case("id_traversal", id_everywhere(TRAVERSAL), TRAIN,
             ["train.csv", "row", TRAVERSAL, "not a safe file name"]),
        Case("id_absolute", id_everywhere("/tmp/x"), TRAIN, ["train.csv", "row", "/tmp/x"]),
        *rle_cases(TRAIN),
        Case("empty_train_csv", write("train.csv", ""), TRAIN, ["train.csv", "empty file"]),
        Case("header_only_train_csv", header_only("train.csv"), TRAIN,
             ["train.csv", "no data rows"]),
        Case("width_float", width_value("192.5"), TRAIN, ["train.csv", "row 5", "192.5"]),
        Case("empty_folds_csv", write("folds.csv", ""), TRAIN, ["folds.csv", "empty file"]),
        Case("fold_not_integer", fold_value("x"), TRAIN, ["folds.csv", "row 5", "fold", "'x'"]),
        Case("fold_float", fold_value("1.5"), TRAIN, ["folds.csv", "row 5", "1.5"]),
        Case("folds_id_traversal", lambda w: w.edit_csv("folds.csv", lambda df: df.__setitem__(
            "id", df["id"].where(df.index != ROW, TRAVERSAL))), TRAIN,
            ["folds.csv", "row 5", TRAVERSAL]),
        Case("fold_not_in_folds_csv", nothing, [*TRAIN[:1], "7", *TRAIN[2:]],
             ["fold 7", "folds.csv", "[0, 1, 2]"]),
        Case("exp_traversal", nothing, [*TRAIN, "--exp", "../../outside"],
             ["name", "../../outside", "safe folder name"]),
        *[Case(f"config_{key}", nothing, [*TRAIN, "--set", f"{key}={value}"], [key])
          for key, value in (("train.epochs", -1), ("train.steps_per_epoch", 0),
                             ("train.batch_size", 0), ("augment.crop_size", 0),
                             ("train.learning_rate", -1))],
    ],
    "tune": [
        Case("id_traversal", id_everywhere(TRAVERSAL), TUNE, ["train.csv", "row", TRAVERSAL]),
        *rle_cases(TUNE),
        Case("empty_train_csv", write("train.csv", ""), TUNE, ["train.csv", "empty file"]),
        Case("empty_folds_csv", write("folds.csv", ""), TUNE_CLASSICAL,
             ["folds.csv", "empty file"]),
        Case("fold_not_integer", fold_value("x"), TUNE_CLASSICAL, ["folds.csv", "row 5"]),
    ],
    "evaluate": [
        Case("id_traversal", truth_id(TRAVERSAL), EVALUATE,
             ["test_truth.csv", "row 2", TRAVERSAL]),
        *rle_cases(EVALUATE, truth_rle_at_row, "test_truth.csv"),
        Case("empty_truth", write("test_truth.csv", ""), EVALUATE,
             ["test_truth.csv", "empty file"]),
        Case("out_is_file", nothing, [*EVALUATE[:-4], "--out", "{file}"],
             ["a_file.txt", "is a file", "expected a folder"]),
    ],
    "make_folds": [
        Case("empty_train_csv", write("train.csv", ""), FOLDS,
             ["train.csv", "empty file"]),
        Case("header_only_train_csv", header_only("train.csv"), FOLDS,
             ["train.csv", "no data rows", "one row per annotated cell"]),
        Case("out_is_folder", nothing, [*FOLDS, "--out", "{out}"],
             ["--out", "is a folder"]),
        Case("id_traversal", id_everywhere(TRAVERSAL), FOLDS,
             ["train.csv", "row", TRAVERSAL]),
        Case("rle_past_int64", rle_at_row("99999999999999999999 1"), FOLDS,
             ["train.csv", "row 5", "too large"]),
        Case("n_folds_1", nothing, ["--data-dir", "{data}", "--n-folds", "1"], ["--n-folds"]),
    ],
    "make_synthetic": [
        Case("huge_image", nothing, ["--out", "{work}/syn/root", "--height", "100000",
                                     "--width", "100000", "--n-train", "1", "--n-test", "0"],
             ["100000x100000", "too large"]),
        Case("count_scale_negative", nothing, ["--out", "{work}/syn/root", "--count-scale",
                                               "-1", "--n-train", "1", "--n-test", "0"],
             ["--count-scale", "> 0"]),
        Case("scale_zero", nothing, ["--out", "{work}/syn/root", "--scale", "0",
                                     "--n-train", "1", "--n-test", "0"], ["--scale", "> 0"]),
        Case("no_cell_fits", nothing, ["--out", "{work}/syn/root", "--scale", "60", "--height",
                                       "32", "--width", "32", "--n-train", "1", "--n-test", "0"],
             ["could not place"]),
        Case("out_is_file", nothing, ["--out", "{file}", "--n-train", "1", "--n-test", "0"],
             ["a_file.txt", "not a directory"]),
    ],
    "report": [
        Case("out_is_file", nothing, ["--exp", "bi", "--data-dir", "{data}", "--out", "{file}"],
             ["--out", "a_file.txt", "is a file"]),
        Case("exp_traversal", nothing, ["--exp", "../../outside", "--data-dir", "{data}"],
             ["--exp", "../../outside"]),
    ],
    "convert_coco": [
        Case("to_coco_id_traversal", id_everywhere(TRAVERSAL),
             ["--to-coco", "{data}", "--annotations", "{out}/coco.json"],
             ["train.csv", "row", TRAVERSAL]),
        Case("to_coco_rle_wraps", rle_at_row("9223372036854775000 10000"),
             ["--to-coco", "{data}", "--annotations", "{out}/coco.json"],
             ["train.csv", "row 5", "past the image end"]),
    ],
    "package": [
        Case("no_trained_model", nothing, ["--exp", "nope", "--config", "{cfg}"],
             ["no trained model", "nope"]),
    ],
    "export": [
        Case("out_is_file", nothing, ["--exp", "nope", "--config", "{cfg}", "--out", "{file}"],
             ["--out", "a_file.txt", "not a folder"]),
    ],
    "pseudo_label": [
        Case("no_trained_model", nothing,
             ["--exp", "nope", "--images", "{data}/test", "--out", "{out}/pl"],
             ["no trained model", "nope"]),
    ],
    "infer": [
        Case("save_probs_is_file", nothing,
             ["--config", "{cfg}", "--data-dir", "{data}", "--exp", "bi", "--out",
              "{out}/submission.csv", "--save-probs", "{file}"],
             ["--save-probs", "a_file.txt", "folder"]),
    ],
}


def run_main(module: str, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``module.main(argv)`` as ``python src/<module>.py`` would run it: (exit status, stderr);
    an uncaught exception becomes its traceback on stderr and status 1, as Python prints it."""
    mod = importlib.import_module(module)
    try:
        rc = mod.main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - exactly what the promise forbids
        sys.stderr.write(traceback.format_exc())
        rc = 1
    _, err = capsys.readouterr()
    return rc, err


def check(module: str, case: Case, w: Workspace, capsys: pytest.CaptureFixture) -> None:
    case.edit(w)
    before = snapshot(w.top)
    rc, err = run_main(module, [w.fmt(a) for a in case.args], capsys)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1, f"exit {rc}, stderr:\n{err}"
    line = errors[0]
    for text in case.expect:
        assert w.fmt(text) in line, f"{text!r} not in {line!r}"
    assert "np.float64(" not in err and "np.int64(" not in err, line
    assert snapshot(w.top) == before, "files were written, changed or removed"


def _params(module: str):
    return [c.param() for c in CASES[module]]


@pytest.mark.parametrize("case", _params("train"))
def test_train(case: Case, ws: Workspace, capsys) -> None:
    check("train", case, ws, capsys)


@pytest.mark.parametrize("case", _params("tune"))
def test_tune(case: Case, ws: Workspace, capsys) -> None:
    check("tune", case, ws, capsys)


@pytest.mark.parametrize("case", _params("evaluate"))
def test_evaluate(case: Case, ws: Workspace, capsys) -> None:
    check("evaluate", case, ws, capsys)


@pytest.mark.parametrize("case", _params("make_folds"))
def test_make_folds(case: Case, ws: Workspace, capsys) -> None:
    check("make_folds", case, ws, capsys)


@pytest.mark.parametrize("case", _params("make_synthetic"))
def test_make_synthetic(case: Case, ws: Workspace, capsys) -> None:
    check("make_synthetic", case, ws, capsys)


@pytest.mark.parametrize("case", _params("report"))
def test_report(case: Case, ws: Workspace, capsys) -> None:
    check("report", case, ws, capsys)


@pytest.mark.parametrize("case", _params("convert_coco"))
def test_convert_coco(case: Case, ws: Workspace, capsys) -> None:
    check("convert_coco", case, ws, capsys)


@pytest.mark.parametrize("case", _params("package"))
def test_package(case: Case, ws: Workspace, capsys) -> None:
    check("package", case, ws, capsys)


@pytest.mark.parametrize("case", _params("export"))
def test_export(case: Case, ws: Workspace, capsys) -> None:
    check("export", case, ws, capsys)


@pytest.mark.parametrize("case", _params("pseudo_label"))
def test_pseudo_label(case: Case, ws: Workspace, capsys) -> None:
    check("pseudo_label", case, ws, capsys)


@pytest.mark.parametrize("case", _params("infer"))
def test_infer(case: Case, ws: Workspace, capsys) -> None:
    check("infer", case, ws, capsys)


@pytest.mark.parametrize("module, case_id", [("evaluate", "rle_past_int64"),
                                             ("make_folds", "out_is_folder")])
def test_real_exit_status(module: str, case_id: str, ws: Workspace) -> None:
    """The same promise through the interpreter: exit status and stderr of a real process."""
    case = next(c for c in CASES[module] if c.id == case_id)
    case.edit(ws)
    before = snapshot(ws.top)
    proc = subprocess.run([sys.executable, str(REPO / "src" / f"{module}.py"),
                           *[ws.fmt(a) for a in case.args]], capture_output=True, text=True,
                          cwd=ws.work, timeout=120, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, \
        proc.stderr
    assert snapshot(ws.top) == before


# ------------------------------------------------------------------------------ warnings
def test_duplicated_train_rows_warn_with_count_and_file(ws: Workspace) -> None:
    from cellseg.data.data_root import read_train_csv

    path = ws.data / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[ROW + 1], lines[ROW + 1], lines[2]]) + "\n")
    with pytest.warns(UserWarning, match=r"train\.csv: 3 duplicated row\(s\)"):
        table = read_train_csv(path)
    assert len(table) == len(lines) + 2  # kept: a warning, not an error


def test_folds_ids_missing_from_train_csv_warn(ws: Workspace) -> None:
    from cellseg.data.data_root import TrainData
    from cellseg.data.folds import load_folds

    ws.edit_csv("folds.csv", lambda df: df.loc.__setitem__(
        len(df), ["feedbeef0001", "0", "astro", "astro[x]_S9"]))
    data = TrainData(ws.data)
    with pytest.warns(UserWarning, match=r"folds\.csv: 1 id\(s\) not in train\.csv"):
        folds = load_folds(ws.data / "folds.csv", ids=data.ids)
    assert "feedbeef0001" in set(folds["id"])


def test_file_where_a_folder_is_expected_is_named(tmp_path: Path) -> None:
    """The late path (``infer --save-probs FILE`` writes its first .npz after the model ran):
    ``[Errno 17] File exists`` becomes a message naming the file and what was expected."""
    from cellseg import fileio

    blocker = tmp_path / "probs"
    blocker.write_text("a file\n")
    with pytest.raises(NotADirectoryError, match="probs: is a file; expected a folder"):
        fileio.save_npz(blocker / "abc.npz", probs=np.zeros(3))
    with pytest.raises(NotADirectoryError, match="has a file in its path"):
        fileio.require_folder(blocker / "sub" / "deeper", "--out")
    assert blocker.read_text() == "a file\n" and sorted(tmp_path.iterdir()) == [blocker]
    assert fileio.require_folder(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"
    assert not (tmp_path / "new").exists()  # checking creates nothing
