"""COCO instance annotations <-> the competition's data-root layout.

Why: the strongest Sartorius entries pre-trained on LIVECell (about 5,000 phase-contrast images,
1.6 million cells, COCO json) and other COCO-format cell datasets. :func:`convert_coco` turns
such a dataset into a data root this kit trains on (``train.csv`` with one row-major RLE per
cell, ``train/<id>.png`` 8-bit grayscale, ``source.json`` with the provenance);
:func:`root_to_coco` goes the other way, so a root -> COCO -> root round trip is exact.

Segmentations (polygons, uncompressed and compressed RLE) are decoded by
:mod:`cellseg.data.coco_masks`.

Overlapping cells are allowed (real astro cells overlap): each annotation keeps its own mask
and its own train.csv row, as in the competition's train.csv (see ``cellseg.data.data_root``).

Cell types: the kit knows only ``CELL_TYPES`` (``cellseg.data.data_root.read_train_csv``
rejects anything else, and the post-processing is tuned per type), so every image needs one of
them: a fixed
``cell_type``; the LIVECell file-name prefix (``SHSY5Y_Phase_...`` -> ``shsy5y``; other cell
lines must be mapped with ``type_map``, e.g. ``{"A172": "astro"}``, or skipped with
``skip_unmapped``); or the annotations' category names (what :func:`root_to_coco` writes).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.constants import CELL_TYPES, TRAIN_COLUMNS
from cellseg.data import rle
from cellseg.data.coco_masks import (
    encode_rle_string,
    indices_to_counts,
    indices_to_rle,
    segmentation_indices,
)
from cellseg.data.data_root import SOURCE_FILE
from cellseg.data.images import IMAGE_SUFFIXES, image_size, read_image_uint8, write_png
from cellseg.exceptions import CocoError
from cellseg.ids import ID_CHARS, MAX_ID_LENGTH, check_image_id

# LIVECell's cell line in a file name such as ``SHSY5Y_Phase_A10_1_00d04h00m_1.tif``.
DEFAULT_LINE_MAP: dict[str, str] = {"SHSY5Y": "shsy5y", "SH-SY5Y": "shsy5y"}
# The complement of the id alphabet that cellseg.ids checks when any CSV is read.
_SAFE_ID = re.compile(f"[^{ID_CHARS}]")
_EXTRA_COLUMNS = tuple(c for c in TRAIN_COLUMNS
                       if c not in ("id", "annotation", "width", "height", "cell_type"))


# --------------------------------------------------------------------------------------------
# Images, ids and cell types
# --------------------------------------------------------------------------------------------


def safe_id(stem: str) -> str:
    """A file stem -> an image id safe as a file name: characters outside ``[A-Za-z0-9_.-]``
    become ``_``, leading dots and dashes are dropped (no hidden files, no option look-alikes)."""
    out = _SAFE_ID.sub("_", stem).lstrip(".-")
    if not out:
        raise CocoError(f"file name {stem!r} gives an empty image id")
    # Shorter than the limit, leaving room for a de-duplicating suffix ("_2", "_<ann id>").
    return check_image_id(out[:MAX_ID_LENGTH - 20])


def cell_line(file_name: str) -> str:
    """LIVECell's cell line: the file name's text before the first ``_`` (``A172``, ...)."""
    return PurePosixPath(str(file_name).replace("\\", "/")).name.split("_", 1)[0]


def _index_images(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Every image file under ``folder``: by relative posix path and by base name."""
    by_rel: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_SUFFIXES) or name.startswith("."):
                continue
            path = Path(dirpath) / name
            by_rel[path.relative_to(folder).as_posix()] = path
            by_name.setdefault(name, []).append(path)
    return by_rel, by_name


def _find_image(file_name: str, by_rel: Mapping[str, Path], by_name: Mapping[str, list[Path]],
                where: str) -> Path:
    """Look a COCO ``file_name`` up among the files actually present (never opened as a
    path built from the json): exact relative path first, else a unique base name."""
    norm = PurePosixPath(str(file_name).replace("\\", "/"))
    rel = "/".join(p for p in norm.parts if p not in ("", ".", "/"))
    if rel in by_rel:
        return by_rel[rel]
    hits = by_name.get(norm.name, [])
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise CocoError(f"{where}: file name {norm.name!r} matches {len(hits)} files under "
                        f"the images folder ({hits[0]}, {hits[1]}, ...); give a relative path")
    raise CocoError(f"{where}: image file {str(file_name)!r} not found under the images folder")


