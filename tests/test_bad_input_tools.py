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


def _with_confidence_model(w: Workspace) -> Path:
    """The stand-in experiment with a per-cell confidence model named in postprocess.yaml."""
    from cellseg.postprocess.confidence import FEATURE_NAMES, CellConfidence

    exp_dir = w.work / "exp" / "blobs"
    shutil.copytree(Path(os.environ["_TOOLS_EXP"]), exp_dir)
    X = np.random.default_rng(0).uniform(0, 1, (200, len(FEATURE_NAMES)))
    model = CellConfidence().fit(X, (X[:, 0] > 0.5).astype(int)).save(
        exp_dir / "confidence-00000000000b")
    doc = fileio.read_yaml(exp_dir / "postprocess.yaml") \
        if (exp_dir / "postprocess.yaml").is_file() else {"method": "deep", "cell_types": {}}
    doc["confidence_model"] = model.name
    doc["cell_types"]["cort"] = {**doc["cell_types"].get("cort", {"params": {}}),
                                 "confidence_cutoff": 0.3}
    fileio.write_yaml(exp_dir / "postprocess.yaml", doc)
    return model


def altered_confidence_model(w: Workspace) -> None:
    model = _with_confidence_model(w)
    model.write_bytes(model.read_bytes() + b"\0")


def pickled_confidence_model(w: Workspace) -> None:
    """A pickle in place of the skops file, with a record that matches it."""
    import hashlib
    import pickle

    model = _with_confidence_model(w)
    payload = pickle.dumps({"not": "a skops file"})
    model.write_bytes(payload)
    record = json.loads(model.with_suffix(".json").read_text())
    record["sha256"] = hashlib.sha256(payload).hexdigest()
    model.with_suffix(".json").write_text(json.dumps(record))


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
        Case("altered_confidence_model", altered_confidence_model,
             [*SEG, "--out", "{out}/s", *EXP_HERE],
             ["confidence-00000000000b.skops", "sha256 differs", "infer.confidence=false"]),
        Case("pickled_confidence_model", pickled_confidence_model,
             [*SEG, "--out", "{out}/s", *EXP_HERE],
             ["confidence-00000000000b.skops", "not a skops model file"]),
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


# ------------------------------------------------------------------------------ behaviour
def _seg_outputs(out: Path) -> dict[str, object]:
    """Every output of a segment run, comparable across runs: bytes of the image files and
    tables, the records without their timing, the summary's rows without status and time."""
    got: dict[str, object] = {}
    for p in sorted(out.iterdir()):
        if p.name.endswith("_segment.json"):
            doc = json.loads(p.read_text())
            doc["result"].pop("seconds")
            got[p.name] = doc
        elif p.name.startswith("segment_summary"):
            table = pd.read_csv(p, keep_default_na=False).sort_values("name")
            got[p.name] = table[["name", "height", "width", "cell_type", "n_cells"]
                                ].to_dict("records")
        else:
            got[p.name] = fileio.file_digest(p)
    return got


