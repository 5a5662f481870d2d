"""The paper's ablation table: U-Net vs UNet++ (DS) vs Attention U-Net vs Attention UNet++ (DS),
plus the classical (non-learned) baseline, on the synthetic benchmark or (``--real``) on real
cells.

Why: the paper's claim is that nested skips, attention gates and deep supervision each help
instance segmentation; the fair test changes one switch at a time and gives every variant the
same data, the same fold, the same training *time* (synthetic mode) or the same number of
*epochs* (``--real``) and the same post-processing tuning budget, then scores each with the
competition metric on out-of-fold (OOF) images.

Steps (every step is the project's own command, so the table is reproducible by hand):

1. data: ``src/make_synthetic.py --out <data-dir> --seed 0`` and ``src/make_folds.py``
   (3 folds), once; reused while its settings match (``ablation_data.json`` stamp);
2. per variant: ``src/train.py --fold 0 --config configs/demo.yaml --exp ablation_<variant>
   --set train.time_budget_min=M --set model.nested=... model.attention=...
   model.deep_supervision=... --set train.max_val_images=0`` (all fold-0 images are OOF);
3. per variant: ``src/tune.py --exp ablation_<variant> --folds 0 --n-trials N`` (Optuna on
   the OOF maps, per cell type; ``postprocess.yaml``; the variant's old ``tuning.db`` is
   deleted first, so a rerun never continues a study of an older model);
4. classical baseline: ``src/tune.py --method classical`` on the same OOF images (raw
   images, ``postprocess_classical.yaml``), same trial budget;
5. per variant: parameters and a 528 x 704 forward pass (median of 5, this machine);
6. the table: OOF competition score with the config's default post-processing and with the
   tuned one (overall = mean over images, and per cell type), body-map pixel accuracy and IoU
   (``fold0/result.json``), parameters, forward ms, training time / epochs.

``--quick`` is the CPU mode (2 min of training per variant, 60 training images, 15 trials:
about 15 minutes on 2 cores); the default (20 min per variant, 120 images, 40 trials) is
for a GPU or a long CPU run. ``--collect-only`` rebuilds the table from finished runs.

``--real [DIR]`` (default ``../shared/real_subset``): the same comparison on real labelled
cells at equal epochs. The data root ``output/ablation_real/data`` holds only symlinks to
DIR's ``train.csv`` and ``train/`` (the real files are never copied) and a
``make_folds.py --n-folds 3 --seed 42`` split; each variant trains fold 0 from
``configs/real_cpu.yaml`` as experiment ``ablation_real_<variant>`` with
``--set train.time_budget_min=0 train.epochs=E train.early_stopping_patience=1000
train.steps_per_epoch=S train.max_val_images=0`` (``--epochs``, default 12; ``--steps``,
default 40), so every variant sees the same number of training batches; results go to
``bench/results/ablation_real.{md,json}``, logs to ``output/ablation_real/logs/``. Without
DIR it prints ``skipped: ...`` and exits 0.

Usage:
    python bench/ablation.py --quick
    python bench/ablation.py [--minutes 20] [--n-train 120] [--trials 40]
                             [--out bench/results/ablation] [--variants unet,att_unetpp_ds]
    python bench/ablation.py --real [DIR] [--epochs 12] [--steps 40] [--trials 40]
                             [--variants ...] [--collect-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import yaml  # noqa: E402

from cellseg.constants import CELL_TYPES  # noqa: E402

NAME = "ablation"
REPO = common.REPO

# name -> (label, nested, attention, deep_supervision), in the paper's order.
VARIANTS: dict[str, tuple[str, bool, bool, bool]] = {
    "unet": ("U-Net", False, False, False),
    "unetpp_ds": ("UNet++ (DS)", True, False, True),
    "att_unet": ("Attention U-Net", False, True, False),
    "att_unetpp_ds": ("Attention UNet++ (DS)", True, True, True),
}
QUICK = {"minutes": 2.0, "n_train": 60, "trials": 15}
FULL = {"minutes": 20.0, "n_train": 120, "trials": 40}
# --real: equal epochs on the real labelled subset (a data root of symlinks to it).
REAL_NAME = "ablation_real"
REAL_DIR = REPO.parent / "shared" / "real_subset"
REAL = {"epochs": 12, "steps": 40, "trials": 40, "n_folds": 3, "folds_seed": 42,
        "config": "configs/real_cpu.yaml", "data_dir": "output/ablation_real/data",
        "exp_prefix": "ablation_real_"}


def exp_name(prefix: str, variant: str) -> str:
    return f"{prefix}{variant}"


def _abs(path: Path) -> Path:
    """``path`` as the project's commands see it: they run from the repo root."""
    return path if path.is_absolute() else REPO / path