def parse_type_map(items: Iterable[str]) -> dict[str, str]:
    """``["A172=astro", "BV2=cort"]`` -> ``{"A172": "astro", ...}`` (cell types checked)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip().lower()
        if not sep or not key or not value:
            raise CocoError(f"--map {item!r}: expected LINE=TYPE, e.g. A172=astro")
        if value not in CELL_TYPES:
            raise CocoError(f"--map {item!r}: cell type must be one of {list(CELL_TYPES)}")
        out[key.upper()] = value
    return out


# --------------------------------------------------------------------------------------------
# COCO file reading
# --------------------------------------------------------------------------------------------


def _key(value: Any) -> str:
    """COCO ids may be ints or strings; compare them as text (``1`` and ``"1"`` collide)."""
    return str(value)


def load_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO json and check its structure; ``annotations`` may be a list or LIVECell's
    dict keyed by annotation id (returned as a list either way)."""
    path = Path(path)
    if not path.is_file():
        raise CocoError(f"{path}: annotations file not found")
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CocoError(f"{path}: expected a COCO object with 'images' and 'annotations'")
    images, anns = doc.get("images"), doc.get("annotations")
    if not isinstance(images, list):
        raise CocoError(f"{path}: 'images' must be a list of image entries")
    if isinstance(anns, dict):
        anns = list(anns.values())
    if not isinstance(anns, list):
        raise CocoError(f"{path}: 'annotations' must be a list (or a dict keyed by id)")
    cats = doc.get("categories") or []
    if isinstance(cats, dict):
        cats = list(cats.values())
    if not isinstance(cats, list):
        raise CocoError(f"{path}: 'categories' must be a list")
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or "id" not in entry:
            raise CocoError(f"{path}: images[{i}] has no 'id'")
        where = f"{path}: image id {entry['id']!r}"
        for k in ("width", "height"):
            v = entry.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CocoError(f"{where}: '{k}' must be a positive integer, got {v!r}")
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"].strip():
            raise CocoError(f"{where}: 'file_name' must be a non-empty string")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "id" not in ann:
            raise CocoError(f"{path}: annotations[{i}] has no 'id'")
        if "image_id" not in ann:
            raise CocoError(f"{path}: annotation id {ann['id']!r} has no 'image_id'")
        if "segmentation" not in ann:
            raise CocoError(f"{path}: annotation id {ann['id']!r} has no 'segmentation'")
    return {"images": images, "annotations": anns, "categories": cats}


# --------------------------------------------------------------------------------------------
# COCO -> data root
# --------------------------------------------------------------------------------------------


