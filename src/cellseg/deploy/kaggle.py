"""Package a trained experiment as an offline Kaggle dataset, and find it again in the kernel.

Why a package: the competition's kernel runs with the internet off, so everything inference
needs must already be on Kaggle as a dataset: the library source, the experiment's fold models
with the config each was trained with, the tuned ``postprocess.yaml`` and, when the Kaggle
image lacks a required version, wheels. ``kernels/infer/infer_kernel.py`` puts the packaged
``cellseg/`` on ``sys.path`` and calls the same :func:`cellseg.infer.inference.run_inference` as
``src/infer.py``, so the kernel and a local run give the same submission for the same models.

Layout of a package folder (upload it with ``kaggle datasets create -p DIR --dir-mode zip``;
without ``--dir-mode zip`` the Kaggle CLI skips sub-folders)::

    dataset-metadata.json        Kaggle's dataset metadata: title, id "user/slug", licenses
    cellseg-package.json         manifest: experiment, folds, sizes and sha256 of every file
    cellseg/                     copy of src/cellseg (no __pycache__)
    configs/*.yaml               the project's configs (the kernel may pick one)
    models/<exp>/fold<K>/        best.keras, config.yaml, result.json, cell_type_classifier.json
    models/<exp>/postprocess.yaml   tuned post-processing, when tune.py was run
    wheels/                      optional: *.whl + requirements.txt for an offline pip install

The package is built in a temporary folder beside the destination and swapped into place at
the end (:func:`cellseg.fileio.replace_folder`), so an interrupted build never leaves a
half-package that looks complete; an existing package is replaced only with
``overwrite=True``, and only if it is one (it has a manifest).

One module on purpose: the builder and the kernel-side readers
(:func:`verify_package`, :func:`find_experiment`, :func:`resolve_packaged_config`) are the two
sides of one folder format, kept together so that they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cellseg import __version__, fileio
from cellseg.config import Config, ConfigError, load_config
from cellseg.exceptions import PackagingError
from cellseg.experiment import (
    BEST_MODEL,
    CLASSIFIER_FILE,
    POSTPROCESS_FILE,
    RESULT_FILE,
    SAVED_CONFIG,
    find_fold_models,
    fold_dir_name,
    resolve_config,
)
from cellseg.infer.ensemble import load_classifiers
from cellseg.model.predict import load_models
from cellseg.deploy.wheels import WHEELS_DIR, download_wheels
from cellseg.postprocess.tuned import TunedPostprocess

CODE_DIR = "cellseg"
CONFIGS_DIR = "configs"
MODELS_DIR = "models"
DATASET_METADATA = "dataset-metadata.json"
MANIFEST = "cellseg-package.json"
MANIFEST_FORMAT = 1
COMPETITION = "sartorius-cell-instance-segmentation"
PLACEHOLDER_USER = "your-kaggle-username"
DEFAULT_LICENSE = "CC0-1.0"

# The license names Kaggle accepts in dataset-metadata.json (Kaggle API docs,
# docs/datasets_metadata.md, "Licenses").
KAGGLE_LICENSES: tuple[str, ...] = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0",
    "DbCL-1.0", "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL",
    "CC-BY-3.0", "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO",
    "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0",
    "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
)
# Dataset title and slug lengths accepted by `kaggle datasets create` (same docs).
TITLE_LENGTH = (6, 50)
SLUG_LENGTH = (3, 50)

# requirements.txt entries left out of the offline wheels, and why.
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]$")
_IGNORE_CODE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")


@dataclasses.dataclass
class PackageSummary:
    """What :func:`build_package` wrote.

    Attributes:
        out_dir: the package folder.
        exp: experiment name (``models/<exp>``).
        folds: the packaged folds.
        dataset_id: ``user/slug`` written to ``dataset-metadata.json``.
        n_files: files in the package (metadata included).
        n_bytes: their total size.
        has_postprocess: whether a tuned ``postprocess.yaml`` was packaged.
        n_wheels: wheel files in ``wheels/`` (0 without ``wheels=True``).
    """

    out_dir: Path
    exp: str
    folds: list[int]
    dataset_id: str
    n_files: int
    n_bytes: int
    has_postprocess: bool
    n_wheels: int = 0


# ------------------------------------------------------------------------------ metadata
def slugify(text: str, max_length: int = SLUG_LENGTH[1]) -> str:
    """Lower-case letters, digits and single dashes, as Kaggle makes URL slugs from titles."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-")


