"""Wheels for the offline Kaggle kernel: which requirements it needs, and the pip commands that
download them now (internet) and install them there (none).

Why a list of its own: the Kaggle image ships TensorFlow and most of the stack; the kernel
needs wheels only for what it lacks, and test or tuning tools are left out
(:data:`WHEEL_EXCLUDE`). The requirement files' ``-r`` includes are followed, so the shared list
(``requirements-common.txt``) is read once, as pip reads it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from cellseg.exceptions import PackagingError

WHEELS_DIR = "wheels"
WHEEL_REQUIREMENTS = "requirements.txt"  # inside wheels/: what the kernel pip-installs
WHEEL_EXCLUDE: dict[str, str] = {
    "tensorflow-cpu": "the Kaggle GPU image ships tensorflow with CUDA; the CPU build would "
                      "replace it",
    "tensorflow": "shipped by the Kaggle image (add it to a --wheel-req file if too old)",
    "optuna": "tuning only, not used at inference",
    "pytest": "tests only",
    "hypothesis": "tests only",
    "import-linter": "the architecture test only",
    "bioimageio.core": "checks export.py --bioimageio packages, not used at inference",
    "pydantic": "bioimageio.core's (albumentations brings its own need)",
    "setuptools": "builds the package for the install test",
}
# Platform tag for `pip download --platform`: pip also accepts older manylinux wheels for it.
# The Kaggle image is Ubuntu 22.04 (glibc 2.35), x86_64.
WHEEL_PLATFORM = "manylinux_2_28_x86_64"


def _requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].strip().lower().replace("_", "-")


def kernel_requirements(requirements_file: str | os.PathLike,
                        exclude: Collection[str] = tuple(WHEEL_EXCLUDE)) -> list[str]:
    """The requirement lines of a requirements file the kernel needs as wheels.

    By default everything but :data:`WHEEL_EXCLUDE` (test and tuning tools, and TensorFlow,
    which the Kaggle image ships); ``exclude=()`` keeps every line (a user's own list).
    """
    path = Path(requirements_file)
    if not path.is_file():
        raise PackagingError(f"{path}: requirements file not found (needed for --wheels)")
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):  # the shared list (requirements-common)
            out += kernel_requirements(path.parent / line.split(None, 1)[1], exclude)
        elif line and not line.startswith("-") and _requirement_name(line) not in exclude:
            out.append(line)
    return out


def wheel_download_command(dest: str | os.PathLike, requirements_file: str | os.PathLike,
                           python_version: str | None = None,
                           platform: str = WHEEL_PLATFORM,
                           python: str = sys.executable) -> list[str]:
    """The ``pip download`` command line that fills ``wheels/`` (needs the internet, at
    packaging time only).

    Binary wheels only: the offline kernel cannot build source distributions. With
    ``python_version`` (the Kaggle image's, e.g. ``"3.11"``) pip fetches wheels for that
    interpreter and ``platform`` instead of the running one.
    """
    cmd = [python, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
           "--progress-bar", "off"]
    if python_version:
        if not re.fullmatch(r"3\.\d{1,2}", python_version):
            raise PackagingError(f"--wheel-python: expected a version like 3.11, got "
                                 f"{python_version!r}")
        cmd += ["--python-version", python_version, "--implementation", "cp",
                "--platform", platform]
    cmd += ["-r", str(requirements_file)]
    return cmd


def wheel_install_command(wheels_dir: str | os.PathLike,
                          python: str = sys.executable) -> list[str]:
    """The offline ``pip install`` the kernel runs: only ``wheels_dir``, never an index.
    Kept here next to the download command; the kernel holds its own copy because it runs
    before ``cellseg`` can be imported (pinned together by the tests)."""
    wheels_dir = Path(wheels_dir)
    return [python, "-m", "pip", "install", "--no-index", "--find-links", str(wheels_dir),
            "--quiet", "-r", str(wheels_dir / WHEEL_REQUIREMENTS)]


def download_wheels(dest: Path, requirements: Sequence[str], python_version: str | None,
                     run: Callable[..., Any]) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    req_file = dest / WHEEL_REQUIREMENTS
    req_file.write_text("\n".join(requirements) + "\n")
    cmd = wheel_download_command(dest, req_file, python_version)
    print("downloading wheels: " + " ".join(cmd), flush=True)
    try:
        run(cmd, check=True)
    except subprocess.CalledProcessError as exc:
        raise PackagingError(f"pip download into {dest} failed (exit {exc.returncode}); "
                             f"--wheels needs the internet at packaging time") from None
    except OSError as exc:
        raise PackagingError(f"cannot run pip download: {exc}") from None
    return len(list(dest.glob("*.whl")))


__all__ = ["WHEEL_EXCLUDE", "WHEEL_PLATFORM", "WHEEL_REQUIREMENTS", "WHEELS_DIR", "download_wheels",
           "kernel_requirements", "wheel_download_command", "wheel_install_command"]
