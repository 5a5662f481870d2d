"""Tune post-processing per cell type on out-of-fold predictions: ``python src/tune.py``.

One Optuna study per cell type (``<exp>-<method>-<cell type>``) maximises the competition score
on the OOF images of the chosen folds (``output/<exp>/fold<K>/oof/``, written by
``python src/train.py --fold K``). The config defaults are the first trial, so the result is
never worse than the defaults. Writes ``output/<exp>/postprocess.yaml`` (``--method deep``) or
``postprocess_classical.yaml`` (``--method classical``, the classical baseline on the raw
images of the same ids), and plots in ``output/<exp>/tuning/``.

Config: ``--config`` if given; otherwise the experiment's own saved config
(``output/<exp>/fold*/config.yaml``) when there is one, else ``configs/default.yaml``.
``--set`` and the options below override it.

Resume and distribute: studies live in ``output/<exp>/tuning.db`` (SQLite) by default, so
running the command again continues where it stopped. ``--storage`` takes any Optuna storage
URL (``postgresql://user:pw@host/db``, ``mysql+pymysql://...``, ``sqlite:///file.db``) or a
journal file (``journal:/shared/tune.log``, good on NFS); start any number of workers with the
same ``--exp`` and ``--storage`` and they share one study per cell type. ``--n-trials`` counts
per worker process (4 workers x ``--n-trials 50`` = 200 trials); give each worker its own
``--worker-index`` so their random start-up trials differ. ``--timeout`` is per cell type.

Examples:
    python src/tune.py --exp default --folds 0,1,2,3,4 --n-trials 150
    python src/tune.py --exp demo --method classical --cell-types shsy5y --n-trials 30
    python src/tune.py --exp default --storage journal:/nfs/tune.log --worker-index 3
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from cellseg.cli import (
    DEFAULT_CONFIG,
    USER_ERRORS,
    default_config_path,
    int_list,
    name_list,
    plain_warnings,
    print_error,
    resolve_experiment,
)

os.environ.setdefault("MPLBACKEND", "Agg")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: the experiment's saved "
                        f"output/<exp>/fold*/config.yaml, else {DEFAULT_CONFIG})")
    parser.add_argument("--exp", help="experiment name (default: the config's name)")
    parser.add_argument("--data-dir", help="data root with train.csv (overrides data.root)")
    parser.add_argument("--folds", type=int_list, help="OOF folds to tune on, e.g. 0,1 "
                        "(default: every fold with OOF predictions)")
    parser.add_argument("--n-trials", type=_positive_int,
                        help="trials per cell type run by THIS process (default: "
                        "tune.n_trials; with --timeout alone: until the timeout)")
    parser.add_argument("--timeout", type=_positive_float,
                        help="seconds per cell type study (default: no limit)")
    parser.add_argument("--storage", help="Optuna storage URL or journal:/path/file.log "
                        "(default: sqlite:///output/<exp>/tuning.db)")
    parser.add_argument("--method", choices=("deep", "classical"), default="deep",
                        help="deep = network maps -> postprocess.yaml; classical = the "
                        "classical baseline -> postprocess_classical.yaml (default: deep)")
    parser.add_argument("--cell-types", type=name_list,
                        help="subset of shsy5y,astro,cort (default: all with OOF images)")
    parser.add_argument("--n-jobs", type=int, help="processes scoring a trial's images "
                        "(default: tune.n_jobs; 1 = serial)")
    parser.add_argument("--worker-index", type=_positive_int, default=0,
                        help="distinct number per concurrent worker on one storage "
                        "(varies the sampler seed; default 0)")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the optimisation-history / importance PNGs")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. "
                        "--set postprocess.min_area=20 (repeatable)")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    """The config to tune with, and a note saying where it came from: the experiment's saved
    config (data root the folds were trained on, model, default post-processing) is the base;
    an explicit ``--config`` supplies the ``tune`` and ``infer`` sections only; ``--data-dir``
    and ``--set`` override last (:func:`cellseg.experiment.resolve_config`)."""
    overrides = []
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.n_jobs is not None:
        overrides.append(f"tune.n_jobs={args.n_jobs}")
    if args.n_trials is not None:
        overrides.append(f"tune.n_trials={args.n_trials}")
    cfg, _, saved = resolve_experiment(args, overrides, announce=False)
    if saved is not None:
        return cfg, f"the experiment's config {saved}"
    path = default_config_path(args.config)
    return cfg, f"config {path}" if path else "built-in defaults"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import optuna

    from cellseg.exceptions import ConfigError
    from cellseg.tune.study import run_tuning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    plain_warnings()
    try:
        cfg, source = resolve_config(args)
        if args.n_jobs is not None and args.n_jobs < 1:
            raise ConfigError(f"--n-jobs must be >= 1, got {args.n_jobs}")
        print(f"tuning {args.method} post-processing of experiment {cfg.name!r} "
              f"({cfg.experiment_dir()}) with {source}", flush=True)
        n_trials = args.n_trials
        if n_trials is None and args.timeout is None:
            n_trials = cfg.tune.n_trials
        report = run_tuning(
            cfg, method=args.method, folds=args.folds, cell_types=args.cell_types,
            n_trials=n_trials, timeout=args.timeout, storage=args.storage,
            n_jobs=cfg.tune.n_jobs, worker_index=args.worker_index, show_progress_bar=True,
            plots=not args.no_plots, log=lambda m: print(m, flush=True))
    except USER_ERRORS as exc:
        return print_error(exc)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are saved in the study; run the same command "
              "again to continue", file=sys.stderr)
        return 130
    print()
    print(report.table())
    print(f"\nwrote {report.output_path} (studies in {report.storage})")
    plots = [p for r in report.results for p in r.plots]
    if plots:
        print(f"plots: {Path(plots[0]).parent}/ ({len(plots)} files)")
    return 0