def default_dataset_id(exp: str, user: str | None = None) -> str:
    """``<user>/cellseg-<exp>``; the user is ``$KAGGLE_USERNAME`` or a placeholder that
    :func:`build_package` warns about (the upload fails until it is replaced)."""
    user = user or os.environ.get("KAGGLE_USERNAME") or PLACEHOLDER_USER
    return f"{user}/{slugify(f'cellseg-{exp}')}"


def default_title(exp: str) -> str:
    """A dataset title within Kaggle's 6-50 characters."""
    title = f"cellseg models {exp}"
    return title if len(title) <= TITLE_LENGTH[1] else title[: TITLE_LENGTH[1]].rstrip()


def check_dataset_id(dataset_id: str, where: str = "--dataset-id") -> None:
    """Raise :class:`PackagingError` unless ``dataset_id`` is ``user/slug`` as Kaggle wants."""
    parts = dataset_id.split("/") if isinstance(dataset_id, str) else []
    if len(parts) != 2 or not _USER_RE.match(parts[0]) or not _SLUG_RE.match(parts[1]):
        raise PackagingError(
            f"{where}: {dataset_id!r} is not a Kaggle dataset id; expected 'user/slug' "
            f"(slug: letters, digits and dashes, e.g. {default_dataset_id('default')!r})")
    lo, hi = SLUG_LENGTH
    if not lo <= len(parts[1]) <= hi:
        raise PackagingError(f"{where}: slug {parts[1]!r} has {len(parts[1])} characters; "
                             f"Kaggle expects {lo} to {hi}")


def dataset_metadata(dataset_id: str, title: str, license_name: str = DEFAULT_LICENSE,
                     description: str = "") -> dict[str, Any]:
    """The ``dataset-metadata.json`` content, checked with :func:`check_dataset_metadata`."""
    meta: dict[str, Any] = {"title": title, "id": dataset_id,
                            "licenses": [{"name": license_name}]}
    if description:
        meta["description"] = description
    check_dataset_metadata(meta)
    return meta


def check_dataset_metadata(meta: Any, where: str = DATASET_METADATA) -> None:
    """Check the fields ``kaggle datasets create`` requires (title 6-50 characters, id
    ``user/slug`` with a 3-50 character slug, exactly one license of Kaggle's list), so a bad
    value fails here and not after an upload.

    Raises:
        PackagingError: naming ``where``, the field and what was expected.
    """
    if not isinstance(meta, dict):
        raise PackagingError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in ("title", "id", "licenses") if k not in meta]
    if missing:
        raise PackagingError(f"{where}: missing field(s) {missing}; Kaggle requires "
                             f"title, id and licenses")
    title = meta["title"]
    lo, hi = TITLE_LENGTH
    if not isinstance(title, str) or not lo <= len(title) <= hi:
        raise PackagingError(f"{where}: title {title!r} must be a string of {lo} to {hi} "
                             f"characters")
    check_dataset_id(meta["id"], where=f"{where}: id")
    licenses = meta["licenses"]
    if (not isinstance(licenses, list) or len(licenses) != 1
            or not isinstance(licenses[0], dict) or "name" not in licenses[0]):
        raise PackagingError(f"{where}: licenses must be exactly one entry "
                             f"[{{\"name\": ...}}], got {licenses!r}")
    if licenses[0]["name"] not in KAGGLE_LICENSES:
        raise PackagingError(f"{where}: license {licenses[0]['name']!r} is not one Kaggle "
                             f"accepts; expected one of {list(KAGGLE_LICENSES)}")


# ------------------------------------------------------------------------------ building
def _file_table(root: Path, skip: Sequence[str]) -> dict[str, dict[str, Any]]:
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in skip:
            table[rel] = {"bytes": path.stat().st_size, "sha256": fileio.file_digest(path)}
    return table


def _copy_configs(configs: Sequence[str | os.PathLike], dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Path] = {}
    for item in configs:
        src = Path(item)
        if not src.is_file():
            raise PackagingError(f"{src}: config file not found")
        other = seen.get(src.name)
        if other is not None:
            if other.resolve() != src.resolve() and other.read_bytes() != src.read_bytes():
                raise PackagingError(f"{src}: another config with the same name ({other}) "
                                     f"would be packaged as {CONFIGS_DIR}/{src.name}; "
                                     f"rename one")
            continue
        seen[src.name] = src
        shutil.copy2(src, dest / src.name)
    return sorted(seen)


