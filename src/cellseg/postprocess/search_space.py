"""What ``tune.py``'s Optuna study samples: one :class:`SearchRange` per knob, per method.

The defaults come from the decoding functions' own signatures (``DEEP_DEFAULTS``,
``CLASSICAL_DEFAULTS``), so a knob added to a decoder is tunable once it gets a range here.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cellseg.postprocess.classical import _POLARITIES

# --------------------------------------------------------------------------------------------
# Defaults and search spaces (what tune.py's Optuna study samples)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchRange:
    """The range of one tunable knob, in Optuna's terms.

    Attributes:
        kind: "float", "int" or "categorical".
        low, high: inclusive bounds for "float" / "int".
        log: sample on a log scale (bounds must be > 0).
        choices: the options for "categorical".
    """

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"SearchRange({self.kind}): need low <= high, got "
                                 f"{self.low}, {self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"SearchRange: log scale needs low > 0, got {self.low}")
        elif self.kind == "categorical":
            if not self.choices:
                raise ValueError("SearchRange(categorical): choices must not be empty")
        else:
            raise ValueError(f"SearchRange.kind must be float, int or categorical, "
                             f"got {self.kind!r}")

    def suggest(self, trial: Any, name: str) -> Any:
        """Sample this knob from an Optuna ``trial`` (duck-typed: no optuna import here)."""
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this range (used to check saved, tuned parameters)."""
        if self.kind == "categorical":
            return value in self.choices
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for YAML/JSON reports)."""
        if self.kind == "categorical":
            return {"kind": self.kind, "choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log}


#: What Optuna tunes per cell type for the deep model (``compactness`` and ``connectivity``
#: stay at their defaults: they rarely matter once the border channel separates cells).
DEEP_SEARCH_SPACE: Mapping[str, SearchRange] = types.MappingProxyType({
    "seed_threshold": SearchRange("float", 0.2, 0.9),
    "mask_threshold": SearchRange("float", 0.1, 0.7),
    "min_seed_area": SearchRange("int", 1, 100, log=True),
    "min_area": SearchRange("int", 1, 300, log=True),
    "keep_unseeded": SearchRange("categorical", choices=(True, False)),
    "fill_holes": SearchRange("categorical", choices=(True, False)),
})

#: What Optuna tunes per cell type for the classical baseline.
CLASSICAL_SEARCH_SPACE: Mapping[str, SearchRange] = types.MappingProxyType({
    "background_sigma": SearchRange("float", 8.0, 80.0, log=True),
    "smooth_sigma": SearchRange("float", 0.0, 4.0),
    "polarity": SearchRange("categorical", choices=_POLARITIES),
    "threshold_scale": SearchRange("float", 0.5, 1.5),
    "open_radius": SearchRange("int", 0, 5),
    "min_distance": SearchRange("int", 2, 20),
    "min_area": SearchRange("int", 5, 300, log=True),
})


def suggest_params(trial: Any, space: Mapping[str, SearchRange], prefix: str = "") -> dict:
    """Sample every knob of ``space`` from an Optuna trial.

    Args:
        trial: an ``optuna.Trial`` (anything with ``suggest_float/int/categorical``).
        space: e.g. :data:`DEEP_SEARCH_SPACE` or :data:`CLASSICAL_SEARCH_SPACE`.
        prefix: prepended to Optuna's parameter names (e.g. ``"shsy5y."``) so one study can
            tune several cell types; the returned keys have no prefix.

    Returns:
        ``{knob: value}``, ready for ``decode_with_params`` or ``classical_segment(**...)``.
    """
    return {name: rng.suggest(trial, f"{prefix}{name}") for name, rng in space.items()}
