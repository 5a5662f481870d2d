"""How a prediction is read out of the network: its ``seg{j}`` heads and the test-time flips.

The one owner of three names that training, inference, export and the configs all use:

* ``seg{j}``: the network's segmentation outputs, ``j`` = 1 (shallowest UNet++ column) ..
  depth (deepest). Deep supervision trains all of them; without it only ``seg{depth}`` exists.
* ``heads``: ``"mean"`` (average every ``seg{j}``, a free ensemble), ``"last"`` (the deepest) or
  ``"prune=L"`` (run the UNet++ sub-network up to column L only, faster).
* TTA names: ``identity``, ``hflip``, ``vflip``, ``hvflip`` and the axes each flips.

No Keras import here: the config is validated with these rules before TensorFlow starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The network's input name (Keras, SavedModel and ONNX signatures).
INPUT_NAME = "image"
SEG_PREFIX = "seg"
_SEG_RE = re.compile(rf"^{SEG_PREFIX}(\d+)$")

TTA_FLIP_AXES: dict[str, tuple[int, ...]] = {
    "identity": (),
    "hflip": (2,),  # width axis of (B, H, W, C)
    "vflip": (1,),  # height axis
    "hvflip": (1, 2),
}
HEAD_MODES = ("mean", "last", "prune=L")


def seg_name(level: int) -> str:
    """``3`` -> ``"seg3"``."""
    return f"{SEG_PREFIX}{int(level)}"


def seg_level(name: str) -> int | None:
    """``"seg3"`` -> ``3``; None for any other output name (``cell_type``, ``seg3_logits``)."""
    m = _SEG_RE.match(name)
    return int(m.group(1)) if m else None


def seg_names(names: Iterable[str]) -> list[str]:
    """The ``seg{j}`` names among ``names``, shallowest first, deepest last."""
    found = [n for n in names if seg_level(n) is not None]
    return sorted(found, key=lambda n: seg_level(n))


def parse_heads(heads: str, depth: int | None = None) -> tuple[str, int | None]:
    """``"mean"`` -> ``("mean", None)``, ``"prune=2"`` -> ``("prune", 2)``.

    Raises:
        ValueError: anything else, or ``L`` outside ``1..depth`` when the depth is known; the
            message names the accepted forms (callers re-raise it as their own error kind).
    """
    if heads in ("mean", "last"):
        return heads, None
    level_text = heads[len("prune="):] if heads.startswith("prune=") else ""
    if not level_text.isdigit() or int(level_text) < 1:
        raise ValueError(f"heads: expected 'mean', 'last' or 'prune=L' (L >= 1), got {heads!r}")
    level = int(level_text)
    if depth is not None and level > depth:
        raise ValueError(f"heads: {heads!r}: L must be in 1..{depth}")
    return "prune", level


def check_tta(tta: Iterable[str]) -> list[str]:
    """The TTA names as a list; ValueError naming the accepted ones for an unknown or empty
    list."""
    tta = list(tta)
    bad = [t for t in tta if t not in TTA_FLIP_AXES]
    if bad or not tta:
        raise ValueError(f"tta {tta}: each must be one of {list(TTA_FLIP_AXES)}")
    return tta
