"""Optuna search of the post-processing parameters per cell type, on out-of-fold (OOF) predictions.

Why per cell type: crowded, elongated shsy5y cells, sparse round cort cells and large faint
astro cells need different seed / mask thresholds and minimum areas (docs/design.md section 4). The
image's predicted cell type (cellseg.model.celltype) picks the parameter set at inference; here
each set is tuned on the OOF images of that type (:mod:`cellseg.tune.eval_sets`), maximising
the competition score (docs/design.md section 3, :mod:`cellseg.tune.scoring`).

One Optuna study per (experiment, method, cell type, OOF maps), named by
:func:`~cellseg.tune.storage.study_name`:

* ``method="deep"``: :data:`~cellseg.postprocess.search_space.DEEP_SEARCH_SPACE` knobs of
  :func:`~cellseg.postprocess.decode.decode_instances` on the OOF body / border maps;
* ``method="classical"``: :data:`~cellseg.postprocess.search_space.CLASSICAL_SEARCH_SPACE` of
  :func:`~cellseg.postprocess.classical.classical_segment` on the raw training images of the
  same ids (the paper's "traditional algorithm" row).

The defaults (config ``postprocess`` section, or the classical function's defaults) are
enqueued as the study's first trial, so the best parameters are never worse than the defaults
on the OOF set.

Resuming: every study lives in an Optuna storage (:mod:`cellseg.tune.storage`), by default the
SQLite file ``output/<exp>/tuning.db``. Running again continues the same study
(``load_if_exists``): an interrupted run loses at most its trial in flight, and several
workers can run ``tune.py`` on the same study at once. ``n_trials`` counts the trials *this
process* runs: four workers with ``--n-trials 50`` add 200 trials to the study. The study
records which OOF images it was tuned on, and refuses to continue on a different set (other
folds, retrained OOF ids), which would mix scores of different image sets in one history.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellseg import experiment
from cellseg.config import Config
from cellseg.constants import CELL_TYPES
from cellseg.data.data_root import TrainData
from cellseg.exceptions import TuningError
from cellseg.experiment import (
    BEST_MODEL,
    CLASSICAL_POSTPROCESS_FILE,
    POSTPROCESS_FILE,
    RESULT_FILE,
)
from cellseg.postprocess.classical import CLASSICAL_DEFAULTS
from cellseg.postprocess.tuned import (
    TunedCellType,
    TunedPostprocess,
    model_digest,
    plain_scalar,
)
from cellseg.postprocess.search_space import (
    CLASSICAL_SEARCH_SPACE,
    DEEP_SEARCH_SPACE,
    SearchRange,
    suggest_params,
)
from cellseg.tune.eval_sets import (
    METHODS,
    EvalSet,
    load_eval_sets,
    open_train_data,
    parse_folds,
)
from cellseg.tune.scoring import Evaluator
from cellseg.tune.storage import (
    default_storage,
    describe_storage,
    make_storage,
    parse_storage,
    study_name,
)
from cellseg.tune.plots import save_plots

#: Output file per method, in the experiment folder.
OUTPUT_FILES: Mapping[str, str] = {"deep": POSTPROCESS_FILE,
                                   "classical": CLASSICAL_POSTPROCESS_FILE}
#: Trial user attribute holding the trial's per-image scores (see held_out_score).
IMAGE_SCORES_ATTR = "image_scores"  # per-image scores of a trial (EvalSet.ids order)
#: Folder (in the experiment folder) for the optimisation-history / importance plots.
PLOTS_DIR = "tuning"
#: Optuna parameter spaces per method.
SEARCH_SPACES: Mapping[str, Mapping[str, SearchRange]] = {
    "deep": DEEP_SEARCH_SPACE, "classical": CLASSICAL_SEARCH_SPACE}


def method_defaults(cfg: Config, method: str) -> dict[str, Any]:
    """Untuned parameters: the config's ``postprocess`` section (deep) or the classical
    function's signature defaults."""
    if method == "deep":
        # decode_instances' own defaults fill any knob the config does not name.
        return dataclasses.asdict(cfg.postprocess)
    if method == "classical":
        return dict(CLASSICAL_DEFAULTS)
    raise TuningError(f"method must be one of {list(METHODS)}, got {method!r}")


