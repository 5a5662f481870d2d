"""Tests of Optuna post-processing tuning (cellseg.tune, src/tune.py) on tiny synthetic OOF
maps.

The OOF maps are made from the truth: a blurred body map and a touching-border map, with a
background bias (the body map never falls under ~0.28 off the cells, as an over-confident
network's would). The config defaults (mask_threshold 0.3) then take nearly the whole image as
foreground and score ~0.03, so tuning has a large, reliable gain to find.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import optuna
import pytest
import yaml
from tiny_data import make_tiny_root

from cellseg.config import load_config
from cellseg.constants import CELL_TYPES
from cellseg.data.data_root import TrainData
from cellseg.data.folds import load_folds
from cellseg.exceptions import TuningError
from cellseg.model.targets import make_targets
from cellseg.postprocess.search_space import CLASSICAL_SEARCH_SPACE, DEEP_SEARCH_SPACE
from cellseg.train import oof
from cellseg.postprocess import tuned
from cellseg.postprocess.decode import DEEP_DEFAULTS
from cellseg.tune.eval_sets import load_eval_sets
from cellseg.tune.scoring import Evaluator
from cellseg.tune.storage import default_storage, describe_storage, make_storage, study_name
from cellseg.tune.study import run_tuning

REPO = Path(__file__).resolve().parents[1]
TUNE = REPO / "src" / "tune.py"
EXP = "tiny"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _write_oof(data_root: Path, exp_dir: Path, seed: int = 0) -> None:
    data = TrainData(data_root)
    folds = load_folds(data_root / "folds.csv")
    rng = np.random.default_rng(seed)
    for image_id, fold in zip(folds["id"], folds["fold"]):
        target = make_targets(data.load_instances(image_id)).astype(np.float32)
        body = 0.28 + 0.72 * cv2.GaussianBlur(target[..., 0], (0, 0), 1.0)
        border = cv2.GaussianBlur(target[..., 1], (0, 0), 1.0)
        probs = np.stack([body, border], -1) + rng.normal(0, 0.03, target.shape)
        oof.save_oof(exp_dir / f"fold{fold}", image_id, np.clip(probs, 0, 1),
                     np.full(len(CELL_TYPES), 1 / 3, np.float32))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A tiny data root (9 images, 3 per type, 3 folds) and its OOF maps, made once."""
    base = tmp_path_factory.mktemp("tuning_template")
    make_tiny_root(base / "data")
    _write_oof(base / "data", base / "oof" / EXP)
    return base


@pytest.fixture
def cfg(template, tmp_path):
    """Config of a fresh experiment folder (its own copy of the OOF maps) per test."""
    shutil.copytree(template / "oof", tmp_path / "out")
    return load_config(None, [f"data.root={template / 'data'}", f"name={EXP}",
                              f"output_dir={tmp_path / 'out'}", "tune.n_jobs=1"])


def _study_names(storage, method: str, cell_type: str) -> list[str]:
    base = study_name(EXP, method, cell_type)
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage)
                  if s.study_name.startswith(base + "-"))


