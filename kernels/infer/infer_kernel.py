"""Offline Kaggle kernel: predict the competition's test images with a packaged experiment.

A thin caller. It finds the dataset built by ``python src/package.py`` under
``/kaggle/input/<dataset>/`` (the folder holding ``cellseg/__init__.py``), installs the
package's wheels offline if it has any, puts the packaged ``cellseg`` first on ``sys.path`` and
runs the same ``cellseg.infer.inference.run_inference`` as ``src/infer.py`` on
``/kaggle/input/sartorius-cell-instance-segmentation/test/``, writing
``/kaggle/working/submission.csv``. No inference logic lives here, so a local
``python src/infer.py`` with the same models gives the same rows.

Environment variables (all optional; they let the kernel run outside Kaggle too):
    CELLSEG_INPUT_ROOT   where attached inputs are mounted (default /kaggle/input)
    CELLSEG_WORKING      output folder (default /kaggle/working); submission.csv goes there
    CELLSEG_DATA_DIR     competition data root holding test/*.png
                         (default <input root>/sartorius-cell-instance-segmentation)
    CELLSEG_PACKAGE_DIR  the package folder (default: searched under the input root)
    CELLSEG_EXP          experiment under <package>/models/ (default: the packaged one)
    CELLSEG_FOLDS        folds to ensemble, e.g. "0,1" (default: every packaged fold)
    CELLSEG_CELL_TYPE    force one cell type for every image (shsy5y, astro, cort)
    CELLSEG_CONFIG       a config in <package>/configs/ (or a path) whose data/infer sections
                         replace the saved ones, as infer.py's --config
    CELLSEG_SET          ';'-separated KEY=VALUE overrides, e.g. "infer.batch_size=8"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# albumentations (imported with the training module that registers the custom layers) asks
# PyPI for a newer version on import: a 2 s timeout and a warning with the internet off.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

COMPETITION = "sartorius-cell-instance-segmentation"
CODE_DIR = "cellseg"
WHEELS_DIR = "wheels"
WHEEL_REQUIREMENTS = "requirements.txt"
SEARCH_DEPTH = 3  # /kaggle/input/<slug>/ is depth 1; allow a few nested mount layouts
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class KernelError(RuntimeError):
    """The kernel cannot find or prepare its inputs; the message says which and how to fix."""


def _env_path(name: str, default: str | Path) -> Path:
    return Path(os.environ.get(name) or default)


def _search(root: Path, relative: str) -> list[Path]:
    """``root/*/relative``, else ``root/*/*/relative``, ... up to :data:`SEARCH_DEPTH` levels:
    the shallowest matches (Kaggle mounts a dataset at depth 1; deeper is only looked at,
    briefly, when that finds nothing)."""
    for depth in range(1, SEARCH_DEPTH + 1):
        found = sorted(root.glob("/".join(["*"] * depth) + "/" + relative))
        if found:
            return found
    return []


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def unpack_dataset(dataset_dir: Path, dest: Path) -> Path:
    """Rebuild a package whose folders Kaggle left as archives (``cellseg.zip``, ...).

    ``kaggle datasets create --dir-mode zip`` uploads each sub-folder as ``<name>.zip`` of its
    contents, normally unpacked by Kaggle; if it was not, each archive is unpacked here into
    ``dest/<name>/`` and loose files are copied, giving the package layout again.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for item in sorted(dataset_dir.iterdir()):
        if item.is_dir():
            shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
        elif item.name.endswith(ARCHIVE_SUFFIXES):
            target = dest / _archive_stem(item)
            target.mkdir(parents=True, exist_ok=True)
            if item.name.endswith(".zip"):
                with zipfile.ZipFile(item) as zf:
                    for member in zf.namelist():
                        resolved = (target / member).resolve()
                        if not resolved.is_relative_to(target.resolve()):
                            raise KernelError(f"{item}: member {member!r} escapes the archive")
                    zf.extractall(target)
            else:
                with tarfile.open(item) as tf:
                    tf.extractall(target, filter="data")
        elif item.is_file():
            shutil.copy2(item, dest / item.name)
    return dest


def find_package_dir(input_root: Path, scratch: Path | None = None) -> Path:
    """The packaged dataset under ``input_root``: the folder holding ``cellseg/__init__.py``
    (falls back to one holding ``cellseg.zip``, unpacked into ``scratch``).

    Raises:
        KernelError: none found, or several (set CELLSEG_PACKAGE_DIR).
    """
    found = [p.parent.parent for p in _search(input_root, f"{CODE_DIR}/__init__.py")]
    if not found:
        archives = [p.parent for suffix in ARCHIVE_SUFFIXES
                    for p in _search(input_root, CODE_DIR + suffix)]
        if len(archives) == 1:
            scratch = scratch or Path(tempfile.mkdtemp(prefix="cellseg_package_"))
            print(f"{archives[0]}: folders were left as archives; unpacking into {scratch}",
                  flush=True)
            found = [unpack_dataset(archives[0], scratch)]
        elif archives:
            found = archives
    if not found:
        raise KernelError(
            f"no packaged cellseg under {input_root} (looked for */{CODE_DIR}/__init__.py): "
            f"attach the dataset made by `python src/package.py` (dataset_sources in "
            f"kernel-metadata.json) or set CELLSEG_PACKAGE_DIR")
    if len(found) > 1:
        raise KernelError(f"several packages under {input_root}: "
                          f"{[str(p) for p in found]}; set CELLSEG_PACKAGE_DIR to one")
    return found[0]


