"""Argument types shared by the command-line scripts (one parser of "0,1" for all of them)."""

from __future__ import annotations

import argparse


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