def sampler_seed(seed: int, n_existing: int, worker_index: int = 0, cell_type: str = "") -> int:
    """Seed of this process's TPE sampler for one study.

    Why not ``seed`` itself: a resumed study (or a second worker) would otherwise re-draw the
    same random start-up points as the first run, and every cell type would try the same
    points. Mixing in the trial count at start, the worker index and the cell type keeps one
    process's run reproducible and different runs distinct.
    """
    type_code = CELL_TYPES.index(cell_type) + 1 if cell_type in CELL_TYPES else 0
    state = np.random.SeedSequence([int(seed), int(n_existing), int(worker_index), type_code])
    return int(state.generate_state(1)[0])


def _same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal parameter dicts (floats within rounding; True is not 1)."""
    if set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, (bool, np.bool_)) or isinstance(y, (bool, np.bool_)):
            if not (isinstance(x, (bool, np.bool_)) and isinstance(y, (bool, np.bool_))
                    and bool(x) == bool(y)):
                return False
        elif isinstance(x, (int, float, np.number)) and isinstance(y, (int, float, np.number)):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


@dataclass
class CellTypeResult:
    """Outcome of one cell type's study (one row of the printed table and the YAML)."""

    cell_type: str
    study_name: str
    params: dict[str, Any]
    oof_score: float
    default_score: float
    n_images: int
    n_trials: int
    n_trials_this_run: int
    folds: list[int]
    best_trial: int | None
    plots: list[str] = field(default_factory=list)
    held_out_score: float | None = None  # see held_out_score()
    oof_fingerprint: str = ""

    def tuned(self) -> TunedCellType:
        """The entry of ``postprocess.yaml``'s ``cell_types`` mapping."""
        return TunedCellType(
            params=dict(self.params), oof_score=self.oof_score, default_score=self.default_score,
            n_images=self.n_images, n_trials=self.n_trials, folds=list(self.folds),
            study=self.study_name, best_trial=self.best_trial,
            held_out_score=self.held_out_score, oof_fingerprint=self.oof_fingerprint)