def find_data_dir(input_root: Path) -> Path:
    """The competition data root: ``<input root>/sartorius-cell-instance-segmentation`` or,
    for other mount layouts, the one such folder found below the input root."""
    default = input_root / COMPETITION
    if default.is_dir():
        return default
    found = [p.parent for p in _search(input_root, f"{COMPETITION}/test") if p.is_dir()]
    if len(found) == 1:
        return found[0]
    raise KernelError(f"{default}: competition data not found (expected "
                      f"{default}/test/*.png); attach the competition "
                      f"(competition_sources) or set CELLSEG_DATA_DIR")


def pip_install_command(package_dir: Path, python: str = sys.executable) -> list[str] | None:
    """The offline pip install of ``<package>/wheels`` (None when the package has none).
    Same command as ``cellseg.deploy.wheels.wheel_install_command`` (which cannot be imported yet:
    the wheels may be what makes the packaged ``cellseg`` importable)."""
    wheels = package_dir / WHEELS_DIR
    if not (wheels / WHEEL_REQUIREMENTS).is_file():
        return None
    return [python, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
            "--quiet", "-r", str(wheels / WHEEL_REQUIREMENTS)]


def install_wheels(package_dir: Path) -> None:
    """Install the packaged wheels offline; a failure stops the kernel (running on with the
    image's older versions could load the models wrongly or not at all)."""
    cmd = pip_install_command(package_dir)
    if cmd is None:
        return
    print("installing packaged wheels: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"offline pip install from {package_dir / WHEELS_DIR} failed "
                          f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    import importlib

    importlib.invalidate_caches()


def use_package(package_dir: Path):
    """Put the packaged ``cellseg`` first on ``sys.path`` and import it (dropping any other
    copy already imported, e.g. in a re-run notebook session)."""
    for name in [m for m in sys.modules if m == CODE_DIR or m.startswith(CODE_DIR + ".")]:
        del sys.modules[name]
    sys.path.insert(0, str(package_dir))
    import cellseg

    where = Path(cellseg.__file__).resolve()
    if not where.is_relative_to(package_dir.resolve()):
        raise KernelError(f"imported cellseg from {where}, not from the package {package_dir}")
    print(f"cellseg {cellseg.__version__} imported from {where}", flush=True)
    return cellseg


def _folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()] or None
    except ValueError:
        raise KernelError(f"CELLSEG_FOLDS={text!r}: expected comma-separated integers") from None


def main() -> int:
    input_root = _env_path("CELLSEG_INPUT_ROOT", "/kaggle/input")
    working = _env_path("CELLSEG_WORKING", "/kaggle/working")
    try:
        if os.environ.get("CELLSEG_PACKAGE_DIR"):
            package_dir = Path(os.environ["CELLSEG_PACKAGE_DIR"])
            if not (package_dir / CODE_DIR / "__init__.py").is_file():
                raise KernelError(f"CELLSEG_PACKAGE_DIR={package_dir}: no "
                                  f"{CODE_DIR}/__init__.py there")
        else:
            package_dir = find_package_dir(input_root)
        data_dir = (Path(os.environ["CELLSEG_DATA_DIR"]) if os.environ.get("CELLSEG_DATA_DIR")
                    else find_data_dir(input_root))
        folds = _folds(os.environ.get("CELLSEG_FOLDS"))
        print(f"package {package_dir}; data {data_dir}; output {working}", flush=True)
        install_wheels(package_dir)
        use_package(package_dir)
    except KernelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from cellseg.config import ConfigError
    from cellseg.data.data_root import DataError
    from cellseg.deploy.kaggle import resolve_packaged_config, verify_package
    from cellseg.infer.inference import run_inference

    overrides = [s.strip() for s in os.environ.get("CELLSEG_SET", "").split(";") if s.strip()]
    try:
        manifest = verify_package(package_dir)
        if manifest is not None:
            print(f"package of experiment '{manifest['exp']}' folds {manifest['folds']}, "
                  f"built {manifest['created']} (cellseg {manifest['cellseg_version']})")
        cfg, exp_dir, saved = resolve_packaged_config(
            package_dir, exp=os.environ.get("CELLSEG_EXP") or None, folds=folds,
            overrides=overrides, config=os.environ.get("CELLSEG_CONFIG") or None)
        print(f"experiment {exp_dir} (saved config {saved})", flush=True)
        run_inference(cfg, exp_dir, data_dir=data_dir, out_path=working / "submission.csv",
                      folds=folds, cell_type=os.environ.get("CELLSEG_CELL_TYPE") or None,
                      progress=sys.stdout.isatty())
    except (ConfigError, DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