def _run(cmd: list[str], log: Path) -> float:
    """Run one project command from the repo root, output to ``log``; seconds taken.

    Raises:
        RuntimeError: non-zero exit, with the log's last lines.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    printable = " ".join(cmd)
    print(f"$ {printable}", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        fh.write(f"$ {printable}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                   "MPLBACKEND": "Agg"})
    seconds = time.perf_counter() - t0
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{printable} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return seconds


def fold0_seed(data_dir: Path, n_folds: int = 3, first: int = 42, tries: int = 50) -> int:
    """The first folds seed from ``first`` on whose fold 0 holds every cell type.

    Why: folds are grouped by sample (3-6 images each), so a small data root has only a
    couple of samples of a type and one fold can miss it; the table needs a score per type.
    """
    from cellseg.data.data_root import TrainData
    from cellseg.data.folds import make_folds

    images = TrainData(data_dir).images
    types = set(images["cell_type"])
    for seed in range(first, first + tries):
        folds = make_folds(images, n_folds=n_folds, seed=seed)
        if set(folds.loc[folds["fold"] == 0, "cell_type"]) == types:
            return seed
    raise RuntimeError(f"{data_dir}: no folds seed in {first}..{first + tries - 1} puts every "
                       f"cell type in fold 0; use more training images (--n-train)")


def prepare_data(data_dir: Path, n_train: int, seed: int, logs: Path) -> dict[str, Any]:
    """Make the synthetic data root and its folds unless a matching one exists.

    Returns:
        The data settings (the stamp), including the folds seed used.
    """
    stamp = _abs(data_dir) / "ablation_data.json"
    want = {"n_train": n_train, "n_test": 4, "seed": seed, "n_folds": 3}
    if stamp.is_file() and (_abs(data_dir) / "folds.csv").is_file():
        try:
            have = json.loads(stamp.read_text())
            if {k: have.get(k) for k in want} == want and "folds_seed" in have:
                print(f"reusing the synthetic data root {data_dir}", flush=True)
                return have
        except json.JSONDecodeError:
            pass
    py = sys.executable
    _run([py, "src/make_synthetic.py", "--out", str(data_dir), "--n-train", str(n_train),
          "--n-test", "4", "--seed", str(seed), "--overwrite"], logs / "make_synthetic.log")
    folds_seed = fold0_seed(_abs(data_dir))
    _run([py, "src/make_folds.py", "--data-dir", str(data_dir), "--n-folds", "3",
          "--seed", str(folds_seed)], logs / "make_folds.log")
    from cellseg import fileio

    have = {**want, "folds_seed": folds_seed}
    fileio.write_text(stamp, json.dumps(have) + "\n")
    return have


def prepare_real_data(source: Path, data_dir: Path, logs: Path) -> dict[str, Any]:
    """A data root of symlinks to the real subset's ``train.csv`` and ``train/``, and its
    folds (``make_folds.py --n-folds 3 --seed 42``, remade every run: it takes a second).

    Why symlinks: the real images are the competition's data; they must never be copied
    into this project's folders. ``folds.csv`` and the target cache are written into the
    scratch root, never into ``source``.

    Returns:
        The data settings (the stamp): source, folds, images per cell type in all / fold 0.

    Raises:
        RuntimeError: the root holds a real file or folder where a symlink belongs.
    """
    import pandas as pd

    root = _abs(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    src = source.resolve()
    for name in ("train.csv", "train"):
        link, target = root / name, src / name
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                continue
            link.unlink()  # points at another source: re-point it
        elif link.exists():
            raise RuntimeError(f"{link} exists and is not a symlink; the real-data root "
                               f"{root} must hold only symlinks to {src}: remove it")
        link.symlink_to(target, target_is_directory=(name == "train"))
    _run([sys.executable, "src/make_folds.py", "--data-dir", str(data_dir), "--n-folds",
          str(REAL["n_folds"]), "--seed", str(REAL["folds_seed"])], logs / "make_folds.log")
    folds = pd.read_csv(root / "folds.csv")
    per_type = {t: int(n) for t, n in folds["cell_type"].value_counts().sort_index().items()}
    fold0 = folds[folds["fold"] == 0]
    fold0_types = {t: int(n) for t, n in fold0["cell_type"].value_counts().sort_index().items()}
    missing = sorted(set(per_type) - set(fold0_types))
    if missing:
        print(f"warning: fold 0 holds no image of {missing}: no score for that type",
              flush=True)
    from cellseg import fileio

    have = {"source": str(src), "n_images": int(len(folds)), "images_per_type": per_type,
            "n_folds": REAL["n_folds"], "folds_seed": REAL["folds_seed"],
            "fold0_images_per_type": fold0_types}
    fileio.write_text(root / "ablation_data.json", json.dumps(have) + "\n")
    return have


def train_variant(variant: str, exp: str, config: str, data_dir: Path, minutes: float,
                  output_dir: Path, logs: Path, epochs: int | None = None,
                  extra_sets: list[str] | None = None) -> float:
    """Train fold 0 of one variant within the time budget (``minutes`` 0 = none; then
    ``epochs`` and ``extra_sets``, more ``--set`` values, fix the run's length)."""
    _, nested, attention, ds = VARIANTS[variant]
    sets = [f"output_dir={output_dir}", f"train.time_budget_min={minutes}",
            f"model.nested={str(nested).lower()}",
            f"model.attention={str(attention).lower()}",
            f"model.deep_supervision={str(ds).lower()}", "train.max_val_images=0",
            'train.init_from=""']  # architectures compared from random weights
    if epochs:
        sets.append(f"train.epochs={epochs}")
    sets += list(extra_sets or [])
    cmd = [sys.executable, "src/train.py", "--fold", "0", "--config", config, "--data-dir",
           str(data_dir), "--exp", exp, "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    return _run(cmd, logs / f"{exp}_train.log")


def tune(exp: str, output_dir: Path, trials: int, method: str, n_jobs: int, logs: Path
         ) -> float:
    """Tune post-processing of ``exp`` on its fold-0 OOF images (a fresh study)."""
    exp_dir = _abs(output_dir) / exp
    if method == "deep":
        # train --overwrite replaced the OOF maps, so old studies of this name are stale.
        for stale in ("tuning.db", "tuning.db-wal", "tuning.db-shm", "postprocess.yaml",
                      "postprocess_classical.yaml"):
            (exp_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(exp_dir / "tuning", ignore_errors=True)
    cmd = [sys.executable, "src/tune.py", "--exp", exp, "--folds", "0", "--n-trials",
           str(trials), "--method", method, "--n-jobs", str(n_jobs), "--no-plots",
           "--set", f"output_dir={output_dir}"]
    return _run(cmd, logs / f"{exp}_tune_{method}.log")


def forward_ms(model_paths: dict[str, Path], repeats: int = 5) -> dict[str, float]:
    """Median forward time (ms) of each trained model on one 528 x 704 image, timed
    round-robin so that other jobs on the machine slow every model alike."""
    import keras
    import numpy as np
    import tensorflow as tf
    from bench_model import _forward_fn, interleaved

    from cellseg.model import losses, network  # noqa: F401  (custom objects)
    from cellseg.model import predict  # noqa: F401  (registers the custom Keras objects)

    tf.get_logger().setLevel("ERROR")
    x = tf.constant(np.random.default_rng(0).standard_normal((1, 528, 704, 1)).astype(
        np.float32))
    calls = {}
    for key, path in model_paths.items():
        call = _forward_fn(keras.saving.load_model(path, compile=False))
        calls[key] = lambda c=call: c(x)
    timings = interleaved(calls, repeats)
    return {k: t.median_ms for k, t in timings.items()}


def _tuned(path: Path) -> dict[str, Any] | None:
    """Per-type tuned OOF scores and image counts of a postprocess*.yaml; overall = the
    image-weighted mean (the dataset score is a mean over images)."""
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    types = doc.get("cell_types") or {}
    per = {t: float(v["oof_score"]) for t, v in types.items() if "oof_score" in v}
    n = {t: int(v.get("n_images", 0)) for t, v in types.items()}
    default = {t: float(v["default_score"]) for t, v in types.items() if "default_score" in v}
    total = sum(n.values())
    overall = sum(per[t] * n[t] for t in per) / total if total else None
    overall_default = (sum(default[t] * n[t] for t in default) / total
                       if total and default else None)
    return {"overall": overall, "per_type": per, "images": n, "trials": {
        t: v.get("n_trials") for t, v in types.items()}, "overall_default": overall_default}


def collect(variants: list[str], output_dir: Path, prefix: str, timings: dict[str, Any],
            forward: dict[str, float] | None = None) -> dict[str, Any]:
    """The table's rows from the finished experiment folders (missing parts are None)."""
    output_dir = _abs(output_dir)
    rows = []
    for v in variants:
        label, nested, attention, ds = VARIANTS[v]
        exp_dir = output_dir / exp_name(prefix, v)
        result_path = exp_dir / "fold0" / "result.json"
        res = json.loads(result_path.read_text()) if result_path.is_file() else {}
        m = res.get("oof_metrics", {})
        tuned = _tuned(exp_dir / "postprocess.yaml")
        row = {
            "variant": v, "label": label, "nested": nested, "attention": attention,
            "deep_supervision": ds, "experiment": exp_name(prefix, v),
            "finished": bool(res),
            "params": res.get("params"),
            "forward_ms": (forward or {}).get(v),
            "train_minutes": res["train_seconds"] / 60 if "train_seconds" in res else None,
            "epochs_run": res.get("epochs_run"),
            "best_epoch": res.get("best_epoch"),
            "oof_images": res.get("n_val_images"),
            "oof_score_default": m.get("val_score"),
            "oof_score_default_per_type": {t: m.get(f"val_score_{t}") for t in CELL_TYPES},
            "oof_score_tuned": tuned["overall"] if tuned else None,
            "oof_score_tuned_per_type": tuned["per_type"] if tuned else {},
            "body_accuracy": m.get("val_body_accuracy"),
            "body_iou": m.get("val_body_iou"),
            "cell_type_accuracy": m.get("val_cell_type_acc"),
            "timings_s": timings.get(v, {}),
        }
        rows.append(row)
    classical = None
    for v in variants:
        c = _tuned(output_dir / exp_name(prefix, v) / "postprocess_classical.yaml")
        if c is not None:
            classical = {"label": "Classical (watershed on the image, tuned)",
                         "oof_score_tuned": c["overall"],
                         "oof_score_default": c["overall_default"],
                         "oof_score_tuned_per_type": c["per_type"], "images": c["images"],
                         "source": f"{exp_name(prefix, v)}/postprocess_classical.yaml"}
            break
    return {"variants": rows, "classical": classical}


def table(r: dict[str, Any], best_epoch: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows; ``best_epoch`` adds the epoch of the kept (best-scored) model."""
    headers = ["method", "OOF score (tuned)", *[f"{t} (tuned)" for t in CELL_TYPES],
               "OOF score (default pp)", "body pixel acc.", "body IoU", "params",
               "forward ms (528x704)", "epochs (train min)"]
    if best_epoch:
        headers.append("best epoch")
    rows = []
    for v in r["variants"]:
        per = v["oof_score_tuned_per_type"]
        epochs = (f"{v['epochs_run']} ({v['train_minutes']:.1f})"
                  if v["epochs_run"] is not None else None)
        row = [v["label"], v["oof_score_tuned"], *[per.get(t) for t in CELL_TYPES],
               v["oof_score_default"], v["body_accuracy"], v["body_iou"], v["params"],
               v["forward_ms"], epochs]
        if best_epoch:  # result.json counts from 1
            row.append(v["best_epoch"])
        rows.append(row)
    c = r.get("classical")
    if c:
        per = c["oof_score_tuned_per_type"]
        rows.append([c["label"], c["oof_score_tuned"], *[per.get(t) for t in CELL_TYPES],
                     c["oof_score_default"], None, None, None, None, None]
                    + ([None] if best_epoch else []))
    return headers, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"CPU mode: {QUICK['minutes']:g} min per variant, "
                        f"{QUICK['n_train']} images, {QUICK['trials']} trials")
    parser.add_argument("--real", nargs="?", const=str(REAL_DIR), default=None, metavar="DIR",
                        help="compare on the real labelled cells of DIR (default "
                        f"{REAL_DIR}) at equal epochs, from {REAL['config']}; prints "
                        "'skipped' and exits 0 when DIR is absent")
    parser.add_argument("--minutes", type=float, help="training time budget per variant "
                        f"(default {FULL['minutes']:g}, --quick {QUICK['minutes']:g}; not "
                        "with --real)")
    parser.add_argument("--n-train", type=int, help="synthetic training images (default "
                        f"{FULL['n_train']}, --quick {QUICK['n_train']}; not with --real)")
    parser.add_argument("--trials", type=int, help="Optuna trials per cell type (default "
                        f"{FULL['trials']}, --quick {QUICK['trials']}, --real "
                        f"{REAL['trials']})")
    parser.add_argument("--epochs", type=int, help="train.epochs override (default: the "
                        "config's, and the time budget usually stops training first; --real: "
                        f"exactly this many epochs per variant, default {REAL['epochs']})")
    parser.add_argument("--steps", type=int, help="train.steps_per_epoch override (default: "
                        f"the config's; --real: {REAL['steps']})")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--config", default=None, help="training config (default "
                        f"configs/demo.yaml; --real: {REAL['config']})")
    parser.add_argument("--data-dir", default=None,
                        help="data root made by this script (default output/ablation/data; "
                        f"--real: {REAL['data_dir']}, symlinks to DIR)")
    parser.add_argument("--output-dir", default="output",
                        help="where the experiments ablation_<variant> live (must be the "
                        "config's output_dir; default %(default)s)")
    parser.add_argument("--exp-prefix", default=None,
                        help=f"experiment name prefix (default ablation_; --real "
                        f"{REAL['exp_prefix']})")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--n-jobs", type=int, default=1, help="tuning processes (default 1)")
    parser.add_argument("--out", default=None,
                        help="results path without extension (default "
                        f"{common.RESULTS_DIR / NAME}; --real "
                        f"{common.RESULTS_DIR / REAL_NAME})")
    parser.add_argument("--collect-only", action="store_true",
                        help="only rebuild the table from finished experiments")
    args = parser.parse_args(argv)
    real = args.real is not None
    if real:
        given = [o for o, v in (("--quick", args.quick), ("--minutes", args.minutes),
                                ("--n-train", args.n_train)) if v]
        if given:
            parser.error(f"--real trains equal epochs on the real images: drop {given}")
    mode = REAL if real else QUICK if args.quick else FULL
    minutes = 0.0 if real else (args.minutes if args.minutes is not None
                                else mode["minutes"])
    n_train = args.n_train if args.n_train is not None else mode.get("n_train")
    trials = args.trials if args.trials is not None else mode["trials"]
    epochs = args.epochs if args.epochs is not None else (REAL["epochs"] if real else None)
    steps = args.steps if args.steps is not None else (REAL["steps"] if real else None)
    config = args.config or (REAL["config"] if real else "configs/demo.yaml")
    prefix = args.exp_prefix or (REAL["exp_prefix"] if real else "ablation_")
    name = REAL_NAME if real else NAME
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        parser.error(f"--variants: unknown {bad}; known: {list(VARIANTS)}")
    if real:
        if (epochs or 0) < 1 or (steps or 0) < 1 or trials < 1:
            parser.error("need --epochs >= 1, --steps >= 1, --trials >= 1")
    elif minutes <= 0 or n_train < 6 or trials < 1:
        parser.error("need --minutes > 0, --n-train >= 6, --trials >= 1")
    if steps is not None and steps < 1:
        parser.error("need --steps >= 1")
    source = Path(args.real).expanduser() if real else None
    if source is not None and not ((source / "train.csv").is_file()
                                   and (source / "train").is_dir()):
        print(f"skipped: {source} has no train.csv + train/ (the real labelled subset; "
              f"pass --real DIR where it lives)", flush=True)
        return 0
    data_dir = Path(args.data_dir or (REAL["data_dir"] if real else "output/ablation/data"))
    output_dir = Path(args.output_dir)  # relative paths: to the repo root, where commands run
    logs = _abs(output_dir) / name / "logs"
    start = common.start_info()
    t_all = time.perf_counter()
    timings: dict[str, dict[str, float]] = {v: {} for v in variants}
    data_info: dict[str, Any] = {}
    stamp = _abs(data_dir) / "ablation_data.json"
    if stamp.is_file():
        data_info = json.loads(stamp.read_text())
    extra_sets: list[str] = []
    if real:  # equal epochs: no time budget, no early stopping
        extra_sets = ["train.early_stopping_patience=1000"]
    if steps is not None:
        extra_sets.append(f"train.steps_per_epoch={steps}")
    forward: dict[str, float] = {}
    if not args.collect_only:
        _run([sys.executable, "src/tune.py", "--help"], logs / "tune_help.log")
        if real:
            data_info = prepare_real_data(source, data_dir, logs)
        else:
            data_info = prepare_data(data_dir, n_train, args.seed, logs)
        for v in variants:
            exp = exp_name(prefix, v)
            timings[v]["train_s"] = train_variant(v, exp, config, data_dir, minutes,
                                                  output_dir, logs, epochs, extra_sets)
            timings[v]["tune_s"] = tune(exp, output_dir, trials, "deep", args.n_jobs, logs)
        first = exp_name(prefix, variants[0])
        timings[variants[0]]["tune_classical_s"] = tune(first, output_dir, trials, "classical",
                                                        args.n_jobs, logs)
    paths = {v: _abs(output_dir) / exp_name(prefix, v) / "fold0" / "best.keras"
             for v in variants}
    paths = {v: p for v, p in paths.items() if p.is_file()}
    if paths:
        forward = forward_ms(paths)
    r = collect(variants, output_dir, prefix, timings, forward)
    r["wall_minutes"] = (time.perf_counter() - t_all) / 60
    headers, rows = table(r, best_epoch=real)
    print(common.text_table(headers, rows, digits=3))
    n_oof = next((v["oof_images"] for v in r["variants"] if v["oof_images"]), None)
    notes = [
        "OOF score = competition metric (mean over images of the mean precision over IoU "
        "0.50-0.95) on fold 0's images, never seen in training. 'tuned' = with the "
        "per-cell-type post-processing that Optuna found on these same OOF images (an "
        "optimistic estimate, equal for every row); 'default pp' = the config's defaults.",
        "Per-type columns: tuned scores per cell type; overall = image-weighted mean.",
        "Body pixel accuracy / IoU: body map (channel 0) > 0.5 against the true cell "
        "bodies, mean over OOF images (fold0/result.json).",
    ]
    if real:
        per0 = data_info.get("fold0_images_per_type") or {}
        intro = (f"Mode real (equal epochs): real labelled cells `{source}` "
                 f"({data_info.get('n_images', '?')} images: "
                 + ", ".join(f"{t} {n}" for t, n in
                             (data_info.get("images_per_type") or {}).items())
                 + f"), data root `{data_dir}` of symlinks to it, "
                 f"{REAL['n_folds']} folds with seed {REAL['folds_seed']}, fold 0 = "
                 f"{n_oof if n_oof is not None else 'the'} OOF images ("
                 + ", ".join(f"{t} {n}" for t, n in per0.items())
                 + f"); each variant trained exactly {epochs} epochs x {steps} steps from "
                 f"`{config}` (no time budget, no early stopping), post-processing tuned "
                 f"with {trials} Optuna trials per cell type; whole run "
                 f"{r['wall_minutes']:.0f} min.")
        notes += [
            f"Same number of epochs ({epochs} x {steps} steps of the config's batch size) "
            "for every variant, so the same training batches; 'epochs (train min)' is the "
            "epochs actually run and the minutes they took (slower variants take longer; "
            "on a shared CPU read the load average). The kept model (best.keras) is the "
            "best-scored of the config's periodic checks on fold 0 ('best epoch'), the "
            "same rule for every row.",
            "Classical baseline: tune.py --method classical (watershed on the raw image, "
            "Optuna-tuned per type) on the same OOF images and trial budget.",
            "Real competition images, but a small subset with every image its own fold "
            "group: the rows compare the variants with each other; they are not "
            "leaderboard scores.",
        ]
        mode_name = "real"
    else:
        mode_name = "quick (CPU)" if args.quick else "full"
        intro = (f"Mode {mode_name}: synthetic benchmark `{data_dir}` ({n_train} training "
                 f"images, seed {args.seed}, 3 folds with seed "
                 f"{data_info.get('folds_seed', '?')}: the "
                 f"first from 42 whose fold 0 holds every cell type), fold 0 = "
                 f"{n_oof if n_oof is not None else 'the'} OOF images; each "
                 f"variant trained "
                 f"{minutes:g} min (wall clock) from `{config}`, post-processing tuned with "
                 f"{trials} Optuna trials per cell type; whole run {r['wall_minutes']:.0f} "
                 f"min.")
        notes += [
            "Same wall-clock training budget for every variant: faster variants run more "
            "steps. On a shared CPU the budget buys fewer steps when other jobs run (see the "
            "load average).",
            "Classical baseline: tune.py --method classical (watershed on the raw image, "
            "Optuna-tuned per type) on the same OOF images and trial budget.",
            "Synthetic data: the numbers compare the variants with each other; they are not "
            "competition scores.",
        ]
    params = {"mode": mode_name, "minutes": minutes, "n_train": n_train, "trials": trials,
              "epochs": epochs, "variants": variants, "config": config,
              "data_dir": str(data_dir), "seed": args.seed, "data": data_info}
    if real:
        params = {"mode": mode_name, "real_dir": str(source), "epochs": epochs,
                  "steps_per_epoch": steps, "trials": trials, "variants": variants,
                  "config": config, "data_dir": str(data_dir), "exp_prefix": prefix,
                  "data": data_info}
    elif steps is not None:
        params["steps_per_epoch"] = steps
    report = common.make_report(name, params, r, notes,
                                extra_packages=("optuna", "scikit-image",
                                                "opencv-python-headless"), started=start)
    out = _abs(Path(args.out or str(common.RESULTS_DIR / name)))
    body = intro + "\n\n" + common.markdown_table(headers, rows, digits=3)
    title = ("Ablation on real cells (equal epochs): Attention UNet++ components" if real
             else "Ablation: Attention UNet++ components")
    jpath, mpath = common.write_results(out.name, report, body, out.parent, title=title)
    print(f"wrote {mpath} and {jpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