def test_segment_reruns_redo_stale_images_and_keep_the_summary(exp, ws, capsys) -> None:
    """Another --scale redoes every image; the same command skips them and the summary keeps
    their cells; an output truncated by hand is redone; a non-UTF-8 file name is segmented
    (no segfault) and a corrupt image is one error line while the others are done."""
    imgs = ws.work / "imgs"
    odd = imgs / os.fsdecode(b"caf\xe9.png")  # Latin-1 name: surrogate escapes in Python
    shutil.copy(imgs / "a.png", odd)
    shutil.copy(imgs / "c.png", imgs / "d.png")
    truncate(imgs / "d.png", 0.4)
    out = ws.out / "seg"
    rc, err = run_main("segment", seg_args(exp, str(imgs), "--out", str(out)), capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "d.png" in errors[0], err
    assert "Traceback" not in err
    first = _seg_outputs(out)
    summary = pd.read_csv(out / "segment_summary.csv", keep_default_na=False)
    assert sorted(summary["status"]) == ["done", "done", "done", "done", "failed"]
    cells = dict(zip(summary["name"], summary["n_cells"]))
    assert (out / os.fsdecode(b"caf\xe9_labels.tif")).is_file()
    os.remove(imgs / "d.png")

    # Same command: everything skipped, the summary keeps the cells of the first run.
    rc, err = run_main("segment", seg_args(exp, str(imgs), "--out", str(out)), capsys)
    assert rc == 0, err
    summary = pd.read_csv(out / "segment_summary.csv", keep_default_na=False)
    assert set(summary.loc[summary["name"] != "d", "status"]) == {"skipped"}
    assert dict(zip(summary["name"], summary["n_cells"])) == cells  # d's failed row kept
    assert _seg_outputs(out) == first

    # Another scale: every image redone (and said so), records name the new scale.
    rc, err = run_main("segment", seg_args(exp, str(imgs), "--out", str(out), "--scale", "0.5"),
                       capsys)
    assert rc == 0 and "4 image(s) redone" in err and "made with other scale" in err, err
    assert json.loads((out / "a_segment.json").read_text())["settings"]["scale"] == 0.5

    # An output truncated by hand is redone, the others skipped.
    truncate(out / "b_cells.csv", 0.5)
    rc, err = run_main("segment", seg_args(exp, str(imgs), "--out", str(out), "--scale", "0.5"),
                       capsys)
    assert rc == 0 and "1 image(s) redone" in err and "b_cells.csv changed" in err, err
    summary = pd.read_csv(out / "segment_summary.csv", keep_default_na=False)
    assert dict(zip(summary["name"], summary["status"]))["b"] == "done"


def _paused(cmd: list[str], point: str, cwd: Path, tmp: Path, sig: int
            ) -> subprocess.CompletedProcess:
    """Run ``cmd``, wait until it reaches pause point ``point``, send ``sig``; its result."""
    flag = tmp / f"paused-{time.monotonic_ns()}"
    env = {**os.environ, fileio.PAUSE_ENV: point, fileio.PAUSE_FILE_ENV: str(flag)}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"never reached {point} (exit {proc.returncode}):\n{err[-3000:]}")
        time.sleep(0.1)
    if sig == signal.SIGKILL:  # a kill takes any helper process holding the pipes with it
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _tool(name: str) -> list[str]:
    return [sys.executable, str(REPO / "src" / f"{name}.py")]


