"""bench/tta_heads.py: its variant list and its skip path (the full run needs a trained
real-CV experiment and takes ~15 min; see bench/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import tta_heads  # noqa: E402


def test_variants_start_with_the_oof_setting() -> None:
    specs = tta_heads.variants(3)
    assert specs[0][1:] == ("mean", ("identity", "hflip"))  # what train.py writes OOF maps with
    assert len({s[0] for s in specs}) == len(specs) == 7
    assert {s[1] for s in specs} == {"mean", "last", "prune=2"}
    assert len(tta_heads.variants(3, prune=False)) == 6


def test_skips_without_an_experiment(tmp_path: Path, capsys) -> None:
    rc = tta_heads.main(["--exp-dir", str(tmp_path / "absent"), "--out-dir", str(tmp_path)])
    assert rc == 0
    assert "skipped" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.json"))