def _study(cfg, cell_type: str, storage: str | None = None, method: str = "deep"):
    """The one study of ``cell_type`` (its name ends with the OOF maps' fingerprint)."""
    storage = storage or default_storage(cfg.experiment_dir())
    (name,) = _study_names(storage, method, cell_type)
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_tuning_beats_defaults_for_every_type(cfg):
    report = run_tuning(cfg, n_trials=10, log=None)
    doc = yaml.safe_load(report.output_path.read_text())
    assert report.output_path == cfg.experiment_dir() / "postprocess.yaml"
    assert doc["method"] == "deep" and doc["folds"] == [0, 1, 2] and doc["date"]
    assert list(doc["cell_types"]) == list(CELL_TYPES)
    sets = load_eval_sets(cfg, log=None)
    # Hand-set parameters that separate the cells from the biased background (0.28): what a
    # working search should reach, not merely "better than the rigged defaults".
    good = {**{k: getattr(cfg.postprocess, k) for k in DEEP_SEARCH_SPACE},
            "mask_threshold": 0.5, "seed_threshold": 0.7}
    with Evaluator(sets, n_jobs=1) as ev:
        defaults = tuned.TunedPostprocess().params_by_type(cfg.postprocess)
        good_scores = {t: ev.score(t, {**defaults[t], **good}) for t in CELL_TYPES}
    for cell_type, entry in doc["cell_types"].items():
        assert entry["n_images"] == 3 and entry["n_trials"] == 10
        assert entry["oof_score"] > entry["default_score"] + 0.2, (cell_type, entry)
        assert entry["params"]["mask_threshold"] > 0.28, entry  # above the background bias
        assert entry["oof_score"] >= good_scores[cell_type] - 0.1, (entry, good_scores)
        assert entry["held_out_score"] is not None
        assert entry["held_out_score"] <= entry["oof_score"] + 1e-9
        assert entry["oof_fingerprint"] == sets[cell_type].fingerprint()
        assert set(DEEP_SEARCH_SPACE) <= set(entry["params"]) == set(DEEP_DEFAULTS)
        # The defaults are trial 0 of each study.
        first = _study(cfg, cell_type).trials[0]
        assert first.params == {k: getattr(cfg.postprocess, k) for k in DEEP_SEARCH_SPACE}
        assert first.value == pytest.approx(entry["default_score"], abs=1e-6)
        assert (cfg.experiment_dir() / "tuning" / f"deep-{cell_type}-history.png").is_file()
        assert (cfg.experiment_dir() / "tuning" / f"deep-{cell_type}-importances.png").is_file()
    assert doc["heads"] is None or isinstance(doc["heads"], str)
    # What a wrong cell type costs: the diagonal is each type's own tuned OOF score.
    for t, row in doc["routing_scores"].items():
        assert set(row) == set(CELL_TYPES)
        assert row[t] == pytest.approx(doc["cell_types"][t]["oof_score"], abs=1e-5)
    # The confidence filter (tune.confidence): a cut-off per type, and the model they use is
    # the file the YAML names, beside it, loadable; no cut-off above 0 -> no model named.
    cutoffs = {t: e["confidence_cutoff"] for t, e in doc["cell_types"].items()}
    assert all(0 <= v <= 1 for v in cutoffs.values())
    if any(v > 0 for v in cutoffs.values()):
        assert tuned.TunedPostprocess.read(report.output_path).load_confidence(
            cfg.experiment_dir()) is not None
    else:
        assert "confidence_model" not in doc
    # What inference reads back, re-scored serially and in two processes, gives the saved score.
    params = tuned.params_by_type(cfg.experiment_dir(), cfg)
    with Evaluator(sets, n_jobs=1) as serial, Evaluator(sets, n_jobs=2) as pooled:
        for cell_type in CELL_TYPES:
            scores = serial.image_scores(cell_type, params[cell_type])
            np.testing.assert_allclose(pooled.image_scores(cell_type, params[cell_type]), scores)
            assert scores.mean() == pytest.approx(doc["cell_types"][cell_type]["oof_score"],
                                                  abs=1e-6)


@pytest.mark.parametrize("confidence", [True, False])
def test_no_cutoff_outlives_the_model_it_was_chosen_with(cfg, confidence):
    """A type kept from an earlier tuning (--cell-types subset) loses its confidence cut-off:
    the model it was chosen with is replaced; with tune.confidence false none is named."""
    tuned.TunedPostprocess(
        cell_types={"astro": tuned.TunedCellType(params={"min_area": 12},
                                                 confidence_cutoff=0.4)},
        confidence_model="confidence-0123456789ab.skops",
    ).write(cfg.experiment_dir() / "postprocess.yaml")
    cfg.tune.confidence = confidence
    report = run_tuning(cfg, n_trials=1, cell_types=["cort"], plots=False, log=None)
    again = tuned.TunedPostprocess.read(report.output_path)
    assert again.cell_types["astro"].params == {"min_area": 12}  # kept
    assert again.cell_types["astro"].confidence_cutoff == 0.0
    if not confidence:
        assert again.confidence_model is None and report.confidence is None
        assert again.cutoffs() == {"astro": 0.0, "cort": 0.0}
    elif again.confidence_model is not None:
        assert again.confidence_model != "confidence-0123456789ab.skops"
        assert (cfg.experiment_dir() / again.confidence_model).is_file()


def test_interrupted_study_resumes(cfg):
    run_tuning(cfg, n_trials=3, cell_types=["cort"], plots=False, log=None)
    report = run_tuning(cfg, n_trials=3, cell_types=["cort"], plots=False, log=None)
    trials = _study(cfg, "cort").trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # Defaults enqueued once; the resumed sampler did not repeat the first run's points.
    defaults = {k: getattr(cfg.postprocess, k) for k in DEEP_SEARCH_SPACE}
    assert sum(t.params == defaults for t in trials) == 1
    assert trials[4].params != trials[1].params
    (result,) = report.results
    assert (result.n_trials, result.n_trials_this_run) == (6, 3)
    doc = yaml.safe_load(report.output_path.read_text())
    assert doc["cell_types"]["cort"]["n_trials"] == 6


