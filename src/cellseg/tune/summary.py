"""What a tuning run shows: the end-of-run table and each study's plots.

Named ``summary`` rather than ``report``: :mod:`cellseg.evaluate.report` is the evaluation report.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellseg import fileio

if TYPE_CHECKING:
    from cellseg.tune.study import CellTypeResult


def format_table(results: Iterable[CellTypeResult]) -> str:
    """The end-of-run table: type, images, default score, tuned score on the images that
    chose it (in-sample) and on held-out halves (see
    :func:`cellseg.tune.study.held_out_score`), trials."""
    header = (f"{'cell type':<10} {'images':>6} {'default':>8} {'tuned':>10} {'tuned':>10} "
              f"{'trials':>7} {'(this run)':>10}")
    sub = (f"{'':<10} {'':>6} {'':>8} {'in-sample':>10} {'held-out':>10} {'':>7} {'':>10}")
    lines = [header, sub, "-" * len(header)]
    for r in results:
        held = "n/a" if r.held_out_score is None else f"{r.held_out_score:.4f}"
        lines.append(f"{r.cell_type:<10} {r.n_images:>6d} {r.default_score:>8.4f} "
                     f"{r.oof_score:>10.4f} {held:>10} "
                     f"{r.n_trials:>7d} {r.n_trials_this_run:>10d}")
    lines.append("in-sample: scored on the images that chose the parameters (optimistic); "
                 "held-out: chosen on half of the images, scored on the other half, both ways")
    return "\n".join(lines)


def save_plots(study: Any, out_dir: str | os.PathLike, prefix: str) -> list[Path]:
    """Optimisation history and parameter importances of a study, as PNGs (atomically).

    Importances need at least two completed trials whose scores differ; otherwise (or if
    Optuna cannot compute them) only the history is drawn.

    Returns:
        Paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out_dir = Path(out_dir)
    written: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_optimization_history(study)
        ax.set_title(f"{study.study_name}: optimisation history")
        path = out_dir / f"{prefix}-history.png"
        fileio.save_figure(ax.figure, path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(path)
        varied = len(complete) > 1 and len({t.value for t in complete}) > 1
        if varied:
            try:
                ax = ovm.plot_param_importances(study)
            except (RuntimeError, ValueError, ZeroDivisionError):
                ax = None
            if ax is not None:
                ax.set_title(f"{study.study_name}: parameter importances")
                path = out_dir / f"{prefix}-importances.png"
                fileio.save_figure(ax.figure, path, dpi=100, bbox_inches="tight")
                plt.close(ax.figure)
                written.append(path)
    return written


__all__ = ["format_table", "save_plots"]
