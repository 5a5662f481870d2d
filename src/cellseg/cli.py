"""What every command-line script shares: argument types, the default config, the experiment
it works on, and how errors and warnings reach the user.

The scripts in ``src/`` only declare their options and call the library; the rules below are
the same for all of them (docs/design.md, "Commands"):

* ``--config`` defaults to ``configs/default.yaml`` in the working folder, else in the
  repository (:func:`default_config_path`);
* a command after training reads the experiment's saved config first
  (:func:`resolve_experiment`, the rule of :func:`cellseg.experiment.resolve_config`);
* bad input (any :class:`cellseg.exceptions.CellsegError`, a ``ValueError`` or ``OSError``)
  is one ``error:`` line and exit status 2, never a traceback (:data:`USER_ERRORS`,
  :func:`print_error`); warnings print as ``warning: ...`` lines (:func:`plain_warnings`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cellseg.exceptions import CellsegError

if TYPE_CHECKING:  # config imports nothing heavy, but the scripts parse options first
    from cellseg.config import Config

DEFAULT_CONFIG = "configs/default.yaml"
REPO = Path(__file__).resolve().parents[2]
USER_ERRORS: tuple[type[BaseException], ...] = (CellsegError, ValueError, OSError)
EXIT_BAD_INPUT = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one ``error:`` line and exit status 2, as
    every other bad input (argparse's own prints the whole usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def int_list(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]`` (spaces ignored); an argparse error for anything else."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 0,1; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one fold, e.g. 0,1")
    return values


def name_list(text: str) -> list[str]:
    """``"identity, hflip"`` -> ``["identity", "hflip"]``; an argparse error when empty."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. shsy5y,cort")
    return values


def default_config_path(arg: str | os.PathLike | None) -> str | None:
    """The explicit ``--config``, else ``configs/default.yaml`` here or in the repository;
    None when neither exists (the built-in defaults apply)."""
    if arg is not None:
        return str(arg)
    for candidate in (Path(DEFAULT_CONFIG), REPO / DEFAULT_CONFIG):
        if candidate.is_file():
            return str(candidate)
    return None


def resolve_experiment(args: argparse.Namespace, overrides: list[str] | None = None,
                       folds: list[int] | None = None, announce: bool = True
                       ) -> tuple[Config, Path, Path | None]:
    """``(cfg, exp_dir, saved config or None)`` for a command after training, from its
    ``--config``, ``--set`` (+ ``overrides``) and ``--exp``; prints which experiment and saved
    config it uses when ``announce``.

    Raises:
        ConfigError: unreadable config or bad override.
    """
    from cellseg.experiment import resolve_config

    cfg, exp_dir, saved = resolve_config(
        default_config_path(args.config), [*args.overrides, *(overrides or [])],
        exp=args.exp, config_explicit=args.config is not None, folds=folds)
    if announce and saved is not None:
        print(f"experiment {exp_dir} (saved config {saved})", flush=True)
    return cfg, exp_dir, saved


def print_error(exc: BaseException, end_stdout_line: bool = False) -> int:
    """One ``error:`` line on stderr (a multi-line message joined); returns exit status 2.

    ``end_stdout_line``: first end the line a progress bar may have left open on stdout
    (Keras' bar has no newline until its epoch ends), so that with ``2>&1`` the message
    still starts its own line.
    """
    if end_stdout_line:
        print(file=sys.stdout, flush=True)
    print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def plain_warnings() -> None:
    """Print warnings as ``warning: <message>`` lines, without file and line of the code."""
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