def test_other_images_or_retrained_folds_start_a_fresh_study(cfg, template):
    """Trials scored on other OOF maps never compete with the new ones (issue 11 item 1): a
    second `make demo` retrains the folds and must not continue the old study."""
    storage = default_storage(cfg.experiment_dir())
    first = run_tuning(cfg, n_trials=2, folds=[0, 1], cell_types=["astro"], plots=False,
                       log=None)
    run_tuning(cfg, n_trials=1, folds=[0], cell_types=["astro"], plots=False, log=None)
    assert len(_study_names(storage, "deep", "astro")) == 2
    # "Retrain": same images, other maps (another noise seed) -> another fingerprint.
    for path in cfg.experiment_dir().glob("fold*/oof/*.npz"):
        path.unlink()
    _write_oof(Path(template / "data"), cfg.experiment_dir(), seed=1)
    messages: list[str] = []
    again = run_tuning(cfg, n_trials=2, folds=[0, 1], cell_types=["astro"], plots=False,
                       log=messages.append)
    (r1,), (r2,) = first.results, again.results
    assert r1.oof_fingerprint != r2.oof_fingerprint and r1.study_name != r2.study_name
    assert r2.n_trials == 2  # nothing inherited from the old maps' study
    assert any("starting a fresh study" in m for m in messages)
    assert len(_study_names(storage, "deep", "astro")) == 3
    doc = yaml.safe_load(again.output_path.read_text())
    assert doc["cell_types"]["astro"]["oof_fingerprint"] == r2.oof_fingerprint


def test_held_out_score_is_chosen_on_the_other_half():
    from types import SimpleNamespace

    from cellseg.tune.study import held_out_score

    ids = ["a", "b", "c", "d"]  # halves: {a, c} and {b, d}
    trials = [SimpleNamespace(user_attrs={"image_scores": s}) for s in (
        [0.9, 0.1, 0.9, 0.1],   # best on {a, c}
        [0.1, 0.9, 0.1, 0.9],   # best on {b, d}
        [0.5, 0.5, 0.5, 0.5])]  # best in-sample would be any: all have mean 0.5
    # Chosen on {a, c} -> trial 0, scored on {b, d}: 0.1; and the other way round: 0.1.
    assert held_out_score(trials, ids) == pytest.approx(0.1)
    assert held_out_score(trials, ["a"]) is None
    assert held_out_score([SimpleNamespace(user_attrs={})], ids) is None


