"""Kaggle packaging and the offline kernel: package layout and metadata (checked against the
fields the Kaggle CLI requires), safe overwrite, clear errors, the wheel command line, and the
kernel run end to end with networking disabled, importing only the packaged code, giving the
same submission as ``src/infer.py``."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_data import make_tiny_root

from cellseg.config import ConfigError, load_config, save_config
from cellseg.deploy import kaggle, wheels
from cellseg.deploy.kaggle import PackagingError, build_package, verify_package
from cellseg.exceptions import InferenceError
from cellseg.infer.submission import read_submission, validate_submission
from cellseg.fileio import write_yaml

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "kernels" / "infer"
KERNEL = KERNEL_DIR / "infer_kernel.py"
pytestmark = pytest.mark.filterwarnings("ignore:.*placeholder user:UserWarning")

# --- What the Kaggle CLI requires (Kaggle API docs; kaggle_api_extended.py) ---------------
# docs/datasets_metadata.md, `kaggle datasets create`: title (6-50 characters), id
# "owner/slug" (slug 3-50 characters), licenses (exactly one entry; only "name" is read).
DATASET_REQUIRED = ("title", "id", "licenses")
DATASET_LICENSES = {
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0",
    "DbCL-1.0", "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL",
    "CC-BY-3.0", "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO",
    "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0",
    "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0"}
# docs/kernels_metadata.md: id (or id_no), title (new kernels; `kernels push` wants >= 5
# characters, and warns unless the slug of the title is the id's slug), code_file (relative
# to the metadata file), language (python | r | rmarkdown) and kernel_type (script |
# notebook) are required; the rest are optional. `kernels push` defaults enable_internet to
# TRUE when absent, so an offline kernel must say false.
KERNEL_REQUIRED = ("id", "title", "code_file", "language", "kernel_type")
KERNEL_FIELDS = set(KERNEL_REQUIRED) | {
    "id_no", "is_private", "enable_gpu", "enable_tpu", "enable_internet", "dataset_sources",
    "competition_sources", "kernel_sources", "model_sources", "docker_image_pinning_type",
    "keywords"}
KERNEL_LANGUAGES = {"python", "r", "rmarkdown"}
KERNEL_TYPES = {"script", "notebook"}
OWNER_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]*[a-z0-9]$")


def check_dataset_metadata_fields(meta: dict) -> None:
    missing = [k for k in DATASET_REQUIRED if k not in meta]
    assert not missing, f"dataset-metadata.json lacks {missing}"
    assert isinstance(meta["title"], str) and 6 <= len(meta["title"]) <= 50
    assert OWNER_SLUG.match(meta["id"]), meta["id"]
    assert 3 <= len(meta["id"].split("/")[1]) <= 50
    assert isinstance(meta["licenses"], list) and len(meta["licenses"]) == 1
    assert meta["licenses"][0]["name"] in DATASET_LICENSES


@functools.cache
def _tiny_model_bytes(k: int) -> bytes:
    """A real (untrained) tiny model file per fold: packaging load-checks every model."""
    from cellseg.config import ModelConfig
    from cellseg.model.network import build_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.keras"
        build_model(ModelConfig(widths=[4, 8]), name=f"fold{k}").save(path)
        return path.read_bytes()


@functools.cache
def _classifier_text(k: int) -> str:
    from cellseg.model.celltype import CellTypeClassifier

    rng = np.random.default_rng(k)
    clf = CellTypeClassifier.fit(rng.normal(size=(6, 4)), ["shsy5y", "astro", "cort"] * 2)
    with tempfile.TemporaryDirectory() as tmp:
        clf.save(Path(tmp) / "c.json")
        return (Path(tmp) / "c.json").read_text()


def fake_experiment(output: Path, name: str = "exp", folds=(0, 1), postprocess: bool = True,
                    finished: bool = True) -> Path:
    """A trained-looking experiment: tiny untrained models, classifiers, configs."""
    exp = output / name
    for k in folds:
        fold = exp / f"fold{k}"
        fold.mkdir(parents=True)
        (fold / "best.keras").write_bytes(_tiny_model_bytes(k))
        save_config(load_config(None, [f"name={name}", f"output_dir={output}"]),
                    fold / "config.yaml")
        if finished:
            (fold / "result.json").write_text("{}")
        (fold / "cell_type_classifier.json").write_text(_classifier_text(k))
    if postprocess:
        write_yaml(exp / "postprocess.yaml", {"method": "deep", "cell_types": {
            "cort": {"params": {"seed_threshold": 0.6}}}})
    return exp


def load_kernel_module():
    """The kernel script as a module (its main() runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("infer_kernel", KERNEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ metadata
def test_kernel_metadata_has_the_fields_kaggle_requires():
    meta = json.loads((KERNEL_DIR / "kernel-metadata.json").read_text())
    assert not [k for k in KERNEL_REQUIRED if k not in meta]
    assert set(meta) <= KERNEL_FIELDS, set(meta) - KERNEL_FIELDS
    assert OWNER_SLUG.match(meta["id"])
    assert len(meta["title"]) >= 5
    assert meta["id"].split("/")[1] == kaggle.slugify(meta["title"])
    assert (KERNEL_DIR / meta["code_file"]).is_file() and meta["code_file"] == "infer_kernel.py"
    assert meta["language"] in KERNEL_LANGUAGES and meta["language"] == "python"
    assert meta["kernel_type"] in KERNEL_TYPES and meta["kernel_type"] == "script"
    assert meta["is_private"] is True and meta["enable_gpu"] is True
    assert meta["enable_internet"] is False
    assert meta["competition_sources"] == ["sartorius-cell-instance-segmentation"]
    assert meta["dataset_sources"] and all(OWNER_SLUG.match(s) for s in meta["dataset_sources"])
    # The placeholder dataset is what package.py names the default experiment's dataset, and
    # kernels/README.md says how to replace the placeholder user.
    assert meta["dataset_sources"] == [kaggle.default_dataset_id("default",
                                                                    kaggle.PLACEHOLDER_USER)]
    assert kaggle.PLACEHOLDER_USER in (REPO / "kernels" / "README.md").read_text()


def test_dataset_metadata_checks_name_the_field():
    meta = kaggle.dataset_metadata("someone/cellseg-exp", "cellseg models exp")
    check_dataset_metadata_fields(meta)
    for bad, match in [({"title": "short"}, "title"), ({"id": "no-slash"}, "id"),
                       ({"id": "me/ab"}, "3 to 50"), ({"licenses": []}, "exactly one"),
                       ({"licenses": [{"name": "MIT"}]}, "license 'MIT'")]:
        with pytest.raises(PackagingError, match=match):
            kaggle.check_dataset_metadata({**meta, **bad}, where="x.json")
    with pytest.raises(PackagingError, match=r"missing field\(s\) \['licenses'\]"):
        kaggle.check_dataset_metadata({"title": "abcdef", "id": "a/bcd"})


# ------------------------------------------------------------------------------ building
def test_build_package_layout_manifest_and_verification(tmp_path):
    exp = fake_experiment(tmp_path / "output")
    code = tmp_path / "code" / "cellseg"
    shutil.copytree(REPO / "src" / "cellseg", code)
    (code / "__pycache__").mkdir(exist_ok=True)  # byte code must not be packaged
    (code / "__pycache__" / "rle.cpython-311.pyc").write_bytes(b"pyc")
    out = tmp_path / "kaggle_dataset" / "exp"
    summary = build_package(exp, out, configs=sorted((REPO / "configs").glob("*.yaml")),
                            code_dir=code, dataset_id="someone/cellseg-exp")
    assert summary.folds == [0, 1] and summary.has_postprocess and summary.n_wheels == 0
    assert (out / "cellseg" / "__init__.py").is_file()
    assert (out / "cellseg" / "infer" / "inference.py").read_bytes() == \
        (REPO / "src" / "cellseg" / "infer" / "inference.py").read_bytes()
    assert not list(out.rglob("__pycache__")) and not list(out.rglob("*.pyc"))
    assert (out / "configs" / "default.yaml").is_file()
    for k in (0, 1):
        fold = out / "models" / "exp" / f"fold{k}"
        assert sorted(p.name for p in fold.iterdir()) == [
            "best.keras", "cell_type_classifier.json", "config.yaml", "result.json"]
        assert (fold / "best.keras").read_bytes() == _tiny_model_bytes(k)
    assert (out / "models" / "exp" / "postprocess.yaml").is_file()
    meta = json.loads((out / "dataset-metadata.json").read_text())
    check_dataset_metadata_fields(meta)
    assert meta["id"] == "someone/cellseg-exp"
    assert leftovers(out.parent) == []

    manifest = verify_package(out)
    assert manifest["exp"] == "exp" and manifest["folds"] == [0, 1]
    assert "models/exp/fold1/best.keras" in manifest["files"]
    assert kaggle.find_experiment(out) == ("exp", out / "models" / "exp")
    cfg, exp_dir, saved = kaggle.resolve_packaged_config(out, overrides=["infer.batch_size=3"])
    assert exp_dir == out / "models" / "exp" and saved == exp_dir / "fold0" / "config.yaml"
    assert cfg.infer.batch_size == 3 and Path(cfg.output_dir) == out / "models"
    with pytest.raises(PackagingError, match=r"available: \['exp'\]"):
        kaggle.find_experiment(out, "other")

    packed = out / "models" / "exp" / "fold1" / "best.keras"
    packed.write_bytes(b"X" * packed.stat().st_size)  # same size, other content
    with pytest.raises(PackagingError, match=r"fold1/best.keras: sha256 differs"):
        verify_package(out)
    (out / "models" / "exp" / "fold1" / "best.keras").unlink()
    with pytest.raises(PackagingError, match=r"fold1/best.keras: listed in .* but missing"):
        verify_package(out)

    # Selected folds only; no tuned file -> a warning naming tune.py.
    exp2 = fake_experiment(tmp_path / "output", "exp2", folds=(0, 1, 2), postprocess=False)
    with pytest.warns(UserWarning, match=r"src/tune.py --exp exp2"):
        s2 = build_package(exp2, tmp_path / "p2", folds=[2, 0])
    assert s2.folds == [0, 2] and not s2.has_postprocess
    assert sorted(p.name for p in (tmp_path / "p2" / "models" / "exp2").iterdir()) == \
        ["fold0", "fold2"]
    assert json.loads((tmp_path / "p2" / "dataset-metadata.json").read_text())["id"] \
        .endswith("/cellseg-exp2")


def test_package_ships_the_confidence_model_and_refuses_an_altered_one(tmp_path):
    exp = fake_experiment(tmp_path / "output")
    model = _small_cell_filter().save(exp / "confidence-00000000000a")
    write_yaml(exp / "postprocess.yaml", {"method": "deep", "confidence_model": model.name,
                                          "cell_types": {"cort": {"params": {},
                                                                  "confidence_cutoff": 0.4}}})
    out = tmp_path / "pkg"
    build_package(exp, out)
    for suffix in (".skops", ".json"):
        shipped = out / "models" / "exp" / f"confidence-00000000000a{suffix}"
        assert shipped.read_bytes() == model.with_suffix(suffix).read_bytes()
    assert "models/exp/confidence-00000000000a.skops" in verify_package(out)["files"]
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"confidence-00000000000a.skops: .*sha256 differs"):
        build_package(exp, tmp_path / "pkg2")
    assert not (tmp_path / "pkg2").exists()


def test_refuses_to_overwrite_and_replaces_atomically(tmp_path):
    exp = fake_experiment(tmp_path / "output")
    out = tmp_path / "pkg" / "exp"
    build_package(exp, out, dataset_id="someone/cellseg-exp")
    before = (out / "cellseg-package.json").read_bytes()
    with pytest.raises(PackagingError, match=r"pkg/exp already exists; pass --overwrite"):
        build_package(exp, out, dataset_id="someone/cellseg-exp")
    assert (out / "cellseg-package.json").read_bytes() == before
    # A failure while building leaves the old package and no temporary folder.
    with pytest.raises(PackagingError, match=r"missing.yaml: config file not found"):
        build_package(exp, out, configs=[tmp_path / "missing.yaml"], overwrite=True,
                      dataset_id="someone/cellseg-exp")
    assert (out / "cellseg-package.json").read_bytes() == before
    assert leftovers(out.parent) == []
    # --overwrite replaces it.
    s = build_package(exp, out, folds=[1], dataset_id="someone/cellseg-exp", overwrite=True)
    assert s.folds == [1] and not (out / "models" / "exp" / "fold0").exists()
    assert leftovers(out.parent) == []
    # Never replaces a folder that is not a package, nor writes into the experiment.
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(PackagingError, match="not a package built by package.py"):
        build_package(exp, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep"
    with pytest.raises(PackagingError, match="inside the experiment"):
        build_package(exp, exp / "pkg")


def test_refuses_a_damaged_model_and_keeps_the_old_package(tmp_path):
    """A truncated best.keras is not shipped over a good package (issue 11 item 8)."""
    exp = fake_experiment(tmp_path / "output")
    out = tmp_path / "pkg" / "exp"
    build_package(exp, out, dataset_id="someone/cellseg-exp")
    before = (out / "cellseg-package.json").read_bytes()
    model = exp / "fold1" / "best.keras"
    model.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    with pytest.raises(InferenceError, match=r"fold1/best.keras: cannot load the model"):
        build_package(exp, out, overwrite=True, dataset_id="someone/cellseg-exp")
    assert (out / "cellseg-package.json").read_bytes() == before
    assert leftovers(out.parent) == []


def test_missing_experiment_or_fold_errors(tmp_path):
    with pytest.raises(InferenceError, match=r"no trained model.*python src/train.py --fold K "
                                             r"--exp nothing"):
        build_package(tmp_path / "output" / "nothing", tmp_path / "pkg")
    exp = fake_experiment(tmp_path / "output")
    with pytest.raises(InferenceError, match=r"fold3/best.keras not found.*--fold 3 --exp exp"):
        build_package(exp, tmp_path / "pkg", folds=[0, 3])
    (exp / "fold1" / "config.yaml").write_text("model: {widths: [4]}\n")
    with pytest.raises(ConfigError, match=r"fold1/config.yaml: model.widths"):
        build_package(exp, tmp_path / "pkg")
    (exp / "fold1" / "config.yaml").unlink()
    with pytest.raises(PackagingError, match=r"fold1/config.yaml not found.*--fold 1"):
        build_package(exp, tmp_path / "pkg")
    (exp / "postprocess.yaml").write_text("cell_types: {neuron: {params: {}}}\n")
    with pytest.raises(ValueError, match=r"postprocess.yaml: unknown cell type 'neuron'"):
        build_package(exp, tmp_path / "pkg", folds=[0])
    assert not (tmp_path / "pkg").exists() and leftovers(tmp_path) == []
    # The CLI: exit code 2 and the same message, no traceback.
    proc = subprocess.run([sys.executable, str(REPO / "src" / "package.py"), "--exp", "nope",
                           "--set", f"output_dir={tmp_path / 'output'}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "python src/train.py --fold K --exp nope" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ wheels
def test_wheel_command_lines(tmp_path):
    reqs = wheels.kernel_requirements(REPO / "requirements.txt")
    names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in reqs}
    assert {"keras", "numpy", "pyyaml", "scikit-image", "opencv-python-headless"} <= names
    assert not names & {"tensorflow-cpu", "tensorflow", "pytest", "hypothesis", "optuna"}
    cmd = wheels.wheel_download_command(tmp_path / "w", tmp_path / "r.txt", "3.11",
                                           python="py")
    assert cmd == ["py", "-m", "pip", "download", "--dest", str(tmp_path / "w"),
                   "--only-binary=:all:", "--progress-bar", "off", "--python-version", "3.11",
                   "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                   "-r", str(tmp_path / "r.txt")]
    with pytest.raises(PackagingError, match="3.11"):
        wheels.wheel_download_command(tmp_path, tmp_path / "r.txt", "eleven")

    # build_package runs exactly that command (recorded here, nothing downloaded).
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        (Path(cmd[cmd.index("--dest") + 1]) / "keras-3.15.0-py3-none-any.whl").write_bytes(b"w")

    exp = fake_experiment(tmp_path / "output")
    out = tmp_path / "pkg"
    s = build_package(exp, out, wheels=True, requirements=reqs, wheel_python="3.11",
                      run=fake_run, dataset_id="someone/cellseg-exp")
    assert s.n_wheels == 1 and len(calls) == 1
    tmp_wheels = Path(calls[0][calls[0].index("--dest") + 1])
    assert calls[0] == wheels.wheel_download_command(
        tmp_wheels, tmp_wheels / "requirements.txt", "3.11")
    assert tmp_wheels.parent.parent == out.parent  # built beside the destination
    assert (out / "wheels" / "requirements.txt").read_text().split() == reqs
    # The kernel installs from exactly these wheels, offline.
    kernel = load_kernel_module()
    assert kernel.pip_install_command(out, python="py") == \
        wheels.wheel_install_command(out / "wheels", python="py")
    assert "--no-index" in kernel.pip_install_command(out)
    assert kernel.pip_install_command(tmp_path) is None  # no wheels, no pip


# ------------------------------------------------------------------------------ kernel
def test_kernel_finds_the_package_or_rebuilds_it_from_archives(tmp_path):
    kernel = load_kernel_module()
    exp = fake_experiment(tmp_path / "output")
    pkg = tmp_path / "pkg"
    build_package(exp, pkg, dataset_id="someone/cellseg-exp")
    inputs = tmp_path / "input"
    (inputs / "sartorius-cell-instance-segmentation" / "test").mkdir(parents=True)
    with pytest.raises(kernel.KernelError, match=r"no packaged cellseg under .*src/package.py"):
        kernel.find_package_dir(inputs)
    shutil.copytree(pkg, inputs / "cellseg-exp")
    assert kernel.find_package_dir(inputs) == inputs / "cellseg-exp"
    assert kernel.find_data_dir(inputs) == inputs / "sartorius-cell-instance-segmentation"
    shutil.copytree(pkg, inputs / "cellseg-exp-v2")
    with pytest.raises(kernel.KernelError, match="several packages.*CELLSEG_PACKAGE_DIR"):
        kernel.find_package_dir(inputs)

    # Folders left as archives, as `kaggle datasets create --dir-mode zip` uploads them
    # (each a zip of the folder's contents named <folder>.zip).
    zipped = tmp_path / "zipped" / "cellseg-exp"
    zipped.mkdir(parents=True)
    for item in pkg.iterdir():
        if item.is_dir():
            shutil.make_archive(str(zipped / item.name), "zip", item)
        else:
            shutil.copy2(item, zipped / item.name)
    assert zipfile.is_zipfile(zipped / "cellseg.zip")
    found = kernel.find_package_dir(tmp_path / "zipped", scratch=tmp_path / "scratch")
    assert found == tmp_path / "scratch" and (found / "cellseg" / "__init__.py").is_file()
    assert verify_package(found)["exp"] == "exp"


NETGUARD = '''\
"""Test-only: no network for this process (and its children). Loaded via PYTHONPATH."""
import os
import socket
import sys
import traceback

_LOG = os.environ.get("NETGUARD_LOG")


def _blocked(*args, **kwargs):
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(repr(args) + "\\n" + "".join(traceback.format_stack()) + "\\n")
    raise OSError("network disabled by the test's sitecustomize (netguard)")


socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
print("[netguard] active: socket connect disabled", file=sys.stderr)
'''

PROBE = '''\
import socket
for attempt in (lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
                lambda: socket.socket().connect(("127.0.0.1", 9))):
    try:
        attempt()
        print("CONNECTED")
    except OSError as exc:
        print("BLOCKED" if "netguard" in str(exc) else f"OTHER {exc}")
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny two-fold experiment with random-weight Attention UNet++ (fold 0, custom layers,
    so the packaged code must register them) and a stock-layer stand-in (fold 1), a tuned
    postprocess.yaml, and a data root with three test images."""
    import keras
    from test_inference import TINY, save_model, threshold_model

    from cellseg.model.network import build_model

    root = tmp_path_factory.mktemp("pkg")
    data = make_tiny_root(root / "data", n_images=9, n_test=3)
    config = root / "pkgexp.yaml"
    config.write_text(json.dumps({
        "name": "pkgexp", "output_dir": str(root / "output"), "data": {"root": str(data)},
        "model": {"widths": [4, 8, 16]}, "augment": {"crop_size": 64},
        "infer": {"tta": ["identity", "hflip"], "batch_size": 2}}))
    cfg = load_config(config)
    exp = root / "output" / "pkgexp"
    keras.utils.set_random_seed(7)
    save_model(build_model(TINY, name="rand"), exp / "fold0", cfg)
    save_model(threshold_model(cell_type_index=0), exp / "fold1", cfg)
    # A per-cell confidence model that drops small cells (< 20 px) for shsy5y: the kernel
    # must ship it and apply it exactly as infer.py does.
    model = _small_cell_filter().save(exp / "confidence-000000000001")
    write_yaml(exp / "postprocess.yaml", {
        "method": "deep", "confidence_model": model.name, "cell_types": {
            "shsy5y": {"params": {"seed_threshold": 0.55, "mask_threshold": 0.35, "min_area": 8},
                       "confidence_cutoff": 0.5}}})
    return {"root": root, "data": data, "config": config, "exp": exp}


def _small_cell_filter():
    """A CellConfidence fitted on 'a cell is right when it has at least 20 px'."""
    from cellseg.postprocess.confidence import FEATURE_NAMES, CellConfidence

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (400, len(FEATURE_NAMES)))
    k = FEATURE_NAMES.index("area")
    X[:, k] = rng.uniform(0, 200, len(X))
    return CellConfidence(random_state=0).fit(X, (X[:, k] >= 20).astype(int))


@pytest.mark.slow
def test_offline_kernel_matches_infer_py(trained, tmp_path):
    """package.py -> fake /kaggle/input -> the kernel in a process with no network and no
    src/ on its path -> a valid submission.csv identical to src/infer.py's."""
    # 1. Package with the CLI (default --out: <output_dir>/kaggle_dataset/<exp>).
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "package.py"), "--config", str(trained["config"]),
         "--dataset-id", "tester/cellseg-pkgexp", "--title", "cellseg test package"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pkg = trained["root"] / "output" / "kaggle_dataset" / "pkgexp"
    assert "kaggle datasets create -p" in proc.stdout and str(pkg) in proc.stdout
    check_dataset_metadata_fields(json.loads((pkg / "dataset-metadata.json").read_text()))
    assert (pkg / "models" / "pkgexp" / "postprocess.yaml").is_file()
    for suffix in (".skops", ".json"):
        assert (pkg / "models" / "pkgexp" / f"confidence-000000000001{suffix}").is_file()

    # 2. A fake /kaggle tree: the dataset and the competition's test folder.
    kaggle = tmp_path / "kaggle"
    slug_dir = kaggle / "input" / "cellseg-pkgexp"
    shutil.copytree(pkg, slug_dir)
    comp = kaggle / "input" / "sartorius-cell-instance-segmentation"
    (comp / "test").mkdir(parents=True)
    for png in sorted((trained["data"] / "test").glob("*.png")):
        shutil.copy2(png, comp / "test" / png.name)
    shutil.copy2(trained["data"] / "sample_submission.csv", comp / "sample_submission.csv")
    (kaggle / "working").mkdir()

    # 3. No network: a sitecustomize on PYTHONPATH; prove it bites in a sibling process.
    guard = tmp_path / "netguard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETGUARD)
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("CELLSEG_")}
    env.update(PYTHONPATH=str(guard), PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2")
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                           env=env, timeout=60, cwd=tmp_path)
    assert probe.stdout.split() == ["BLOCKED", "BLOCKED"], probe.stdout + probe.stderr
    kernel_env = {**env, "NETGUARD_LOG": str(tmp_path / "net_attempts.log"),
                  "CELLSEG_INPUT_ROOT": str(kaggle / "input"),
                  "CELLSEG_WORKING": str(kaggle / "working")}

    # 4. The kernel and infer.py, side by side.
    local_csv = tmp_path / "local" / "submission.csv"
    kernel_proc = subprocess.Popen([sys.executable, str(KERNEL)], env=kernel_env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    infer_proc = subprocess.Popen(
        [sys.executable, str(REPO / "src" / "infer.py"), "--config", str(trained["config"]),
         "--data-dir", str(comp), "--out", str(local_csv), "--no-progress"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})  # no PyPI version check
    try:
        k_out, k_err = kernel_proc.communicate(timeout=300)
        i_out, i_err = infer_proc.communicate(timeout=300)
    finally:
        for proc in (kernel_proc, infer_proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert kernel_proc.returncode == 0, k_out + k_err
    assert infer_proc.returncode == 0, i_out + i_err

    assert "[netguard] active" in k_err  # the guard was loaded in the kernel process
    attempts = tmp_path / "net_attempts.log"  # and nothing even tried to connect
    assert not attempts.exists(), attempts.read_text()
    imported = re.search(r"cellseg \S+ imported from (\S+)", k_out)
    assert imported, k_out
    assert Path(imported.group(1)) == (slug_dir / "cellseg" / "__init__.py").resolve()
    assert f"package {slug_dir}" in k_out and "experiment '" in k_out

    kernel_csv = kaggle / "working" / "submission.csv"
    summary = validate_submission(kernel_csv, comp / "test")
    assert summary.n_images == 3
    kernel_df, local_df = read_submission(kernel_csv), read_submission(local_csv)
    assert (kernel_df["predicted"] != "").sum() > 0  # something to compare
    pd.testing.assert_frame_equal(kernel_df, local_df)
