"""Image ids, which become file names: one rule for every CSV, data root and experiment name.

Ids come from CSVs and file stems (untrusted), and they name files (``train/<id>.png``,
``oof/<id>.npz``, overlays, caches), so each is checked before any path is built from it.
"""

from __future__ import annotations

import re

from cellseg.exceptions import DataError

# Image ids become file names (``train/<id>.png``, ``oof/<id>.npz``, overlays, caches), so an
# id must be one safe file name: no path separator, no ``..``, no hidden file, no option
# look-alike. The competition's ids are 12 hex characters; ids made from file stems
# (``cellseg.data.coco.safe_id``) use the same alphabet.
ID_CHARS = "A-Za-z0-9_.-"
MAX_ID_LENGTH = 200
SAFE_ID = re.compile(rf"[A-Za-z0-9_][{ID_CHARS}]{{0,{MAX_ID_LENGTH - 1}}}")


def is_safe_id(image_id: object) -> bool:
    """True if ``image_id`` can be used as a file name inside a data or output folder."""
    return isinstance(image_id, str) and SAFE_ID.fullmatch(image_id) is not None


def check_image_id(image_id: object, where: str = "") -> str:
    """Return ``image_id`` if it is safe as a file name (:data:`SAFE_ID`), else raise.

    Raises:
        DataError: naming ``where`` (file and row) and the rule.
    """
    if not is_safe_id(image_id):
        prefix = f"{where}: " if where else ""
        raise DataError(
            f"{prefix}image id {image_id!r} is not a safe file name; expected 1-{MAX_ID_LENGTH} "
            f"characters of [{ID_CHARS}] not starting with '.' or '-' (no path separators)"
        )
    return str(image_id)
