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


#: The configs the README and Makefile name; each must ship and load.
SHIPPED_CONFIGS = ("default.yaml", "demo.yaml", "real_cpu.yaml")


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load(name):
    """Each shipped config exists, loads, and says what it is for: its name is the file's
    (the experiment folder it trains into), and every value it sets survives loading (no key
    silently dropped or replaced by a default)."""
    path = REPO / "configs" / name
    assert path.is_file(), f"{path} is missing"
    cfg = load_config(path)
    assert cfg.name == path.stem
    raw = yaml.safe_load(path.read_text())
    loaded = cfg.to_dict()
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert loaded[section][key] == value, (name, section, key)
        else:
            assert loaded[section] == values, (name, section)


def test_no_unlisted_config_ships():
    """A new config in configs/ is added to SHIPPED_CONFIGS (and so is checked above)."""
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted(SHIPPED_CONFIGS)


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(None, ["name=x", "train.learning_rate=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["name"] == "x"
