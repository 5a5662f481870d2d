"""``pip install .`` gives working ``cellseg-*`` commands outside the checkout.

The package goes into a throw-away venv that sees this venv's packages
(a ``.pth`` file) and is installed with ``--no-deps --no-build-isolation``: no
network, no second TensorFlow. The commands then run from a folder that is not the checkout, so
nothing can come from ``src/`` on ``sys.path`` or from the working directory.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # venv + pip install + two commands: ~20-40 s on 2 cores

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"  # prove that no registry is needed
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("install")
    venv = root / "venv"
    # `venv --system-site-packages` from a venv's python sees the *base* interpreter's
    # packages, not this venv's; a .pth file adds this venv's site-packages instead (after the
    # new venv's own, so the installed cellseg wins). --without-pip: pip and setuptools come
    # from this venv too (Python 3.11's bundled setuptools 65 cannot build a wheel with
    # wheel>=0.46).
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    r = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
             cwd=root)
    new_site = Path(r.stdout.strip())
    assert r.returncode == 0 and new_site.is_dir(), r.stderr
    (new_site / "_parent_venv.pth").write_text(
        "\n".join(p for p in site.getsitepackages() if Path(p).is_dir()) + "\n")
    # pip builds in the source folder (build/, *.egg-info): build from a copy of what the
    # package needs, so the checkout stays clean and nothing else of it can leak in.
    src = root / "src_copy"
    for name in ("pyproject.toml", "README.md", "requirements-common.txt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src" / "cellseg", src / "src" / "cellseg",
                    ignore=shutil.ignore_patterns("__pycache__"))
    r = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
              str(src)], cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    work = root / "elsewhere"
    work.mkdir()
    return {"bin": venv / "bin", "work": work, "python": venv / "bin" / "python"}


def test_every_declared_script_is_installed(installed):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) >= 12
    missing = [name for name in scripts if not (installed["bin"] / name).is_file()]
    assert not missing
    # Each entry point names a module with a main(argv) (the one src/<name>.py also calls).
    for target in scripts.values():
        module = target.split(":")[0].rsplit(".", 1)[-1]
        assert (REPO / "src" / f"{module}.py").is_file(), target


def test_package_comes_from_the_venv_not_the_checkout(installed):
    r = _run([str(installed["python"]), "-c", "import cellseg; print(cellseg.__file__)"],
             cwd=installed["work"])
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip())
    assert "site-packages" in where.parts and REPO not in where.parents
    # only the package, not the src/*.py wrappers
    site = where.parents[1]
    assert not (site / "train.py").exists() and not (site / "segment.py").exists()


def test_segment_help_and_a_real_pipeline_step(installed):
    bin_, work = installed["bin"], installed["work"]
    r = _run([str(bin_ / "cellseg-segment"), "--help"], cwd=work)
    assert r.returncode == 0, r.stderr
    assert "usage: cellseg-segment" in r.stdout

    data = work / "data"
    r = _run([str(bin_ / "cellseg-make-synthetic"), "--out", str(data), "--n-train", "6",
              "--n-test", "1", "--height", "96", "--width", "128", "--seed", "3"], cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list((data / "train").glob("*.png"))) == 6
    r = _run([str(bin_ / "cellseg-make-folds"), "--data-dir", str(data), "--n-folds", "3"],
             cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    folds = pd.read_csv(data / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2] and len(folds) == 6


def test_bad_input_is_one_error_line(installed):
    r = _run([str(installed["bin"] / "cellseg-make-folds"), "--data-dir",
              str(installed["work"] / "missing")], cwd=installed["work"])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:")