@dataclass
class ConvertSummary:
    """What :func:`convert_coco` wrote and skipped (also saved in ``source.json``)."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    per_type: dict[str, dict[str, int]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [(f"wrote {self.out} ({self.counts.get('images_written', 0)} images, "
                  f"{self.counts.get('cells_written', 0)} cells)")]
        for t, v in self.per_type.items():
            lines.append(f"  {t}: {v['images']} images, {v['cells']} cells")
        skipped = {k: v for k, v in self.counts.items()
                   if v and k.startswith(("skipped", "dropped", "rescaled"))}
        for k, v in skipped.items():
            lines.append(f"  {k.replace('_', ' ')}: {v}")
        return "\n".join(lines)


#: What a converter's data root holds (``pseudo_images.csv`` is pseudo_label's; ``.cache`` the
#: trainer's targets, stale for new masks). ``--overwrite`` replaces exactly these; the user's
#: other files in the folder are kept.
ROOT_ENTRIES: tuple[str, ...] = ("train", "train.csv", "folds.csv", SOURCE_FILE,
                                 "pseudo_images.csv", ".cache")


def keep_user_entry(name: str) -> bool:
    """``carry`` of :func:`cellseg.fileio.replace_folder`: a file the data root does not own."""
    return name not in ROOT_ENTRIES


def check_root_out(out: Path, overwrite: bool, protect: Sequence[Path] = (),
                   error: type[Exception] = CocoError) -> None:
    """Check, before any work, that a new data root can go to ``out``: a folder (or absent)
    that this user can write, not holding an input (``protect``), empty unless ``overwrite``.

    Finishes a replacement that a killed run left half-way first
    (:func:`cellseg.fileio.recover_folder`), so the check sees the root as it really is.
    Creates nothing; the root is then built with :func:`cellseg.fileio.replace_folder`.
    """
    out = Path(out)
    fileio.recover_folder(out, carry=keep_user_entry)
    if out.exists() and not out.is_dir():
        raise error(f"--out {out}: exists and is not a folder; expected a folder for the data "
                    f"root")
    fileio.require_writable_folder(Path(os.path.abspath(out)).parent, "--out's parent")
    fileio.require_writable_folder(out, "--out")
    resolved = out.resolve()
    for p in protect:
        rp = Path(p).resolve()
        if rp == resolved or resolved / "train" in (rp, *rp.parents):
            raise error(f"input {p} lies inside the output data root {out}; choose "
                        f"another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(f"output directory {out} is not empty; pass --overwrite to replace the "
                    f"data root there")


def _index_annotations(doc: Mapping[str, Any], annotations: Path, keep_crowd: bool
                       ) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]],
                                  int]:
    """``(image entries by id, annotations by image id, crowd annotations dropped)``;
    CocoError naming the json for a duplicate image or annotation id, or an annotation of
    an unknown image."""
    entries: dict[str, dict[str, Any]] = {}
    for entry in doc["images"]:
        key = _key(entry["id"])
        if key in entries:
            raise CocoError(f"{annotations}: image id {entry['id']!r} appears twice")
        entries[key] = entry
    per_image: dict[str, list[dict[str, Any]]] = {k: [] for k in entries}
    seen_ann: set[str] = set()
    n_crowd = 0
    for ann in doc["annotations"]:
        akey = _key(ann["id"])
        if akey in seen_ann:
            raise CocoError(f"{annotations}: annotation id {ann['id']!r} appears twice")
        seen_ann.add(akey)
        ikey = _key(ann["image_id"])
        if ikey not in entries:
            raise CocoError(f"{annotations}: annotation id {ann['id']!r} refers to unknown "
                            f"image_id {ann['image_id']!r}")
        if ann.get("iscrowd") and not keep_crowd:
            n_crowd += 1
            continue
        per_image[ikey].append(ann)
    return entries, per_image, n_crowd


def _type_from_coco(entry: Mapping[str, Any], anns: list[dict[str, Any]], from_filename: bool,
                    cats: Mapping[str, str], lookup: Callable[[str], str | None], where: str,
                    annotations: Path) -> tuple[str | None, str]:
    """``(cell type or None when unmapped, the cell line or category name it came from)``
    of one image, from its file name's cell line or its annotations' one category.

    Raises:
        CocoError: an unknown ``category_id``, or categories of more than one type.
    """
    if from_filename:
        line = cell_line(entry["file_name"])
        return lookup(line), line
    for a in anns:
        if _key(a.get("category_id")) not in cats:
            raise CocoError(f"{annotations}: annotation id {a['id']!r} ({where}) has "
                            f"category_id {a.get('category_id')!r}, which is not in "
                            f"'categories' (ids {sorted(cats)}); expected one of them")
    names = {cats[_key(a.get("category_id"))] for a in anns}
    kinds = {lookup(n) for n in names}
    if len(kinds) != 1:
        raise CocoError(f"{where}: its annotations have categories {sorted(names)}, "
                        f"which map to {len(kinds)} cell types; expected one per image")
    return kinds.pop(), sorted(names)[0]


def _check_images_and_masks(plan: list[tuple[str, dict[str, Any], Path, str, str]],
                            per_image: Mapping[str, list[dict[str, Any]]],
                            counts: dict[str, int],
                            progress: Callable[[str, int], None] | None
                            ) -> tuple[list[tuple], dict[str, dict[str, int]],
                                       list[tuple[dict[str, Any], Path, str]], int]:
    """Pass 1 of :func:`convert_coco`, before anything is written: each file's size against
    its entry (headers only) and every mask decoded into a train.csv row.

    Returns ``(rows, images and cells per type, (entry, file, id) of the images to write,
    empty masks dropped)``; an image whose masks are all empty is counted in ``counts``.

    Raises:
        CocoError: a size mismatch or an undecodable mask, naming the image and annotation.
    """
    rows: list[tuple] = []
    per_type: dict[str, dict[str, int]] = {}
    to_write: list[tuple[dict[str, Any], Path, str]] = []
    n_empty = 0
    for key, entry, path, image_id, kind in plan:
        where = f"image id {entry['id']!r} ({entry['file_name']})"
        height, width = int(entry["height"]), int(entry["width"])
        file_h, file_w = image_size(path)
        if (file_h, file_w) != (height, width):
            raise CocoError(f"{where}: file {path} is {file_w}x{file_h} (width x height) but "
                            f"the COCO entry says {width}x{height}")
        extra = {c: entry.get(c, "") for c in _EXTRA_COLUMNS}
        extra = {c: ("" if v is None else str(v)) for c, v in extra.items()}
        if not extra["sample_id"]:
            extra["sample_id"] = image_id
        n_cells = 0
        for ann in per_image[key]:
            idx = segmentation_indices(ann["segmentation"], (height, width),
                                       f"annotation id {ann['id']!r} (image id "
                                       f"{entry['id']!r})")
            if idx.size == 0:
                n_empty += 1
                continue
            rows.append((image_id, indices_to_rle(idx), width, height, kind,
                         *(extra[c] for c in _EXTRA_COLUMNS)))
            n_cells += 1
        if n_cells:
            to_write.append((entry, path, image_id))
            st = per_type.setdefault(kind, {"images": 0, "cells": 0})
            st["images"] += 1
            st["cells"] += n_cells
        else:
            counts["skipped_images_without_annotations"] += 1
        if progress is not None:
            progress("check", len(plan))
    return rows, per_type, to_write, n_empty


def convert_coco(images_dir: str | os.PathLike, annotations: str | os.PathLike,
                 out: str | os.PathLike, *, cell_type: str | None = None,
                 from_filename: bool = False, from_category: bool = False,
                 type_map: Mapping[str, str] | None = None, skip_unmapped: bool = False,
                 keep_crowd: bool = False, overwrite: bool = False,
                 progress: Callable[[str, int], None] | None = None,
                 command: Sequence[str] | None = None) -> ConvertSummary:
    """Write a competition-layout data root from a COCO instance dataset.

    Everything is checked before the output folder is touched: ids, cell types, image sizes
    (from the file headers) and every mask. Each file is written atomically, ``train.csv`` and
    ``source.json`` last. The train.csv rows are held in memory until then (a few hundred MB
    for all of LIVECell, less than its json).

    Args:
        images_dir: folder holding the images (searched recursively; LIVECell keeps one
            sub-folder per cell line).
        annotations: the COCO json.
        out: data root to write (``train.csv``, ``train/<id>.png``, ``source.json``).
        cell_type / from_filename / from_category: how each image gets its cell type
            (exactly one); ``type_map`` maps cell lines or category names to types.
        skip_unmapped: drop images whose line / category has no type instead of failing.
        keep_crowd: keep ``iscrowd: 1`` annotations (regions of many cells; dropped by default).
        overwrite: replace the data root's files in a non-empty ``out``.
        progress: called with (stage, number of images in the stage) after each image; the
            stages are "check" (sizes, masks; nothing written yet) and "write".
        command: the command line, recorded in ``source.json``.
    """
    images_dir, annotations, out = Path(images_dir), Path(annotations), Path(out)
    modes = sum([cell_type is not None, bool(from_filename), bool(from_category)])
    if modes != 1:
        raise CocoError("choose exactly one of --cell-type T, --cell-type-from-filename, "
                        "--cell-type-from-category")
    if cell_type is not None and cell_type not in CELL_TYPES:
        raise CocoError(f"--cell-type {cell_type!r}: expected one of {list(CELL_TYPES)}")
    mapping = {**DEFAULT_LINE_MAP, **{k.upper(): v for k, v in (type_map or {}).items()}}
    if not images_dir.is_dir():
        raise CocoError(f"{images_dir}: images folder not found")
    check_root_out(out, overwrite, protect=(images_dir, annotations))
    doc = load_coco(annotations)
    cats = {_key(c.get("id")): str(c.get("name", "")) for c in doc["categories"]
            if isinstance(c, dict)}

    def lookup(name: str) -> str | None:
        return mapping.get(name.upper()) or (name.lower() if name.lower() in CELL_TYPES
                                             else None)

    # Every id check happens before anything is written.
    entries, per_image, n_crowd = _index_annotations(doc, annotations, keep_crowd)

    by_rel, by_name = _index_images(images_dir)
    plan: list[tuple[str, dict[str, Any], Path, str, str]] = []
    taken: set[str] = set()
    file_of: dict[Path, Any] = {}  # file -> the image id that uses it
    counts = {"images_in_json": len(entries), "annotations_in_json": len(doc["annotations"]),
              "skipped_images_without_annotations": 0, "skipped_images_unmapped_type": 0,
              "skipped_crowd_annotations": n_crowd}
    unmapped: dict[str, int] = {}
    for key, entry in entries.items():
        where = f"image id {entry['id']!r} ({entry['file_name']})"
        anns = per_image[key]
        if not anns:
            counts["skipped_images_without_annotations"] += 1
            continue
        if cell_type is not None:
            kind: str | None = cell_type
        else:
            kind, name = _type_from_coco(entry, anns, from_filename, cats, lookup, where,
                                         annotations)
            if kind is None:
                unmapped[name] = unmapped.get(name, 0) + 1
        if kind is None:
            counts["skipped_images_unmapped_type"] += 1
            continue
        path = _find_image(entry["file_name"], by_rel, by_name, where)
        first = file_of.setdefault(path.resolve(), entry["id"])
        if first != entry["id"]:
            # Two entries of one file would write the second one's cells on the first one's
            # pixels under another id; a COCO file lists each image once.
            raise CocoError(f"{annotations}: image ids {first!r} and {entry['id']!r} both name "
                            f"file {path} ({entry['file_name']!r}); expected one image entry "
                            f"per file")
        image_id = safe_id(Path(path.name).stem)
        if image_id in taken:
            image_id = safe_id(f"{image_id}_{entry['id']}")
            if image_id in taken:
                raise CocoError(f"{where}: image id {image_id!r} is already taken")
        taken.add(image_id)
        plan.append((key, entry, path, image_id, kind))
    if unmapped and not skip_unmapped:
        what = "cell line(s)" if from_filename else "category name(s)"
        listing = ", ".join(f"{k or '<empty>'} ({v} images)" for k, v in sorted(unmapped.items()))
        raise CocoError(f"{annotations}: {what} with no known cell type: {listing}; the kit "
                        f"knows {list(CELL_TYPES)}: map them with --map NAME=TYPE or drop them "
                        f"with --skip-unmapped")
    if not plan:
        raise CocoError(f"{annotations}: no image left to convert (images "
                        f"{len(entries)}, without annotations "
                        f"{counts['skipped_images_without_annotations']}, unmapped "
                        f"{counts['skipped_images_unmapped_type']})")

    # Pass 1, nothing written yet: image sizes from the file headers, every mask decoded.
    rows, per_type, to_write, n_empty = _check_images_and_masks(plan, per_image, counts,
                                                               progress)
    if not rows:
        raise CocoError(f"{annotations}: every mask is empty; nothing to write")
    n_rescaled = 0

    # Pass 2: the images (8-bit PNG), then train.csv and source.json last, all in a temporary
    # sibling of ``out`` that replaces it only when complete (an --overwrite that fails on a
    # corrupt image keeps the old root; a killed run leaves ``out`` as it was).
    with fileio.replace_folder(out, carry=keep_user_entry) as stage:
        (stage / "train").mkdir()
        for entry, path, image_id in to_write:
            image, rescaled = read_image_uint8(path)
            n_rescaled += rescaled
            if image.shape != (int(entry["height"]), int(entry["width"])):
                raise CocoError(f"image id {entry['id']!r} ({entry['file_name']}): file {path} "
                                f"decodes to {image.shape[1]}x{image.shape[0]} (width x "
                                f"height) but the COCO entry says "
                                f"{entry['width']}x{entry['height']}")
            write_png(stage / "train" / f"{image_id}.png", image)
            if progress is not None:
                progress("write", len(to_write))
        columns = ["id", "annotation", "width", "height", "cell_type", *_EXTRA_COLUMNS]
        table = pd.DataFrame(rows, columns=columns)[list(TRAIN_COLUMNS)]
        fileio.write_text(stage / "train.csv", table.to_csv(index=False, lineterminator="\n"))
        counts.update({"images_written": sum(v["images"] for v in per_type.values()),
                       "cells_written": len(rows), "dropped_empty_masks": n_empty,
                       "rescaled_to_uint8": int(n_rescaled)})
        summary = ConvertSummary(out, counts, dict(sorted(per_type.items())))
        _write_source(stage / SOURCE_FILE, summary, images_dir, annotations, cell_type,
                      from_filename, mapping, unmapped, keep_crowd, command)
    return summary


def _write_source(path: Path, summary: ConvertSummary, images_dir: Path, annotations: Path,
                  cell_type: str | None, from_filename: bool, mapping: Mapping[str, str],
                  unmapped: Mapping[str, int], keep_crowd: bool,
                  command: Sequence[str] | None) -> None:
    """``source.json``: command, inputs, counts, date (written last, into the new root)."""
    mode = ("fixed" if cell_type is not None else "filename" if from_filename else "category")
    source = {
        "tool": "convert_coco",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else None,
        "images_dir": str(images_dir.resolve()),
        "annotations": str(annotations.resolve()),
        "annotations_sha256": fileio.file_digest(annotations),
        "cell_type_mode": mode, "cell_type": cell_type,
        "type_map": dict(sorted(mapping.items())) if mode != "fixed" else None,
        "unmapped_skipped": dict(sorted(unmapped.items())),
        "keep_crowd": bool(keep_crowd),
        "counts": summary.counts, "per_cell_type": summary.per_type,
    }
    fileio.write_text(path, json.dumps(source, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Data root -> COCO
# --------------------------------------------------------------------------------------------


def root_to_coco(root: str | os.PathLike, *, compressed: bool = True,
                 ids: Sequence[str] | None = None) -> dict[str, Any]:
    """A competition data root -> a COCO dict (RLE segmentations, so the trip back is exact).

    Images are ``<id>.png`` relative to ``root/train``; categories are the cell types; the
    competition's other columns (``sample_id``, ``plate_time``, ...) ride on the image
    entries and come back through :func:`convert_coco` with ``from_category=True``.
    """
    from cellseg.data.data_root import TrainData

    data = TrainData(root)
    wanted = list(data.ids) if ids is None else list(ids)
    cat_id = {t: i + 1 for i, t in enumerate(CELL_TYPES)}
    images, anns = [], []
    table = data.table
    for n, image_id in enumerate(wanted, start=1):
        rows = table.iloc[data.rows(image_id)]
        height, width = data.shape(image_id)
        first = rows.iloc[0]
        entry = {"id": n, "file_name": f"{image_id}.png", "width": width, "height": height}
        for c in _EXTRA_COLUMNS:
            if c in rows.columns:
                entry[c] = str(first[c])
        images.append(entry)
        kind = data.cell_type(image_id)
        for text in rows["annotation"]:
            idx = rle.decode_indices(text, (height, width), f"{data.csv_path.name}, id "
                                                             f"{image_id}")
            counts = indices_to_counts(idx, (height, width))
            ys, xs = np.divmod(idx, width)
            bbox = ([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)] if idx.size else [0, 0, 0, 0])
            anns.append({
                "id": len(anns) + 1, "image_id": n, "category_id": cat_id[kind],
                "segmentation": {"size": [height, width],
                                 "counts": encode_rle_string(counts) if compressed else counts},
                "area": int(idx.size), "bbox": bbox, "iscrowd": 0,
            })
    return {
        "info": {"description": f"converted from the data root {Path(root).name} by cellseg",
                 "date_created": _dt.date.today().isoformat()},
        "images": images, "annotations": anns,
        "categories": [{"id": i, "name": t, "supercategory": "cell"} for t, i in cat_id.items()],
    }


def write_coco(doc: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a COCO dict as json atomically; refuses to replace a file without ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CocoError(f"{path} exists; pass --overwrite to replace it")
    fileio.write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
    return path

