"""Typed experiment configuration: YAML file + ``--set a.b=v`` overrides -> dataclasses.

Why dataclasses: a typo in a key is an error at start-up (naming the key and the valid ones),
not a silently ignored setting discovered after a night of training. The resolved config is
saved next to every output so any result can be reproduced.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellseg import fileio
from cellseg.constants import CELL_TYPES, DEFAULT_DATA_DIR
from cellseg.exceptions import ConfigError


@dataclass
class DataConfig:
    """Where the data lives and how it is split."""

    root: str = DEFAULT_DATA_DIR
    n_folds: int = 5
    folds_seed: int = 42
    # Where instance targets are cached ("" = <root>/.cache/targets).
    cache_dir: str = ""
    # Extra training data roots (same layout; no folds.csv needed), "ROOT" or "ROOT:WEIGHT":
    # every image of them joins every fold's training set, drawn WEIGHT times as often as a
    # main-root image (default 1). Folds stay defined on ``root`` only.
    extra: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    """Architecture switches: one code path builds every row of the paper's comparison."""

    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    nested: bool = True  # UNet++ dense nested skips; False = plain U-Net skips
    attention: bool = True  # additive attention gates on skip inputs
    deep_supervision: bool = True  # 1x1 heads on X^{0,1..L}; False = one head on X^{0,L}
    cell_type_head: bool = True
    n_targets: int = 2  # output channels per head: body, touching border (3: + centre map)
    dropout: float = 0.0
    norm: str = "batch"  # "batch" or "none"


@dataclass
class AugmentConfig:
    """Training augmentation (albumentations)."""

    crop_size: int = 256
    foreground_crop_p: float = 0.7  # share of crops centred on an annotated pixel
    flips: bool = True
    rotate90: bool = True
    shift_scale_rotate: bool = True
    scale_limit: float = 0.15
    elastic: float = 0.0  # probability of an elastic deformation (cellseg.train.augment)
    brightness_contrast: float = 0.2
    gamma: bool = True
    blur: bool = True
    noise: bool = True


@dataclass
class TrainConfig:
    """Optimisation and schedule."""

    epochs: int = 60
    steps_per_epoch: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    early_stopping_patience: int = 15
    score_every: int = 1  # validation competition score every N epochs
    max_val_images: int = 0  # 0 = all validation images
    body_weight: float = 1.0
    border_weight: float = 1.0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    cell_type_weight: float = 0.1
    # Extra BCE weight on pixels within ``outline_width`` px of a true cell's outline (body
    # channel's edge), so that the loss spends itself where the matched cells lose their IoU
    # (cellseg.model.losses.outline_weights); 0 = plain BCE.
    outline_weight: float = 0.0
    outline_width: int = 2
    # Body channel's per-image Lovász IoU loss (cellseg.model.losses.lovasz_jaccard_per_image)
    # on top of BCE + Dice; 0 = off.
    lovasz_weight: float = 0.0
    border_radius_max: int = 4  # cap of the touching band's half-width (cellseg.model.targets)
    mixed_precision: bool = False
    xla: bool = False
    workers: int = 2
    balance_cell_types: bool = True  # sample the cell type uniformly, then an image of it
    distribute: str = "auto"  # auto | none | mirrored | multiworker (TF_CONFIG)
    cpu_replicas: int = 0  # >1: mirror over this many logical CPU devices (testing)
    time_budget_min: float = 0.0  # stop training after this many minutes (0 = no limit)
    # A .keras model (e.g. pre-trained on other data) whose layers of equal name and shape
    # initialise the network ("" = random initialisation).
    init_from: str = ""


@dataclass
class PostprocessParams:
    """Semantic-to-instance decoding knobs (DSB 2018 winners' defaults): the one place each
    default stands. :func:`cellseg.postprocess.decode.decode_instances` documents each knob
    and takes its defaults from here; ``tune.py`` tunes them per cell type
    (:mod:`cellseg.postprocess.tuned`)."""

    seed_threshold: float = 0.5
    mask_threshold: float = 0.3
    min_seed_area: int = 10
    min_area: int = 10
    keep_unseeded: bool = True  # a mask region with no seed becomes its own instance
    fill_holes: bool = True
    compactness: float = 0.0  # 0 = classic watershed
    connectivity: int = 1  # 1 = 4-neighbour, 2 = 8-neighbour
    smooth_sigma: float = 0.0  # Gaussian on the maps before thresholding; 0 = off
    split_height: float = 0.0  # h-maxima split of seeds at necks; 0 = off
    merge_border: float = 0.0  # merge neighbours whose boundary's mean border prob is below


