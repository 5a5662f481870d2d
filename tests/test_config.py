from pathlib import Path

import pytest
import yaml

from cellseg.config import Config, ConfigError, load_config, parse_override, save_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_override():
    cfg = load_config(None, ["train.epochs=3", "model.widths=[8,16,32]", "augment.crop_size=64"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3
    assert cfg.model.widths == [8, 16, 32]


def test_parse_override_nested():
    assert parse_override("a.b.c=1.5") == {"a": {"b": {"c": 1.5}}}


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown key.*epoch"),
    ("trian.epochs=3", "unknown key.*trian"),
    ("train.epochs=three", "train.epochs: expected an integer"),
    ("model.attention=3", "expected true/false"),
    ("augment.crop_size=100", "multiple of"),
    ("infer.heads=prune=9", "L must be in"),
    ("infer.tta=[spin]", "infer.tta"),
    ("noequals", "KEY=VALUE"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_file_names_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*epochz.*valid keys"):
        load_config(path)


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(None, ["name=x", "train.learning_rate=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["name"] == "x"