def _tune_cmd(cfg, tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(TUNE), "--exp", EXP, "--data-dir", cfg.data.root,
            "--set", f"output_dir={tmp_path / 'out'}", "--n-jobs", "1", "--no-plots", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study(cfg, tmp_path, kind):
    storage = (f"journal:{tmp_path / 'shared' / 'tune.log'}" if kind == "journal"
               else f"sqlite:///{tmp_path / 'shared' / 'tune.db'}")
    procs = [subprocess.Popen(_tune_cmd(cfg, tmp_path, "--storage", storage, "--n-trials", "5",
                                        "--cell-types", "cort", "--worker-index", str(k)),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for k in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert "cort" in out
    store = make_storage(storage, cfg.experiment_dir())
    (name,) = _study_names(store, "deep", "cort")  # both workers joined the same study
    study = optuna.load_study(study_name=name, storage=store)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 10 and len(study.trials) == 10


def test_missing_oof_is_a_clear_error(cfg, tmp_path, capsys, monkeypatch):
    from cellseg.commands import tune

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    shutil.rmtree(tmp_path / "out")
    code = tune.main(["--exp", EXP, "--data-dir", cfg.data.root, "--set",
                      f"output_dir={tmp_path / 'out'}", "--n-trials", "1", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: no out-of-fold predictions") and "src/train.py --fold" in err
    assert "Traceback" not in err


def test_cell_type_without_oof_is_skipped_or_an_error(cfg):
    for path in (cfg.experiment_dir()).glob("fold*/oof/*.npz"):
        if TrainData(cfg.data.root).cell_type(path.stem) == "cort":
            path.unlink()
    with pytest.warns(UserWarning, match="no OOF images of cell type 'cort'"):
        report = run_tuning(cfg, n_trials=1, plots=False, log=None)
    assert [r.cell_type for r in report.results] == ["shsy5y", "astro"]
    with pytest.raises(TuningError, match=r"no OOF images of cell type\(s\) \['cort'\]"):
        run_tuning(cfg, n_trials=1, cell_types=["cort"], plots=False, log=None)


def test_classical_tuning_writes_its_own_file(cfg):
    t0 = time.perf_counter()
    report = run_tuning(cfg, method="classical", n_trials=3, plots=False, log=None)
    assert time.perf_counter() - t0 < 20
    assert report.output_path.name == "postprocess_classical.yaml"
    assert not (cfg.experiment_dir() / "postprocess.yaml").exists()
    doc = yaml.safe_load(report.output_path.read_text())
    assert doc["method"] == "classical"
    for cell_type in CELL_TYPES:
        entry = doc["cell_types"][cell_type]
        assert set(entry["params"]) == set(CLASSICAL_SEARCH_SPACE)
        assert entry["oof_score"] >= entry["default_score"] and entry["n_trials"] == 3
        assert _study(cfg, cell_type, method="classical").trials[0].params["polarity"] == "dark"
    # With no OOF maps at all, the classical baseline takes the fold images from folds.csv.
    for fold_dir in cfg.experiment_dir().glob("fold*"):
        shutil.rmtree(fold_dir)
    report = run_tuning(cfg, method="classical", n_trials=1, cell_types=["cort"], plots=False,
                        log=None)
    assert report.results[0].n_images == 3 and report.results[0].n_trials == 4


def test_storage_specs(tmp_path):
    journal = make_storage(f"journal:{tmp_path / 'a' / 'j.log'}", tmp_path)
    assert isinstance(journal, optuna.storages.JournalStorage)
    assert isinstance(make_storage(str(tmp_path / "b.db"), tmp_path), optuna.storages.RDBStorage)
    assert isinstance(make_storage(None, tmp_path / "exp"), optuna.storages.RDBStorage)
    assert (tmp_path / "exp" / "tuning.db").is_file()
    with pytest.raises(TuningError, match="expected an Optuna storage URL"):
        make_storage("nonsense", tmp_path)
    assert "secret" not in describe_storage("postgresql://me:secret@host:5432/db")


def test_cli_uses_the_experiments_saved_config(cfg, tmp_path, monkeypatch):
    from cellseg.commands import tune
    from cellseg.config import save_config

    saved = load_config(None, [f"name={EXP}", f"output_dir={tmp_path / 'out'}",
                               "postprocess.min_area=33", "tune.n_trials=7"])
    save_config(saved, tmp_path / "out" / EXP / "fold0" / "config.yaml")
    monkeypatch.chdir(tmp_path)  # no configs/default.yaml here
    args = tune.parse_args(["--exp", EXP, "--set", f"output_dir={tmp_path / 'out'}",
                            "--n-trials", "2", "--data-dir", "elsewhere"])
    resolved, source = tune.resolve_config(args)
    assert "fold0/config.yaml" in source
    assert resolved.postprocess.min_area == 33  # from the experiment's config
    assert (resolved.tune.n_trials, resolved.data.root) == (2, "elsewhere")  # CLI wins


def test_cli_keeps_the_experiments_data_root_with_an_explicit_config(tmp_path, monkeypatch):
    """train --config C --data-dir X, then tune --config C: tunes on X, not on C's root."""
    from cellseg.commands import tune
    from cellseg.config import save_config

    out = tmp_path / "out"
    saved = load_config(None, [f"name={EXP}", f"output_dir={out}", "data.root=trained_on"])
    save_config(saved, out / EXP / "fold0" / "config.yaml")
    cli = tmp_path / "c.yaml"
    cli.write_text(f"name: {EXP}\noutput_dir: {out}\ndata:\n  root: config_root\n"
                   "tune:\n  n_trials: 3\n")
    monkeypatch.chdir(tmp_path)
    resolved, source = tune.resolve_config(tune.parse_args(["--config", str(cli)]))
    assert "fold0/config.yaml" in source
    assert resolved.data.root == "trained_on" and resolved.tune.n_trials == 3
    resolved, _ = tune.resolve_config(tune.parse_args(["--config", str(cli), "--data-dir", "x"]))
    assert resolved.data.root == "x"


def test_infer_warns_when_tuned_for_other_heads_tta_or_models(tmp_path):
    """postprocess.yaml records what it was tuned on; a run with other heads, TTA or a
    retrained fold model is told so (issue 11 item 5)."""
    model = tmp_path / "fold0" / "best.keras"
    model.parent.mkdir()
    model.write_bytes(b"model one")
    doc = {"method": "deep", "folds": [0], "heads": "mean", "tta": ["identity", "hflip"],
           "models": {0: tuned.model_digest(model)}, "cell_types": {}}
    (tmp_path / "postprocess.yaml").write_text(yaml.safe_dump(doc))
    files = [(0, model)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuned.check_tuned_on(tmp_path, "mean", ["identity", "hflip"], files) == []
    with pytest.warns(UserWarning, match="heads 'mean' when tuned, 'last' now"):
        tuned.check_tuned_on(tmp_path, "last", ["identity", "hflip"], files)
    with pytest.warns(UserWarning, match="TTA"):
        tuned.check_tuned_on(tmp_path, "mean", ["identity"], files)
    model.write_bytes(b"model two (retrained)")
    with pytest.warns(UserWarning, match=r"fold model\(s\) \[0\] retrained since tuning"):
        tuned.check_tuned_on(tmp_path, "mean", ["identity", "hflip"], files)
