"""bench/gpu_check.py: a clear refusal without a GPU, and its --allow-cpu smoke run works."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_check  # noqa: E402


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def test_no_gpu_is_one_error_line(tmp_path, capsys):
    if _has_gpu():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--allow-cpu" in err[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_option_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(["--modes", "float32,bf16"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.mark.slow  # one tiny float32 mode + a 0.05 MP segment: ~11 s on 2 cores
def test_cpu_smoke_run_writes_a_labelled_report(tmp_path):
    if _has_gpu():
        pytest.skip("this machine has a GPU: run bench/gpu_check.py itself")
    rc = gpu_check.main(["--allow-cpu", "--modes", "float32", "--steps", "1",
                         "--segment-mp", "0.05", "--out", str(tmp_path)])
    assert rc == 0
    assert not (tmp_path / "gpu.md").exists()  # CPU figures never land in gpu.md
    report = json.loads((tmp_path / "gpu_cpu_smoke.json").read_text())
    (train,) = report["results"]["training"]
    assert train["mode"] == "float32" and train["images_per_s"] > 0
    assert report["results"]["segment"]["status"] == "done"
    assert report["results"]["segment"]["s_per_megapixel"] > 0
    assert "fold_estimate" not in report["results"]
    assert "CPU smoke test" in (tmp_path / "gpu_cpu_smoke.md").read_text()
