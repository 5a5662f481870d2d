"""What a tuning run shows: the end-of-run table and each study's plots.

Named ``summary`` rather than ``report``: :mod:`cellseg.evaluate.report` is the evaluation report.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from cellseg import fileio

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


__all__ = ["save_plots"]
