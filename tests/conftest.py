"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "real_sample"


@pytest.fixture
def real_sample() -> Path:
    """The real competition sample (one train image + 3 test images); skip when absent."""
    if not (REAL_SAMPLE / "train.csv").is_file():
        pytest.skip(f"real sample not present at {REAL_SAMPLE}")
    return REAL_SAMPLE