def _open_study(storage: Any, name: str, eval_set: EvalSet, seed: int, worker_index: int,
                storage_label: str) -> tuple[Any, int]:
    import optuna

    # Created first with a throw-away sampler to read the trial count; the real sampler's
    # seed depends on it.
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuningError(f"study {name!r} in {storage_label} minimises; expected a study that "
                          f"maximises the competition score (use another --storage or --exp)")
    fingerprint = eval_set.fingerprint()
    attrs = study.user_attrs
    if "oof_fingerprint" in attrs and attrs["oof_fingerprint"] != fingerprint:
        raise TuningError(
            f"study {name!r} in {storage_label} was tuned on other OOF maps or images "
            f"(fingerprint {attrs['oof_fingerprint']}, now {fingerprint}); use another "
            f"--storage or --exp")
    if "oof_fingerprint" not in attrs:
        study.set_user_attr("oof_fingerprint", fingerprint)
        study.set_user_attr("folds", sorted(set(eval_set.folds)))
        study.set_user_attr("n_images", len(eval_set))
        study.set_user_attr("method", eval_set.method)
        study.set_user_attr("cell_type", eval_set.cell_type)
    n_existing = len(study.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler(
        seed=sampler_seed(seed, n_existing, worker_index, eval_set.cell_type))
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    return study, n_existing


def tune_cell_type(
    evaluator: Evaluator,
    cell_type: str,
    storage: Any,
    name: str,
    defaults: Mapping[str, Any],
    space: Mapping[str, SearchRange],
    n_trials: int | None,
    timeout: float | None = None,
    seed: int = 42,
    worker_index: int = 0,
    show_progress_bar: bool = False,
    storage_label: str = "",
    log: Callable[[str], None] | None = print,
) -> CellTypeResult:
    """Run (or continue) one cell type's study and pick its best parameters.

    Args:
        evaluator: holds the cell type's images.
        cell_type: which :class:`EvalSet` to tune on.
        storage: an Optuna storage (see :func:`make_storage`).
        name: the study name (:func:`study_name`).
        defaults: the untuned parameters; the ones in ``space`` are enqueued as the first trial
            of a new study (or the next, if the study has not tried them yet), so the best is
            never worse than the defaults.
        space: knobs to tune; knobs not in it stay at ``defaults``.
        n_trials: trials this process runs (other workers add their own); None = until
            ``timeout``; 0 = none (just report the study's best).
        timeout: seconds for this study in this process; None = no limit.
        seed: base seed of the TPE sampler (see :func:`sampler_seed`).
        worker_index: distinguishes concurrent workers' samplers.
        show_progress_bar: Optuna's progress bar (needs ``n_trials`` or ``timeout``).
        storage_label: how to name the storage in messages.
        log: progress messages (None = quiet).

    Returns:
        The :class:`CellTypeResult`; ``params`` are the defaults overlaid with the best
        trial's values, or the defaults if no trial beat them.
    """
    import optuna

    eval_set = evaluator.sets[cell_type]
    study, n_existing = _open_study(storage, name, eval_set, seed, worker_index,
                                    storage_label or "the storage")
    start_params = {k: plain_scalar(defaults[k]) for k in space if k in defaults}
    if start_params and (n_trials is None or n_trials > 0):
        # First trial of a new study; also later if the config's defaults changed since.
        study.enqueue_trial(start_params, skip_if_exists=True)
    if log:
        more = "until the timeout" if n_trials is None else f"{n_trials} more"
        log(f"[{cell_type}] study {name!r}: {n_existing} trial(s) so far, running {more}"
            + (f" (timeout {timeout:g} s)" if timeout else ""))

    ran = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal ran
        ran += 1
        params = {**defaults, **suggest_params(trial, space)}
        scores = evaluator.image_scores(cell_type, params)
        trial.set_user_attr(IMAGE_SCORES_ATTR, [round(float(v), 6) for v in scores])
        return float(scores.mean())

    if n_trials is None or n_trials > 0:
        study.optimize(objective, n_trials=n_trials, timeout=timeout,
                       show_progress_bar=show_progress_bar)

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # The default score: the enqueued defaults trial's value (same images: the fingerprint
    # check guarantees it), else one evaluation here.
    default_score: float | None = None
    for t in complete:
        if _same_params(t.params, start_params):
            default_score = float(t.value)
            break
    if default_score is None:
        default_score = evaluator.score(cell_type, defaults)
    params = dict(defaults)
    best_score, best_number = default_score, None
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        if best.value > default_score:
            params.update(best.params)
            best_score, best_number = float(best.value), best.number
    return CellTypeResult(
        cell_type=cell_type, study_name=name, params=params, oof_score=best_score,
        default_score=default_score, n_images=len(eval_set), n_trials=len(complete),
        n_trials_this_run=ran, folds=sorted(set(eval_set.folds)),
        best_trial=best_number, held_out_score=held_out_score(complete, eval_set.ids),
        oof_fingerprint=eval_set.fingerprint())


def held_out_score(trials: Sequence[Any], ids: Sequence[str]) -> float | None:
    """The tuned score on images that did not choose the parameters.

    The tuned score (``oof_score``) is in-sample: the best of many trials, measured on the
    images that picked it, so it flatters (more with few images). Here the images are split
    in two halves (alternating in id order); the trial that is best on one half is scored on
    the other, both ways, and the per-image scores averaged. Uses the per-image scores every
    trial stores, so it costs no extra decoding. None with fewer than 2 images or no trial
    with per-image scores.
    """
    rows = [t.user_attrs.get(IMAGE_SCORES_ATTR) for t in trials]
    rows = [r for r in rows if r is not None and len(r) == len(ids)]
    if len(ids) < 2 or not rows:
        return None
    table = np.asarray(rows, np.float64)  # trials x images
    order = np.argsort(np.asarray(ids, dtype=object))
    half_a, half_b = order[0::2], order[1::2]
    held = np.empty(len(ids), np.float64)
    for pick, score in ((half_a, half_b), (half_b, half_a)):
        best = int(np.argmax(table[:, pick].mean(axis=1)))  # first best on a tie
        held[score] = table[best, score]
    return float(held.mean())


@dataclass
class TuningReport:
    """What :func:`run_tuning` did: per-type results and the file it wrote."""

    method: str
    results: list[CellTypeResult]
    output_path: Path
    storage: str
    tuned: TunedPostprocess
    confidence: Any = None  # cellseg.tune.confidence_fit.ConfidenceFit, or None

    def table(self) -> str:
        """The end-of-run table: type, images, default score, tuned score on the images that
        chose it (in-sample) and on held-out halves (:func:`held_out_score`), trials."""
        header = (f"{'cell type':<10} {'images':>6} {'default':>8} {'tuned':>10} {'tuned':>10} "
                  f"{'trials':>7} {'(this run)':>10}")
        sub = (f"{'':<10} {'':>6} {'':>8} {'in-sample':>10} {'held-out':>10} {'':>7} {'':>10}")
        lines = [header, sub, "-" * len(header)]
        for r in self.results:
            held = "n/a" if r.held_out_score is None else f"{r.held_out_score:.4f}"
            lines.append(f"{r.cell_type:<10} {r.n_images:>6d} {r.default_score:>8.4f} "
                         f"{r.oof_score:>10.4f} {held:>10} "
                         f"{r.n_trials:>7d} {r.n_trials_this_run:>10d}")
        lines.append("in-sample: scored on the images that chose the parameters (optimistic); "
                     "held-out: chosen on half of the images, scored on the other half, both "
                     "ways")
        if self.confidence is not None:
            lines += ["", self.confidence.table()]
        return "\n".join(lines)


def _kept_entries(path: Path, method: str, tuned: Iterable[str]) -> dict[str, TunedCellType]:
    """Entries of cell types not tuned now, kept from an existing output file of this method
    (an unreadable file keeps nothing: it is replaced)."""
    try:
        existing = TunedPostprocess.find(path.parent, path.name)
    except ValueError:
        return {}
    if existing is None or existing.method != method:
        return {}
    return {t: e for t, e in existing.cell_types.items() if t not in set(tuned)}


def _log_fresh_study(storage: Any, name: str, base: str, log: Callable[[str], None]) -> None:
    """Say so when this is a new study beside older ones of other OOF maps (retrained folds)."""
    import optuna

    try:
        names = {st.study_name for st in optuna.get_all_study_summaries(storage,
                                                                         include_best_trial=False)}
    except Exception:  # noqa: BLE001 (only a message depends on it)
        return
    older = sorted(n for n in names if n.startswith(base + "-") and n != name)
    if name not in names and older:
        log(f"OOF maps differ from those of {', '.join(older)} (folds retrained or other "
            f"folds): starting a fresh study {name!r}; the old trials stay in their study")


def tuned_on(exp_dir: Path, folds: Sequence[int], method: str) -> dict[str, Any]:
    """What the tuned parameters are valid for: the OOF maps' heads and TTA (from each fold's
    ``result.json``) and a hash of each fold's model file. ``infer.py`` warns when it runs
    with other heads, TTA or models (cellseg.postprocess.tuned.check_tuned_on)."""
    heads, tta, models = set(), set(), {}
    for k in folds:
        fold_dir = experiment.fold_dir(exp_dir, k)
        result = fold_dir / RESULT_FILE
        if result.is_file():
            try:
                r = json.loads(result.read_text())
                heads.add(str(r.get("oof_heads")))
                tta.add(tuple(r.get("oof_tta") or ()))
            except (ValueError, OSError):
                pass
        model = fold_dir / BEST_MODEL
        if model.is_file():
            models[int(k)] = model_digest(model)
    if method != "deep":
        return {}
    return {
        "heads": heads.pop() if len(heads) == 1 else sorted(heads) or None,
        "tta": list(tta.pop()) if len(tta) == 1 else [list(t) for t in sorted(tta)] or None,
        "models": models,
    }


def run_tuning(
    cfg: Config,
    method: str = "deep",
    folds: Iterable[int] | None = None,
    cell_types: Iterable[str] | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    n_jobs: int | None = None,
    worker_index: int = 0,
    show_progress_bar: bool = False,
    plots: bool = True,
    data: TrainData | None = None,
    log: Callable[[str], None] | None = print,
) -> TuningReport:
    """Tune post-processing per cell type on OOF predictions and write the result file.

    Args:
        cfg: the experiment's config (name, output_dir, data.root, postprocess, tune).
        method: "deep" (writes ``postprocess.yaml``) or "classical"
            (``postprocess_classical.yaml``).
        folds: OOF folds to tune on; None = all folds with OOF files.
        cell_types: subset of ``CELL_TYPES``; None = all with OOF images.
        n_trials: trials per cell type *in this process*; None = ``cfg.tune.n_trials``
            (unless ``timeout`` is given, then until the timeout).
        timeout: seconds per cell type study; None = no limit.
        storage: Optuna storage URL or journal path (see :func:`make_storage`); None = SQLite
            ``<exp dir>/tuning.db``.
        n_jobs: processes scoring a trial's images; None = ``cfg.tune.n_jobs``.
        worker_index: distinct per concurrent worker (sampler seed).
        show_progress_bar: Optuna's progress bar per study.
        plots: write ``<exp dir>/tuning/<method>-<type>-{history,importances}.png``.
        data: an opened :class:`TrainData` (default: ``cfg.data.root``).
        log: progress messages (None = quiet).

    Returns:
        A :class:`TuningReport`.

    Raises:
        TuningError: no OOF predictions, no images of the requested types, storage problems,
            a study tuned on other images.
    """
    import optuna

    if method not in METHODS:
        raise TuningError(f"method must be one of {list(METHODS)}, got {method!r}")
    if n_trials is None and timeout is None:
        n_trials = cfg.tune.n_trials
    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 0):
        raise TuningError(f"n_trials must be >= 0, got {n_trials!r}")
    if timeout is not None and not timeout > 0:
        raise TuningError(f"timeout must be > 0 seconds, got {timeout!r}")
    n_jobs = cfg.tune.n_jobs if n_jobs is None else n_jobs
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise TuningError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    exp_dir = cfg.experiment_dir()
    folds = parse_folds(folds)
    parse_storage(storage, exp_dir)  # fail on a typo before loading the images
    if data is None:
        data = open_train_data(cfg)
    sets = load_eval_sets(cfg, method, folds, cell_types, data=data, log=log)
    defaults = method_defaults(cfg, method)
    space = SEARCH_SPACES[method]
    results: list[CellTypeResult] = []
    label = describe_storage(storage or default_storage(exp_dir))
    # The pool forks before the storage opens its database connection.
    with Evaluator(sets, n_jobs=n_jobs) as evaluator:
        store = make_storage(storage, exp_dir)
        for cell_type in sets:
            name = study_name(cfg.name, method, cell_type, sets[cell_type].fingerprint())
            if log:
                _log_fresh_study(store, name, study_name(cfg.name, method, cell_type), log)
            result = tune_cell_type(
                evaluator, cell_type, store, name, defaults, space, n_trials, timeout,
                seed=cfg.tune.seed, worker_index=worker_index,
                show_progress_bar=show_progress_bar, storage_label=label, log=log)
            if plots:
                study = optuna.load_study(study_name=name, storage=store)
                written = save_plots(study, exp_dir / PLOTS_DIR, f"{method}-{cell_type}")
                result.plots = [str(p) for p in written]
            results.append(result)

    out_path = exp_dir / OUTPUT_FILES[method]
    entries = _kept_entries(out_path, method, [r.cell_type for r in results])
    entries.update({r.cell_type: r.tuned() for r in results})
    tuned_folds = sorted({f for r in results for f in r.folds})
    tuned = TunedPostprocess(
        cell_types=entries, method=method, experiment=cfg.name, folds=tuned_folds,
        **tuned_on(exp_dir, tuned_folds, method),
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        storage=label, optuna=optuna.__version__)
    confidence = None
    if method == "deep" and cfg.tune.confidence:
        confidence = _fit_confidence(cfg, sets, data, tuned, log)
    else:  # no model: no cut-off may survive from an earlier file
        for entry in tuned.cell_types.values():
            entry.confidence_cutoff, entry.confidence_score = 0.0, None
    if method == "deep":
        tuned.routing_scores = routing_scores(sets, tuned.params_by_type(cfg.postprocess))
    tuned.write(out_path)
    return TuningReport(method=method, results=results, output_path=out_path, storage=label,
                        tuned=tuned, confidence=confidence)