@dataclass
class InferConfig:
    """Test-time settings."""

    tta: list[str] = field(default_factory=lambda: ["identity", "hflip", "vflip", "hvflip"])
    heads: str = "mean"  # "mean" of deep-supervision heads, "last", or "prune=L"
    folds: list[int] = field(default_factory=list)  # empty = every trained fold found
    batch_size: int = 4
    # Drop decoded cells below their type's tuned confidence cut-off (postprocess.yaml's
    # confidence_model); false decodes every cell as tuned, without the filter.
    confidence: bool = True


@dataclass
class TuneConfig:
    """Optuna search over post-processing per cell type."""

    n_trials: int = 60
    seed: int = 42
    n_jobs: int = 2  # processes evaluating images inside one trial
    # After the decoder: fit the per-cell confidence model on the OOF cells (cross-fitted)
    # and choose a cut-off per type (cellseg.tune.confidence_fit); false = no filter.
    confidence: bool = True


@dataclass
class Config:
    """The whole experiment."""

    name: str = "default"
    seed: int = 42
    output_dir: str = "output"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessParams = field(default_factory=PostprocessParams)
    infer: InferConfig = field(default_factory=InferConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def experiment_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value against its annotated type, with an error naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = _field_types(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {unknown}; valid keys: {sorted(hints)}"
        )
    kwargs = {
        key: _coerce(val, hints[key], f"{where}.{key}" if where else key)
        for key, val in values.items()
    }
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in update.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = val
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``train.epochs=3`` into ``{"train": {"epochs": 3}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key part in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Load a YAML config (or the defaults), apply ``KEY=VALUE`` overrides, validate.

    Args:
        path: YAML file; ``None`` gives the built-in defaults.
        overrides: strings like ``"train.epochs=3"``; values are parsed as YAML.

    Returns:
        The resolved :class:`Config`.

    Raises:
        ConfigError: unknown key, wrong type, or unreadable file (message names which).
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        values = loaded
    for text in overrides or []:
        values = _merge(values, parse_override(text))
    try:
        cfg = _build(Config, values, "")
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None
    check_config(cfg)
    return cfg


def parse_extra(entry: str) -> tuple[str, float]:
    """``"ROOT"`` or ``"ROOT:WEIGHT"`` (a ``data.extra`` entry) -> ``(root, weight)``."""
    root, sep, weight = str(entry).rpartition(":")
    if not sep or not weight or "/" in weight or "\\" in weight:
        return str(entry), 1.0  # no weight (a ':' inside the path is part of it)
    try:
        value = float(weight)
    except ValueError:
        return str(entry), 1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"data.extra: {entry!r}: the weight after ':' must be a positive "
                          f"number")
    if not root:
        raise ConfigError(f"data.extra: {entry!r}: expected ROOT or ROOT:WEIGHT")
    return root, value


# (section, key) -> (lowest allowed, highest allowed, lowest is exclusive); None = unbounded.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {
    ("", "seed"): (0, None, False),
    ("data", "folds_seed"): (0, None, False),
    ("model", "n_targets"): (2, 3, False),
    ("model", "dropout"): (0, 1, False),
    ("augment", "crop_size"): (0, None, True),
    ("augment", "foreground_crop_p"): (0, 1, False),
    ("augment", "scale_limit"): (0, None, False),
    ("augment", "elastic"): (0, 1, False),
    ("augment", "brightness_contrast"): (0, None, False),
    ("train", "epochs"): (1, None, False),
    ("train", "steps_per_epoch"): (1, None, False),
    ("train", "batch_size"): (1, None, False),
    ("train", "learning_rate"): (0, None, True),
    ("train", "weight_decay"): (0, None, False),
    ("train", "warmup_epochs"): (0, None, False),
    ("train", "early_stopping_patience"): (1, None, False),
    ("train", "score_every"): (1, None, False),
    ("train", "max_val_images"): (0, None, False),
    ("train", "body_weight"): (0, None, False),
    ("train", "border_weight"): (0, None, False),
    ("train", "bce_weight"): (0, None, False),
    ("train", "dice_weight"): (0, None, False),
    ("train", "cell_type_weight"): (0, None, False),
    ("train", "outline_weight"): (0, None, False),
    ("train", "lovasz_weight"): (0, None, False),
    ("train", "outline_width"): (1, None, False),
    ("train", "border_radius_max"): (1, None, False),
    ("train", "workers"): (0, None, False),
    ("train", "cpu_replicas"): (0, None, False),
    ("train", "time_budget_min"): (0, None, False),
    ("postprocess", "min_seed_area"): (0, None, False),
    ("postprocess", "min_area"): (0, None, False),
    ("postprocess", "merge_border"): (0, 1, False),
    ("infer", "batch_size"): (1, None, False),
    ("tune", "n_trials"): (1, None, False),
    ("tune", "seed"): (0, None, False),
    ("tune", "n_jobs"): (1, None, False),
}


