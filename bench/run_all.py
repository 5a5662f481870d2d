"""Run every performance benchmark at CPU-friendly sizes and collect the key figures.

Why: ``make bench`` should answer "how fast is each part on this machine?" in one command and
one page (``bench/results/summary.md`` + ``.json``), in under 15 minutes on 2 cores. Each
benchmark runs in its own process (TensorFlow state, memory and thread pools do not leak from
one into the next) and writes its own full results file next to the summary; a benchmark that
fails is reported in the summary and the others still run (the exit code is then 1).

Benchmarks and the sizes used here (each script's own defaults are larger):

* rle: ``bench_rle.py``, real-scale train.csv (606 images, ~73.5k rows),
  ``--compare-images 30``;
* metric: ``bench_metric.py``, 300-cell 520 x 704 images vs StarDist, ``--images 10``;
* postprocess: ``bench_postprocess.py`` (watershed decoding, classical baseline),
  ``--images 2 --repeats 5``;
* model: ``bench_model.py``, 4 variants at widths 16..256, FLOP/s, pruning, ``--repeats 5``;
* inference: ``bench_inference.py``, infer.py per stage, TTA x heads, ``--images 6``;
* tuning: ``bench_tuning.py``, Optuna trials / minute, 1 vs 2 processes,
  ``--images 10 --trials 10``.

Logs of each run go to ``output/bench/logs/<name>.log`` (git-ignored).

The ablation (``bench/ablation.py``) trains models and is not part of this run.

Usage:
    python bench/run_all.py [--only rle,metric] [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

NAME = "summary"


def commands(out_dir: Path) -> dict[str, list[str]]:
    """Benchmark name -> command line (CPU-friendly sizes)."""
    py, b = sys.executable, Path("bench")  # run from the repo root: short, portable paths
    try:
        out_dir = Path(os.path.relpath(out_dir, common.REPO))
    except ValueError:  # another drive (Windows)
        pass
    if str(out_dir).startswith(".."):
        out_dir = Path(out_dir).resolve()
    return {
        "rle": [py, str(b / "bench_rle.py"), "--compare-images", "30",
                "--out-dir", str(out_dir)],
        "metric": [py, str(b / "bench_metric.py"), "--images", "10", "--repeats", "5",
                   "--out-dir", str(out_dir)],
        "postprocess": [py, str(b / "bench_postprocess.py"), "--images", "2", "--repeats",
                        "5", "--out", str(out_dir / "postprocess.json")],
        "model": [py, str(b / "bench_model.py"), "--repeats", "5", "--train-repeats", "5",
                  "--out-dir", str(out_dir)],
        "inference": [py, str(b / "bench_inference.py"), "--images", "6",
                      "--out-dir", str(out_dir)],
        "tuning": [py, str(b / "bench_tuning.py"), "--images", "10", "--trials", "10",
                   "--out", str(out_dir / "tuning.json")],
    }


# ------------------------------------------------------------------------------ key figures
def _rle(r: dict[str, Any]) -> list[tuple[str, Any]]:
    c = r["compare"]
    out = [("rows (images)", f"{r['rows']:,} ({r['images']})"),
           ("encode_labels rows/s", r["encode_labels_rows_per_s"]),
           ("load_instances rows/s", r["load_instances_rows_per_s"]),
           ("rle.encode rows/s (per mask)", c["encode_rows_per_s"]),
           ("rle.decode rows/s (per mask)", c["decode_rows_per_s"])]
    if r.get("pycocotools"):
        out += [("encode_labels / pycocotools encode", r["ratio_encode_labels_over_coco_encode"]),
                ("load_instances / pycocotools decode",
                 r["ratio_load_instances_over_coco_decode"]),
                ("rle.encode / pycocotools encode", c["ratio_encode_ours_over_coco"]),
                ("rle.decode / pycocotools decode", c["ratio_decode_ours_over_coco"])]
    out.append(("decoded masks equal", r["roundtrip_equal"] and c["ours_equal_drawn_masks"]
                and c.get("coco_equal_drawn_masks", True)))
    return out


def _metric(r: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [("image_score ms / image (~300 cells)", r["ours_label_image_ms"]),
           ("match with pixel-list truth ms / image", r["ours_pixel_lists_ms"])]
    if r.get("stardist"):
        out += [("stardist matching ms / image", r["stardist_ms"]),
                ("speed vs StarDist (its ms / ours)", r["speedup_ours_vs_stardist"]),
                ("equal to StarDist (TP, score)", r["equal"])]
    return out


def _postprocess(r: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for row in r:
        out.append((f"{row['cell_type']}: decode / classical ms per image",
                    f"{row['decode_ms_per_image']:.0f} / {row['classical_ms_per_image']:.0f}"))
    return out


def _model(r: dict[str, Any]) -> list[tuple[str, Any]]:
    c = r["matmul_ceiling"]
    out = [("matmul ceiling GFLOP/s", c["gflops_per_s"])]
    for v in r["variants"]:
        out.append((f"{v['label']}: params / forward ms / train step ms",
                    f"{v['params']:,} / {v['forward_ms']:.0f} / {v['train_step_ms']:.0f}"))
        out.append((f"{v['label']}: GFLOP/s (% of ceiling)",
                    f"{v['gflops_per_s']:.1f} ({v['pct_of_matmul_ceiling']:.0f}%)"))
        for p in v.get("pruned", []):
            out.append((f"{v['label']} {p['heads']}: forward ms (x faster)",
                        f"{p['forward_ms']:.0f} (x{p['speedup_vs_full']:.2f})"))
    ref = r.get("keras_unet_collection") or {}
    if ref.get("ok"):
        out.append(("keras_unet_collection UNet++: forward ms; ours / theirs",
                    f"{ref['forward_ms']:.0f}; "
                    f"x{ref.get('ratio_ours_unetpp_ds_over_kuc_forward_ms', float('nan')):.2f}"))
    elif ref:
        out.append(("keras_unet_collection", f"skipped: {ref.get('error', '')[:120]}"))
    return out


def _inference(r: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [("models", "random weights (timing only)" if r["random_weights"]
            else f"{r['exp_dir']} ({r['folds']} fold(s))")]
    for s in r["settings"]:
        key = f"heads={s['heads']}, {len(s['tta'])} TTA view(s): s / image"
        if "skipped" in s:
            out.append((key, f"skipped: {s['skipped']}"))
            continue
        p = s["seconds_per_image"]
        out.append((key, f"{s['total_s_per_image']:.2f} (model {p['model']:.2f}, post "
                         f"{p['postprocess']:.2f}, encode {p['encode']:.3f})"))
    return out


def _tuning(r: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for row in r:
        rates = ", ".join(f"n_jobs={j}: {v['trials_per_minute']:.1f}"
                          for j, v in row["by_n_jobs"].items())
        out.append((f"{row['cell_type']} trials / min ({row['images']} images)", rates))
    return out


EXTRACT: dict[str, Callable[[Any], list[tuple[str, Any]]]] = {
    "rle": _rle, "metric": _metric, "postprocess": _postprocess, "model": _model,
    "inference": _inference, "tuning": _tuning,
}


def key_figures(name: str, doc: dict[str, Any]) -> list[tuple[str, Any]]:
    """The summary lines of one benchmark's results document (an error line if the
    document is not in the expected shape, so one changed script never breaks the rest)."""
    try:
        return EXTRACT[name](doc["results"])
    except (KeyError, TypeError, ValueError) as exc:
        return [("(could not read key figures)", f"{type(exc).__name__}: {exc}")]


def run_one(name: str, cmd: list[str], log_dir: Path) -> dict[str, Any]:
    """Run one benchmark; its output goes to ``<log_dir>/<name>.log``."""
    log = log_dir / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}",
          flush=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=common.REPO, stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                   "MPLBACKEND": "Agg"})
    seconds = time.perf_counter() - t0
    print(f"[{name}] exit {proc.returncode} after {seconds:.0f} s (log {log})", flush=True)
    return {"returncode": proc.returncode, "seconds": seconds, "log": str(log)}


def summarize(names: list[str], runs: dict[str, dict[str, Any]], out_dir: Path
              ) -> tuple[dict[str, Any], str]:
    """Collect each benchmark's results file into the summary document and markdown."""
    results: dict[str, Any] = {}
    sections = []
    for name in names:
        path = out_dir / f"{name}.json"
        run = runs.get(name, {})
        entry: dict[str, Any] = {"file": str(path), **run}
        if path.is_file() and run.get("returncode", 0) == 0:
            doc = json.loads(path.read_text())
            entry["date"] = doc.get("date")
            entry["key_figures"] = [[k, v] for k, v in key_figures(name, doc)]
        else:
            entry["key_figures"] = [["(failed)", f"see {run.get('log', path)}"]]
        results[name] = entry
        took = f" ({run['seconds']:.0f} s)" if "seconds" in run else ""
        details = f"[{name}.md]({name}.md)" if (out_dir / f"{name}.md").is_file() else \
            f"`{name}.json`"
        sections.append(f"## {name}{took}\n\nDetails: {details}\n\n"
                        + common.markdown_table(["figure", "value"], entry["key_figures"],
                                                digits=2))
    return results, "\n\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated subset of "
                        "rle,metric,postprocess,model,inference,tuning")
    parser.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    parser.add_argument("--log-dir", type=Path, default=common.REPO / "output" / "bench" / "logs",
                        help="where each benchmark's output goes (default %(default)s)")
    parser.add_argument("--collect-only", action="store_true",
                        help="only rebuild the summary from existing results files")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir).resolve()
    cmds = commands(out_dir)
    names = [n for n in (args.only.split(",") if args.only else cmds) if n]
    bad = [n for n in names if n not in cmds]
    if bad:
        parser.error(f"--only: unknown {bad}; known: {list(cmds)}")
    start = common.start_info()
    t0 = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    if not args.collect_only:
        for name in names:  # one at a time: they would share (and fight for) the cores
            runs[name] = run_one(name, cmds[name], args.log_dir)
    results, body = summarize(names, runs, out_dir)
    total = time.perf_counter() - t0
    failed = [n for n, r in runs.items() if r["returncode"]]
    intro = (f"All benchmarks at CPU-friendly sizes, run one after another by "
             f"`python bench/run_all.py` in {total / 60:.1f} min"
             + (f"; FAILED: {', '.join(failed)}" if failed else "") + ".")
    report = common.make_report(NAME, {"benchmarks": names,
                                       "commands": {n: " ".join(cmds[n]) for n in names}},
                                {"total_s": total, "benchmarks": results},
                                ["Each benchmark's own page has its tables, checks and notes; "
                                 "this page lists the key figures only."],
                                extra_packages=("pycocotools", "stardist", "optuna",
                                                "keras-unet-collection"), started=start)
    jpath, mpath = common.write_results(NAME, report, intro + "\n\n" + body, out_dir,
                                        title="Benchmarks: summary")
    print(f"\n{intro}\nwrote {mpath} and {jpath}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