def test_segment_killed_then_rerun_equals_uninterrupted_run(exp, ws, capsys) -> None:
    """SIGKILL while b's overlay is a temporary file: a's outputs are kept, the re-run
    removes the leftover and ends with the outputs of an uninterrupted run; SIGINT writes the
    summary of the finished images, names the others and exits 130."""
    imgs = ws.work / "imgs"
    ref = ws.out / "ref"
    rc, err = run_main("segment", seg_args(exp, str(imgs), "--out", str(ref)), capsys)
    assert rc == 0, err
    out = ws.out / "seg"
    cmd = [*_tool("segment"), *seg_args(exp, str(imgs), "--out", str(out))]
    killed = _paused(cmd, "write:b_overlay.png", ws.work, ws.top, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert (out / "a_segment.json").is_file() and not (out / "b_segment.json").exists()
    assert list(out.glob(".b_overlay.png.*.tmp.png")), sorted(os.listdir(out))
    # Ctrl-C at the same point of a re-run: summary written, 130, no traceback.
    stopped = _paused(cmd, "write:b_overlay.png", ws.work, ws.top, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and "interrupted: 2 image(s) not done" in \
        stopped.stderr, stopped.stderr
    summary = pd.read_csv(out / "segment_summary.csv", keep_default_na=False)
    assert dict(zip(summary["name"], summary["status"])) == {
        "a": "skipped", "b": "not done", "c": "not done"}
    assert not list(out.glob(".*.tmp*"))  # the first kill's leftover went at the start
    rc, err = run_main("segment", seg_args(exp, str(imgs), "--out", str(out)), capsys)
    assert rc == 0, err
    assert _seg_outputs(out) == _seg_outputs(ref)


def _root_files(root: Path) -> dict[str, object]:
    got: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            if p.name == "source.json":
                doc = json.loads(p.read_text())
                doc.pop("created")
                doc.pop("command")  # names --out, which differs from the reference run's
                got[rel] = doc
            else:
                got[rel] = fileio.file_digest(p)
    return got


def test_convert_coco_killed_then_rerun_equals_uninterrupted_run(exp, ws, capsys) -> None:
    """Killed while the new root is half built: --out is as before (absent, or the old root
    with --overwrite); the same command then writes what an uninterrupted run writes."""
    args = ["--images", str(exp["data"] / "train"), "--annotations", str(exp["coco"]),
            "--cell-type-from-category", "--no-progress"]
    ref = ws.out / "ref"
    assert run_main("convert_coco", [*args, "--out", str(ref)], capsys)[0] == 0
    out = ws.out / "root"
    cmd = [*_tool("convert_coco"), *args, "--out", str(out)]
    killed = _paused(cmd, "write:train.csv", ws.work, ws.top, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    assert run_main("convert_coco", [*args, "--out", str(out)], capsys)[0] == 0
    assert _root_files(out) == _root_files(ref)
    assert sorted(p.name for p in ws.out.iterdir()) == ["ref", "root"]  # no staging left
    # --overwrite of the finished data root killed in the middle of the swap: the old root
    # comes back at the next start, and the same command then replaces it.
    before = snapshot(ws.data)
    (ws.data / "notes.txt").write_text("mine\n")
    cmd = [*_tool("convert_coco"), *args, "--out", str(ws.data), "--overwrite"]
    killed = _paused(cmd, f"swapping:{ws.data.name}", ws.work, ws.top, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL and not ws.data.exists()
    fileio.recover_folder(ws.data)
    (ws.data / "notes.txt").unlink()
    assert snapshot(ws.data) == before
    (ws.data / "notes.txt").write_text("mine\n")
    assert run_main("convert_coco", [*args, "--out", str(ws.data), "--overwrite"],
                    capsys)[0] == 0
    assert (ws.data / "notes.txt").read_text() == "mine\n"  # the user's file is kept
    assert not (ws.data / "folds.csv").exists()  # the old root's own files are not
    want = _root_files(ref)
    got = _root_files(ws.data)
    assert {k: got[k] for k in want if k in got} == want
    assert set(got) - set(want) == {"notes.txt", "sample_submission.csv", "test_truth.csv"} \
        | {k for k in got if k.startswith("test/")}  # the user's files, carried over


def test_pseudo_label_corrupt_image_skipped_kill_and_rerun(exp, ws, capsys) -> None:
    """A corrupt image is skipped and listed (one error line, exit 2), the others written;
    a kill during an --overwrite keeps the old root, and the same command then writes what
    an uninterrupted run writes."""
    imgs = ws.work / "imgs"
    shutil.copy(imgs / "c.png", imgs / "d.png")
    truncate(imgs / "d.png", 0.4)
    args = ["--config", str(exp["config"]), "--images", str(imgs), "--min-confidence", "0",
            "--min-kept-fraction", "0", "--min-type-prob", "0", "--no-progress"]
    ref = ws.out / "ref"
    rc, err = run_main("pseudo_label", [*args, "--out", str(ref)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "d.png" in errors[0], err
    report = pd.read_csv(ref / "pseudo_images.csv", keep_default_na=False)
    status = dict(zip(report["file"], report["status"]))
    assert status["d.png"].startswith("skipped: unreadable") and status["a.png"] == "written"
    before = snapshot(ws.data)
    cmd = [*_tool("pseudo_label"), *args, "--out", str(ws.data), "--overwrite"]
    killed = _paused(cmd, "write:train.csv", ws.work, ws.top, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert snapshot(ws.data) == before
    rc, err = run_main("pseudo_label", [*args, "--out", str(ws.data), "--overwrite"], capsys)
    assert rc == 2, err
    want, got = _root_files(ref), _root_files(ws.data)
    assert {k: got[k] for k in want if k in got} == want
    assert not (ws.data / "folds.csv").exists()  # the old root's own files are replaced
    assert "sample_submission.csv" in got  # the user's files are kept
    assert not [p for p in ws.work.iterdir() if ".staging-" in p.name]


# ------------------------------------------------------------------------------ helpers
def test_replace_folder_never_loses_the_old_folder(tmp_path: Path) -> None:
    """A failing build leaves the old folder; a swap killed between its renames is undone
    by recover_folder; the user's files are carried over."""
    dest = tmp_path / "root"
    dest.mkdir()
    (dest / "train.csv").write_text("old\n")
    (dest / "mine.txt").write_text("mine\n")
    with pytest.raises(RuntimeError):
        with fileio.replace_folder(dest) as stage:
            (stage / "train.csv").write_text("new\n")
            raise RuntimeError("corrupt image")
    assert (dest / "train.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    # Killed between the renames: dest missing, the old one retired, a staging folder left.
    retired = tmp_path / ".root.retired-1234"
    dest.rename(retired)
    (tmp_path / ".root.staging-x").mkdir()
    fileio.recover_folder(dest)
    assert (dest / "train.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    with fileio.replace_folder(dest, carry=lambda n: n != "train.csv") as stage:
        (stage / "train.csv").write_text("new\n")
    assert (dest / "train.csv").read_text() == "new\n"
    assert (dest / "mine.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_error_line_starts_its_own_line_after_a_progress_bar(capsys) -> None:
    """train.py's error after Keras' bar (no newline yet): stdout's line is ended first."""
    from cellseg.cli import print_error

    print("12/34 [====>....]", end="")
    assert print_error(ValueError("bad"), end_stdout_line=True) == 2
    out, err = capsys.readouterr()
    assert out.endswith("\n") and err == "error: bad\n"