def _check_ranges(cfg: Config) -> None:
    for (section, key), (low, high, exclusive) in _RANGES.items():
        value = getattr(getattr(cfg, section) if section else cfg, key)
        name = f"{section}.{key}" if section else key
        if value != value:  # NaN
            raise ConfigError(f"{name}: got NaN; expected a number")
        if low is not None and (value <= low if exclusive else value < low):
            expected = f"> {low}" if exclusive else f">= {low}"
            raise ConfigError(f"{name}: got {value}; expected {expected}"
                              + (f" and <= {high}" if high is not None else ""))
        if high is not None and value > high:
            raise ConfigError(f"{name}: got {value}; expected <= {high}")


def check_model_config(m: ModelConfig, n_cell_types: int = len(CELL_TYPES)) -> None:
    """The architecture's own rules, checked once for the whole config (:func:`check_config`)
    and again by :func:`cellseg.model.network.build_model` for a model section built alone.

    Raises:
        ConfigError: naming the field.
    """
    if len(m.widths) < 2:
        raise ConfigError(f"model.widths: need at least 2 levels, got {m.widths}")
    if any(int(w) < 1 for w in m.widths):
        raise ConfigError(f"model.widths: all widths must be positive, got {m.widths}")
    if m.norm not in ("batch", "none"):
        raise ConfigError(f"model.norm: expected 'batch' or 'none', got {m.norm!r}")
    if m.n_targets < 1:
        raise ConfigError(f"model.n_targets must be >= 1, got {m.n_targets}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if m.cell_type_head and n_cell_types < 2:
        raise ConfigError(f"n_cell_types must be >= 2 for a cell-type head, got {n_cell_types}")


def check_config(cfg: Config) -> None:
    """Semantic checks that types alone cannot express; errors name the key."""
    _check_ranges(cfg)
    from cellseg.ids import is_safe_id

    if not is_safe_id(cfg.name):
        raise ConfigError(f"name: {cfg.name!r} is not a safe folder name (the experiment "
                          f"folder {cfg.output_dir}/<name>); use letters, digits, '_', '.', "
                          f"'-' (--exp)")
    for entry in cfg.data.extra:
        parse_extra(entry)
    m = cfg.model
    check_model_config(m)
    depth = len(m.widths) - 1
    if cfg.augment.crop_size % (2**depth):
        raise ConfigError(
            f"augment.crop_size={cfg.augment.crop_size} must be a multiple of 2^{depth}"
            f"={2**depth} (the model has {depth} down-sampling steps)"
        )
    from cellseg.readout import check_tta, parse_heads

    try:
        parse_heads(cfg.infer.heads, depth)
    except ValueError as exc:
        raise ConfigError(f"infer.{exc}") from None
    if cfg.train.distribute not in ("auto", "none", "mirrored", "multiworker"):
        raise ConfigError(f"train.distribute: expected auto/none/mirrored/multiworker, "
                          f"got {cfg.train.distribute!r}")
    try:
        check_tta(cfg.infer.tta)
    except ValueError as exc:
        raise ConfigError(f"infer.{exc}") from None
    if cfg.data.n_folds < 2:
        raise ConfigError(f"data.n_folds must be >= 2, got {cfg.data.n_folds}")
    p = cfg.postprocess
    for name in ("seed_threshold", "mask_threshold"):
        val = getattr(p, name)
        if not 0.0 <= val <= 1.0:
            raise ConfigError(f"postprocess.{name} must be in [0, 1], got {val}")


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    fileio.write_yaml(path, cfg.to_dict())


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from a saved dict (e.g. the YAML next to a model)."""
    cfg = _build(Config, values, "")
    check_config(cfg)
    return cfg


__all__ = [
    "CELL_TYPES",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "InferConfig",
    "ModelConfig",
    "PostprocessParams",
    "check_model_config",
    "TrainConfig",
    "TuneConfig",
    "config_from_dict",
    "load_config",
    "parse_extra",
    "parse_override",
    "save_config",
]
