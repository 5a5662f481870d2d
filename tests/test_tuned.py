"""postprocess.yaml's one owner (cellseg.postprocess.tuned) and the one place of each default."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml

from cellseg.config import PostprocessParams, load_config
from cellseg.constants import CELL_TYPES
from cellseg.postprocess.decode import DEEP_DEFAULTS, decode_instances
from cellseg.postprocess.tuned import (
    TunedCellType,
    TunedPostprocess,
    check_tuned_on,
    model_digest,
    params_by_type,
)


def _tuned() -> TunedPostprocess:
    return TunedPostprocess(
        cell_types={"shsy5y": TunedCellType(params={"seed_threshold": 0.62, "min_area": 14},
                                            oof_score=0.41, default_score=0.37, n_images=3,
                                            n_trials=10, folds=[0, 1], study="s",
                                            best_trial=4, held_out_score=0.39,
                                            oof_fingerprint="abc", confidence_cutoff=0.25,
                                            confidence_score=0.42)},
        experiment="e", folds=[0, 1], heads="mean", tta=["identity", "hflip"],
        models={0: "aa", 1: "bb"}, date="2026-12-05T00:00:00+00:00", storage="sqlite",
        optuna="5.1.0", confidence_model="confidence-0123456789ab.skops",
        routing_scores={"shsy5y": {"shsy5y": 0.14, "astro": 0.05, "cort": 0.12}})


def test_decoder_defaults_stand_in_postprocess_params_only():
    """Every knob of decode_instances has its default from PostprocessParams, and the two
    name the same knobs: changing a default in one place changes it everywhere."""
    fields = {f.name: f.default for f in dataclasses.fields(PostprocessParams)}
    signature = {name: p.default for name, p in
                 inspect.signature(decode_instances).parameters.items() if name != "probs"}
    assert signature == fields == dict(DEEP_DEFAULTS)


def test_round_trip_keeps_every_field(tmp_path):
    tuned = _tuned()
    path = tuned.write(tmp_path / "postprocess.yaml")
    again = TunedPostprocess.read(path)
    assert again == tuned
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == ["method", "experiment", "folds", "heads", "tta", "models", "date",
                         "storage", "optuna", "confidence_model", "routing_scores",
                         "cell_types"]
    assert again.cutoffs() == {"shsy5y": 0.25}


def test_params_by_type_fills_defaults_for_every_type(tmp_path):
    base = PostprocessParams(mask_threshold=0.25)
    params = _tuned().params_by_type(base)
    assert list(params) == list(CELL_TYPES)
    assert params["shsy5y"]["seed_threshold"] == 0.62 and params["shsy5y"]["min_area"] == 14
    assert params["shsy5y"]["mask_threshold"] == 0.25  # from the base, not the file
    assert params["cort"] == dataclasses.asdict(base)


def test_missing_file_warns_and_gives_the_config_defaults(tmp_path):
    cfg = load_config(None, ["postprocess.seed_threshold=0.7"])
    with pytest.warns(UserWarning, match="not found"):
        params = params_by_type(tmp_path, cfg)
    assert all(p["seed_threshold"] == 0.7 for p in params.values())


@pytest.mark.parametrize("doc, message", [
    ({"method": "deep"}, "expected a 'cell_types' mapping"),
    ({"cell_types": {"neuron": {"params": {}}}}, "unknown cell type 'neuron'"),
    ({"cell_types": {"cort": {"oof_score": 0.3}}}, r"cell_types.cort.params must be a mapping"),
    ({"cell_types": {"cort": {"params": {"seed_treshold": 0.3}}}},
     r"cell_types.cort.params: unknown knob\(s\) \['seed_treshold'\]"),
    ({"cell_types": {"cort": {"params": {}, "confidence_cutoff": 1.5}}},
     r"cell_types.cort.confidence_cutoff must be a number in \[0, 1\]"),
    ({"confidence_model": "../../elsewhere.skops", "cell_types": {"cort": {"params": {}}}},
     "confidence_model must be a .skops file name beside it"),
    ({"confidence_model": "model.pkl", "cell_types": {"cort": {"params": {}}}},
     "confidence_model must be a .skops file name beside it"),
    ({"routing_scores": {"cort": {"neuron": 0.2}}, "cell_types": {"cort": {"params": {}}}},
     "routing_scores must map a cell type to a mapping of cell types to scores"),
])
def test_read_names_the_file_and_the_bad_field(tmp_path, doc, message):
    path = tmp_path / "postprocess.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=message) as info:
        TunedPostprocess.read(path)
    assert str(path) in str(info.value)


def test_confidence_model_loads_only_when_a_cutoff_uses_it(tmp_path):
    """No cut-off above 0: no model is read (a missing file is no error); a cut-off above 0
    and a missing model: the loader's error names the file."""
    from cellseg.postprocess.confidence import ConfidenceModelError

    tuned = _tuned()
    tuned.cell_types["shsy5y"].confidence_cutoff = 0.0
    assert tuned.load_confidence(tmp_path) is None
    tuned.cell_types["shsy5y"].confidence_cutoff = 0.3
    with pytest.raises(ConfidenceModelError, match="confidence-0123456789ab.skops"):
        tuned.load_confidence(tmp_path)


def test_classical_file_keeps_its_own_knobs(tmp_path):
    """The classical baseline's knobs are not the decoder's: they are not rejected, and its
    file records no heads / TTA / models (it reads raw images)."""
    tuned = TunedPostprocess(method="classical",
                             cell_types={"cort": TunedCellType(params={"block_size": 51})})
    path = tuned.write(tmp_path / "postprocess_classical.yaml")
    assert "heads" not in yaml.safe_load(path.read_text())
    assert TunedPostprocess.read(path).cell_types["cort"].params == {"block_size": 51}


def test_mismatch_names_heads_tta_and_retrained_models(tmp_path):
    model = tmp_path / "fold0" / "best.keras"
    model.parent.mkdir()
    model.write_bytes(b"one")
    tuned = dataclasses.replace(_tuned(), models={0: model_digest(model)})
    tuned.write(tmp_path / "postprocess.yaml")
    assert check_tuned_on(tmp_path, "mean", ["identity", "hflip"], [(0, model)]) == []
    model.write_bytes(b"two")
    with pytest.warns(UserWarning, match="retrained since tuning"):
        reasons = check_tuned_on(tmp_path, "last", ["identity"], [(0, model)])
    assert len(reasons) == 3