def routing_scores(sets: Mapping[str, EvalSet], params: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, dict[str, float]]:
    """``[true type][routed type]``: mean OOF score of each type's images decoded with every
    type's parameters. What a wrong cell type costs, for routing an image whose type is
    uncertain (:func:`cellseg.model.celltype.choose_cell_type`). The diagonal was tuned on
    the same images (optimistic), which only makes the rule keep the most probable type more
    often."""
    with Evaluator(sets, n_jobs=1) as evaluator:
        return {t: {r: round(float(evaluator.score(t, dict(params[r]))), 6) for r in CELL_TYPES}
                for t in sets}


def _fit_confidence(cfg: Config, sets: Mapping[str, EvalSet], data: TrainData,
                    tuned: TunedPostprocess, log: Callable[[str], None] | None) -> Any:
    """Fit the per-cell confidence filter on the sets just tuned (:mod:`.confidence_fit`),
    save it beside the tuned file and record its cut-offs in ``tuned``. Types kept from an
    earlier run (``--cell-types`` subset) get no filter: the new model never saw them."""
    from cellseg.experiment import CONFIDENCE_MODEL
    from cellseg.tune.confidence_fit import fit_confidence_filter

    params = tuned.params_by_type(cfg.postprocess)
    if log:
        log("fitting the per-cell confidence filter on the OOF cells (tune.confidence)")
    fit = fit_confidence_filter(
        sets, data, params, seed=cfg.seed,
        record={"experiment": cfg.name, "folds": tuned.folds, "models": tuned.models,
                "cell_types": sorted(sets)}, log=log)
    for t, entry in tuned.cell_types.items():
        f = fit.types.get(t) if fit is not None else None
        entry.confidence_cutoff = f.cutoff if f is not None else 0.0
        entry.confidence_score = f.filtered if f is not None else None
        if f is None and t not in sets and log:
            log(f"[{t}] kept from the earlier tuning without a confidence filter (re-tune it "
                f"with the other types to fit one)")
    if fit is None or not any(f.cutoff > 0 for f in fit.types.values()):
        tuned.confidence_model = None
        return fit
    path = fit.model.save(cfg.experiment_dir() / f"{CONFIDENCE_MODEL}-{fit.digest}")
    tuned.confidence_model = path.name
    return fit


__all__ = [
    "IMAGE_SCORES_ATTR",
    "METHODS",
    "OUTPUT_FILES",
    "PLOTS_DIR",
    "SEARCH_SPACES",
    "CellTypeResult",
    "TuningReport",
    "held_out_score",
    "method_defaults",
    "routing_scores",
    "run_tuning",
    "sampler_seed",
    "tune_cell_type",
    "tuned_on",
]