def _load_saved_config(path: Path) -> Config:
    """``load_config`` whose every error names the file (semantic checks do not)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if str(path) in text else f"{path}: {text}") from None


def _is_package(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / DATASET_METADATA).is_file()


def _check_package_out(out_dir: Path, exp_dir: Path, code_dir: Path, overwrite: bool) -> None:
    """``out_dir`` may become the package (absent, or an earlier package with ``overwrite``,
    never inside the experiment) and ``code_dir`` is a Python package.

    Raises:
        PackagingError: naming the path and what to do.
    """
    if out_dir.exists():
        if not out_dir.is_dir():
            raise PackagingError(f"{out_dir} exists and is a file; expected a folder path "
                                 f"for the package")
        if not overwrite:
            raise PackagingError(f"{out_dir} already exists; pass --overwrite to replace it "
                                 f"or choose another --out")
        if any(out_dir.iterdir()) and not _is_package(out_dir):
            raise PackagingError(f"refusing to replace {out_dir}: it is not a package built "
                                 f"by package.py (no {MANIFEST}); choose another --out")
    if out_dir.resolve().is_relative_to(exp_dir.resolve()):
        raise PackagingError(f"--out {out_dir} lies inside the experiment {exp_dir}; choose "
                             f"a folder outside it")
    if not (code_dir / "__init__.py").is_file():
        raise PackagingError(f"{code_dir}: not a Python package (no __init__.py)")


def _check_experiment(exp_dir: Path, folds: Sequence[int] | None) -> list[tuple[int, Path]]:
    """The fold models to ship, after reading everything the kernel will read (each fold's
    config, ``postprocess.yaml``, every model and classifier), so that a broken file fails
    now and not after an upload.

    Raises:
        InferenceError: no trained fold (names ``train.py --fold K``), a damaged model.
        PackagingError: a fold without its config. ConfigError / ValueError: unreadable files.
    """
    exp = exp_dir.name
    models = find_fold_models(exp_dir, folds)  # InferenceError naming train.py --fold K
    # Read what the kernel will read, so a broken file fails now and not after an upload.
    for k, model_path in models:
        if not (model_path.parent / SAVED_CONFIG).is_file():
            raise PackagingError(
                f"{model_path.parent / SAVED_CONFIG} not found: fold {k} has a model but not "
                f"the config it was trained with (training writes it); retrain with "
                f"`python src/train.py --fold {k} --exp {exp}`")
        _load_saved_config(model_path.parent / SAVED_CONFIG)
    if (exp_dir / POSTPROCESS_FILE).is_file():
        tuned = TunedPostprocess.read(exp_dir / POSTPROCESS_FILE)  # ValueError naming the file
        tuned.load_confidence(exp_dir)  # the model it names: present, unaltered, safe
    # Every model and classifier must load as the kernel will load it: a truncated or damaged
    # best.keras must not be shipped (InferenceError naming the file).
    load_models([p for _, p in models])
    load_classifiers(models)
    return models


def _copy_experiment(exp_dir: Path, models: list[tuple[int, Path]], dest_exp: Path) -> bool:
    """Copy each fold's model, config, result and classifier, and the tuned
    ``postprocess.yaml`` with the confidence model it names, into ``dest_exp``; returns
    whether there was a tuned file."""
    for k, model_path in models:
        fold_dest = dest_exp / fold_dir_name(k)
        fold_dest.mkdir(parents=True)
        for name in (BEST_MODEL, SAVED_CONFIG, RESULT_FILE, CLASSIFIER_FILE):
            if (model_path.parent / name).is_file():
                shutil.copy2(model_path.parent / name, fold_dest / name)
    has_post = (exp_dir / POSTPROCESS_FILE).is_file()
    if has_post:
        shutil.copy2(exp_dir / POSTPROCESS_FILE, dest_exp / POSTPROCESS_FILE)
        TunedPostprocess.read(exp_dir / POSTPROCESS_FILE).copy_confidence(exp_dir, dest_exp)
    else:
        warnings.warn(f"{exp_dir / POSTPROCESS_FILE} not found: the kernel will use the "
                      f"config's default post-processing (run `python src/tune.py --exp "
                      f"{exp_dir.name}` first to tune it)", stacklevel=2)
    return has_post


def build_package(
    exp_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    folds: Sequence[int] | None = None,
    configs: Sequence[str | os.PathLike] = (),
    code_dir: str | os.PathLike | None = None,
    dataset_id: str | None = None,
    title: str | None = None,
    license_name: str = DEFAULT_LICENSE,
    wheels: bool = False,
    requirements: Sequence[str] = (),
    wheel_python: str | None = None,
    overwrite: bool = False,
    run: Callable[..., Any] = subprocess.run,
) -> PackageSummary:
    """Build an upload-ready Kaggle dataset folder from a trained experiment.

    Args:
        exp_dir: ``output/<exp>`` with ``fold<K>/best.keras`` and ``fold<K>/config.yaml``.
        out_dir: the package folder to create (e.g. ``output/kaggle_dataset/<exp>``).
        folds: folds to package; None = every fold with a ``best.keras``.
        configs: YAML files copied to ``configs/``.
        code_dir: the library to copy; default: this ``cellseg`` package.
        dataset_id: ``user/slug``; default :func:`default_dataset_id`.
        title: dataset title (6-50 characters); default :func:`default_title`.
        license_name: one of :data:`KAGGLE_LICENSES`.
        wheels: also ``pip download`` the kernel's requirements into ``wheels/`` (internet
            needed now, not in the kernel).
        requirements: requirement lines for ``wheels`` (see
            :func:`cellseg.deploy.wheels.kernel_requirements`);
            written to ``wheels/requirements.txt``, which the kernel installs from.
        wheel_python: Python version of the Kaggle image for the wheels (e.g. ``"3.11"``);
            default: the running interpreter's.
        overwrite: replace an existing package at ``out_dir``.
        run: runs the pip command (``subprocess.run``-like); tests pass a recorder.

    Returns:
        A :class:`PackageSummary`.

    Raises:
        PackagingError: ``out_dir`` exists (without ``overwrite``) or is not a package, bad
            metadata, a fold without its ``config.yaml``, pip failure.
        InferenceError: the experiment has no trained fold (names ``train.py --fold K``).
        ConfigError / ValueError: a saved ``config.yaml`` or ``postprocess.yaml`` that
            inference could not read (named).
    """
    exp_dir = Path(exp_dir)
    out_dir = Path(out_dir)
    exp = exp_dir.name
    code_dir = Path(code_dir) if code_dir is not None else Path(__file__).resolve().parents[1]
    _check_package_out(out_dir, exp_dir, code_dir, overwrite)
    models = _check_experiment(exp_dir, folds)
    dataset_id = dataset_id or default_dataset_id(exp)
    title = title or default_title(exp)
    fold_list = [k for k, _ in models]
    description = (f"Attention UNet++ cell segmentation (cellseg {__version__}): experiment "
                   f"'{exp}', folds {fold_list}. Code + models for the offline kernel "
                   f"kernels/infer/infer_kernel.py.")
    meta = dataset_metadata(dataset_id, title, license_name, description)
    if dataset_id.split("/")[0] == PLACEHOLDER_USER:
        warnings.warn(f"dataset id {dataset_id!r} has the placeholder user; pass --dataset-id "
                      f"<your-kaggle-username>/<slug> or set KAGGLE_USERNAME before "
                      f"uploading", stacklevel=2)
    if wheels and not requirements:
        raise PackagingError("wheels=True needs the requirements to download (e.g. "
                             "kernel_requirements('requirements.txt'))")

    # Built in a temporary sibling and swapped in (fileio.replace_folder): the folder is at
    # every moment either the old package or the new one.
    with fileio.replace_folder(out_dir) as tmp:
        shutil.copytree(code_dir, tmp / CODE_DIR, ignore=_IGNORE_CODE)
        config_names = _copy_configs(configs, tmp / CONFIGS_DIR)
        has_post = _copy_experiment(exp_dir, models, tmp / MODELS_DIR / exp)
        n_wheels = (download_wheels(tmp / WHEELS_DIR, requirements, wheel_python, run)
                    if wheels else 0)
        (tmp / DATASET_METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        files = _file_table(tmp, skip=(MANIFEST, DATASET_METADATA))
        manifest = {
            "format": MANIFEST_FORMAT,
            "exp": exp,
            "folds": fold_list,
            "cellseg_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": str(exp_dir.resolve()),
            "dataset_id": dataset_id,
            "postprocess": has_post,
            "configs": config_names,
            "wheels": n_wheels,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    n_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    n_files = sum(1 for p in out_dir.rglob("*") if p.is_file())
    return PackageSummary(out_dir=out_dir, exp=exp, folds=fold_list, dataset_id=dataset_id,
                          n_files=n_files, n_bytes=n_bytes, has_postprocess=has_post,
                          n_wheels=n_wheels)


# ------------------------------------------------------------------------------ using
def read_manifest(package_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The package's manifest, or None for a folder without one (e.g. hand-made)."""
    path = Path(package_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackagingError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise PackagingError(f"{path}: expected an object with a 'files' table")
    return doc


def verify_package(package_dir: str | os.PathLike, hashes: bool = True
                   ) -> dict[str, Any] | None:
    """Check every file the manifest lists is present with its size (and sha256).

    Why: a dataset version that Kaggle has not finished processing, or an upload without
    ``--dir-mode zip`` (sub-folders skipped), would otherwise fail deep inside inference or,
    worse, run with a missing fold. Extra files (e.g. ``__pycache__``) are ignored.

    Returns:
        The manifest, or None when the package has none (nothing to check).

    Raises:
        PackagingError: naming the first missing or changed file.
    """
    root = Path(package_dir)
    manifest = read_manifest(root)
    if manifest is None:
        return None
    for rel, entry in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise PackagingError(f"{path}: listed in {MANIFEST} but missing; was the dataset "
                                 f"uploaded with --dir-mode zip and fully processed?")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise PackagingError(f"{path}: {size} bytes, expected {entry.get('bytes')} "
                                 f"({MANIFEST}); the upload is incomplete or changed")
        if hashes and fileio.file_digest(path) != entry.get("sha256"):
            raise PackagingError(f"{path}: sha256 differs from {MANIFEST}; the file changed "
                                 f"after packaging")
    return manifest


def find_experiment(package_dir: str | os.PathLike, exp: str | None = None
                    ) -> tuple[str, Path]:
    """The experiment to run: ``exp``, else the manifest's, else the only one in ``models/``.

    Returns:
        ``(name, <package>/models/<name>)``.

    Raises:
        PackagingError: no such experiment, or several and none chosen (lists them).
    """
    models = Path(package_dir) / MODELS_DIR
    available = sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    if not available:
        raise PackagingError(f"{models}: no experiment folder; expected {MODELS_DIR}/<exp>/"
                             f"fold<K>/{BEST_MODEL} (build the package with src/package.py)")
    if exp is None:
        manifest = read_manifest(package_dir)
        if manifest is not None and manifest.get("exp") in available:
            exp = str(manifest["exp"])
        elif len(available) == 1:
            exp = available[0]
        else:
            raise PackagingError(f"{models}: several experiments {available}; choose one "
                                 f"(CELLSEG_EXP in the kernel)")
    if exp not in available:
        raise PackagingError(f"{models / exp}: experiment not in the package; available: "
                             f"{available}")
    return exp, models / exp


def resolve_packaged_config(
    package_dir: str | os.PathLike,
    exp: str | None = None,
    folds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    config: str | os.PathLike | None = None,
) -> tuple[Config, Path, Path | None]:
    """:func:`cellseg.experiment.resolve_config` for a package: the experiment folder is
    ``<package>/models/<exp>``, its saved training config is the base, exactly as
    ``src/infer.py`` does for ``output/<exp>``.

    Args:
        package_dir: the package root (holds ``models/``).
        exp: experiment name; default :func:`find_experiment`'s choice.
        folds: folds to use (picks which saved config is read first).
        overrides: ``KEY=VALUE`` strings, as ``--set`` of ``infer.py``.
        config: a config whose ``data`` and ``infer`` sections replace the saved ones (as an
            explicit ``--config``): a path, or a file name in ``<package>/configs/``.

    Returns:
        ``(cfg, exp_dir, saved config path or None)``.
    """
    package_dir = Path(package_dir)
    name, exp_dir = find_experiment(package_dir, exp)
    config_path: Path | None = None
    if config is not None:
        config_path = Path(config)
        if not config_path.is_file() and (package_dir / CONFIGS_DIR / config_path).is_file():
            config_path = package_dir / CONFIGS_DIR / config_path
        if not config_path.is_file():
            raise PackagingError(f"config {config}: not found (as a path or in "
                                 f"{package_dir / CONFIGS_DIR})")
    # JSON-quoted so any path is a valid YAML string in the override.
    located = [f"output_dir={json.dumps(str(exp_dir.parent))}", *overrides]
    return resolve_config(config_path, located, exp=name, config_explicit=config is not None,
                          folds=folds)


__all__ = [
    "COMPETITION",
    "DATASET_METADATA",
    "KAGGLE_LICENSES",
    "MANIFEST",
    "PackageSummary",
    "PackagingError",
    "build_package",
    "check_dataset_id",
    "check_dataset_metadata",
    "dataset_metadata",
    "default_dataset_id",
    "default_title",
    "find_experiment",
    "read_manifest",
    "resolve_packaged_config",
    "slugify",
    "verify_package",
]
