"""Real cross-validation: the README's chain on the real subset, scored out of fold.

    python bench/real_cv.py                       # folds 0,1 of 5 with configs/real_cpu.yaml
    python bench/real_cv.py --folds 0,1,2,3,4     # every real image out of fold
    python bench/real_cv.py --exp r1 --skip-train # tune and analyse an experiment already trained
    python bench/real_cv.py --exp r1 --analyse-only  # re-analyse a finished run as it is

Runs exactly the user's commands (``make_folds.py``, ``train.py --fold K --config C
--data-dir ROOT``, ``tune.py``) as subprocesses on a data root that links to
``../shared/real_subset`` (nothing is copied), then scores the OOF maps:

- **untuned**: the config's default post-processing (no parameter saw these images);
- **tuned, in-sample**: ``tune.py``'s parameters, chosen on the same OOF images they are
  scored on (optimistic: that is why it is labelled);
- **tuned, held out**: per cell type, Optuna tunes on half of the OOF images and is scored on
  the other half, both ways (the honest estimate of tuning's gain);
- **as inferred**: tuned parameters of the *predicted* cell type (what ``infer.py`` does).

Also: whole-image cell-type accuracy per type (the fold classifiers, out of fold), the error
analysis per type (misses, false positives, merges, splits at IoU 0.5), overlays of the best
and worst images coloured by error kind, and the wall time of every step. Results:
``bench/results/real_cv.{md,json}`` and ``bench/results/real_cv/iou_hist.png``; the overlays
show real competition pixels, so they go to the git-ignored ``output/bench/real_cv/`` (real
data stays out of the repository). When
``../shared/real_subset`` is absent it prints a note and exits 0 (a user's clone has no
``shared/``).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS_DIR, make_report, markdown_table, start_info, write_results  # noqa: E402

REAL_SUBSET = REPO.parent / "shared" / "real_subset"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/real_cpu.yaml")
    p.add_argument("--exp", default="real_cv", help="experiment name (default: %(default)s)")
    p.add_argument("--source", default=str(REAL_SUBSET), help="labelled real data root")
    p.add_argument("--folds", default="0,1", help="folds to train and score (default: 0,1)")
    p.add_argument("--n-folds", type=int, default=5, help="folds of make_folds.py (default 5)")
    p.add_argument("--skip-train", action="store_true",
                   help="use the experiment's trained folds as they are")
    p.add_argument("--analyse-only", action="store_true",
                   help="no training and no tuning: re-analyse a finished run's OOF maps and "
                   "tuned parameters (e.g. with a newer error analysis)")
    p.add_argument("--reuse", action="store_true", help="keep folds that already finished")
    p.add_argument("--n-trials", type=int, default=None, help="Optuna trials per type")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="config override passed to train.py; {fold} "
                   "becomes the fold, e.g. --set 'data.extra=[output/pl_f{fold}]'")
    p.add_argument("--name", default="real_cv", help="results file stem (default real_cv)")
    p.add_argument("--n-overlays", type=int, default=2, help="best and worst images drawn")
    return p.parse_args(argv)


def run(cmd: list[str], log: list[dict[str, Any]]) -> None:
    """Run one of the user's commands, streaming its output; stop on failure."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO)
    log.append({"command": " ".join(cmd), "seconds": round(time.time() - t0, 1),
                "rc": proc.returncode})
    if proc.returncode != 0:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed with exit status {proc.returncode}")


def link_root(source: Path, root: Path) -> None:
    """A data root of links to the real images: folds and target caches go here, not into
    ``shared/``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "train", "train_semi_supervised"):
        if (source / name).exists() and not (root / name).exists():
            (root / name).symlink_to((source / name).resolve())


def models_digest(exp_dir: Path, folds: list[int]) -> str:
    """Hash of the fold models: a fresh tuning study per trained model set."""
    h = hashlib.sha1()
    for k in folds:
        h.update((exp_dir / f"fold{k}" / "best.keras").read_bytes())
    return h.hexdigest()[:12]


def held_out_tuning(sets: dict, cfg, n_trials: int, seed: int, space=None,
                    fixed: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per type: tune on half of the images, score the other half, both ways.

    ``space`` (default: tune.py's) is what Optuna samples; ``fixed`` overrides defaults of
    knobs outside it. Returns per type the mean held-out score and, per image, the parameters
    that scored it (``params``, in image order)."""
    import numpy as np
    import optuna

    from cellseg.postprocess.search_space import DEEP_SEARCH_SPACE
    from cellseg.tune.eval_sets import EvalSet
    from cellseg.tune.scoring import Evaluator
    from cellseg.tune.study import method_defaults, tune_cell_type

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = DEEP_SEARCH_SPACE if space is None else space
    defaults = {**method_defaults(cfg, "deep"), **(fixed or {})}
    out: dict[str, dict[str, Any]] = {}
    for cell_type, es in sets.items():
        if len(es) < 2:
            continue
        scores = np.zeros(len(es))
        params: list[dict[str, Any]] = [{} for _ in range(len(es))]
        for half in (0, 1):
            pick = [i for i in range(len(es)) if i % 2 == half]
            rest = [i for i in range(len(es)) if i % 2 != half]

            def subset(idx: list[int]) -> EvalSet:
                return EvalSet("deep", cell_type, [es.ids[i] for i in idx],
                               [es.folds[i] for i in idx], [es.inputs[i] for i in idx],
                               [es.truths[i] for i in idx])

            with Evaluator({cell_type: subset(pick)}, n_jobs=1) as ev:
                res = tune_cell_type(ev, cell_type, optuna.storages.InMemoryStorage(),
                                     f"heldout-{cell_type}-{half}", defaults, space,
                                     n_trials, seed=seed + half, log=None)
            with Evaluator({cell_type: subset(rest)}, n_jobs=1) as ev:
                scores[rest] = ev.image_scores(cell_type, res.params)
            for i in rest:
                params[i] = dict(res.params)
        out[cell_type] = {"images": len(es), "score": float(scores.mean()), "params": params}
    return out


def analyse(cfg, exp_dir: Path, folds: list[int], n_trials: int, n_overlays: int,
            pictures: Path, overlays: Path) -> dict[str, Any]:
    import cv2
    import numpy as np
    import pandas as pd

    from cellseg import fileio
    from cellseg.constants import CELL_TYPES
    from cellseg.data.data_root import TrainData
    from cellseg.metrics.error_analysis import error_analysis, error_summary, error_table
    from cellseg.metrics.score import match
    from cellseg.viz import error_overlay, plot_iou_hist
    from cellseg.postprocess.decode import decode_with_params
    from cellseg.train import oof
    from cellseg.tune.eval_sets import load_eval_sets
    from cellseg.postprocess.tuned import params_by_type

    data = TrainData(cfg.data.root)
    sets = load_eval_sets(cfg, "deep", folds=folds, data=data, log=None)
    tuned = params_by_type(exp_dir, cfg)
    default = {t: dict(vars(cfg.postprocess)) for t in CELL_TYPES}
    rows, records = [], []
    for cell_type, es in sets.items():
        for i, image_id in enumerate(es.ids):
            probs = oof.dequantize(es.inputs[i])
            _, type_probs = oof.load_oof(exp_dir / f"fold{es.folds[i]}" / oof.OOF_DIRNAME
                                         / f"{image_id}.npz")
            pred_type = CELL_TYPES[int(np.argmax(type_probs))]
            labels = decode_with_params(probs, tuned[cell_type])
            record = error_analysis(es.truths[i], labels)
            records.append((image_id, cell_type, record))
            rows.append({
                "id": image_id, "fold": es.folds[i], "cell_type": cell_type,
                "pred_cell_type": pred_type,
                "untuned": match(es.truths[i], decode_with_params(probs, default[cell_type])).score,
                "tuned_in_sample": match(es.truths[i], labels).score,
                "as_inferred": match(es.truths[i],
                                     decode_with_params(probs, tuned[pred_type])).score,
            })
    table = pd.DataFrame(rows)
    held = held_out_tuning(sets, cfg, n_trials, cfg.tune.seed)
    table["tuned_held_out"] = np.nan
    # The chain's last step: tune.py's per-cell confidence filter, measured held out the same
    # way (bench/confidence_cv.py: cross-fitted confidences, each image's cut-off chosen on
    # the other images of its type).
    from confidence_cv import decode_cells, evaluate

    filtered = evaluate(decode_cells(sets, data, held), clf_seed=0)["table"]
    summary = []
    for cell_type, group in [*table.groupby("cell_type"), ("overall", table)]:
        summary.append({
            "cell_type": cell_type, "images": len(group),
            "untuned": group["untuned"].mean(),
            "tuned_held_out": (np.mean([held[t]["score"] for t in group["cell_type"]])
                               if all(t in held for t in group["cell_type"]) else np.nan),
            "tuned_held_out_filter": float(filtered[filtered["id"].isin(group["id"])]
                                           ["cutoff"].mean()),
            "tuned_in_sample": group["tuned_in_sample"].mean(),
            "as_inferred": group["as_inferred"].mean(),
            "type_accuracy": (group["pred_cell_type"] == group["cell_type"]).mean(),
        })
    errors = error_table(records)
    err_summary = error_summary(errors)
    pictures.mkdir(parents=True, exist_ok=True)
    overlays.mkdir(parents=True, exist_ok=True)
    order = table.sort_values("tuned_in_sample")
    chosen = [("worst", r) for r in order.head(n_overlays).itertuples()] + \
             [("best", r) for r in order.tail(n_overlays).itertuples()]
    by_id = {image_id: rec for image_id, _, rec in records}
    drawn = []
    for kind, r in chosen:
        es = sets[r.cell_type]
        probs = oof.dequantize(es.inputs[es.ids.index(r.id)])
        labels = decode_with_params(probs, tuned[r.cell_type])
        # JPEG: three 704 x 520 panels of a phase-contrast image are ~1.8 MB as PNG.
        path = overlays / f"{kind}_{r.cell_type}_{r.id}.jpg"
        panel = error_overlay(data.load_image(r.id), data.load_instances(r.id).labels,
                              labels, by_id[r.id])
        with fileio.atomic_path(path, suffix=".tmp.jpg") as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 85])
        drawn.append(str(path.relative_to(REPO)))
    by_type: dict[str, list] = {}
    for _, cell_type, rec in records:
        by_type.setdefault(cell_type, []).append(rec)
    plot_iou_hist(by_type, pictures / "iou_hist.png")
    drawn.append(str((pictures / "iou_hist.png").relative_to(REPO)))
    return {"summary": summary, "per_image": table.to_dict("records"),
            "errors": err_summary.reset_index().to_dict("records"), "pictures": drawn,
            "tuned_params": tuned}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = Path(args.source)
    if not (source / "train.csv").is_file():
        print(f"real_cv: skipped: no labelled real data at {source} (the real subset lives "
              f"in ../shared/real_subset in this project's CI; a user's clone has none)")
        return 0
    started = start_info()
    folds = [int(k) for k in args.folds.split(",")]
    root = REPO / "output" / f"{args.exp}_data"
    log: list[dict[str, Any]] = []
    t_chain = time.time()
    link_root(source, root)
    if not (args.skip_train or args.analyse_only):
        if not (root / "folds.csv").is_file():
            run(["src/make_folds.py", "--data-dir", str(root), "--n-folds", str(args.n_folds),
                 "--seed", "42"], log)
        for k in folds:
            finished = (REPO / "output" / args.exp / f"fold{k}" / "result.json").is_file()
            if args.reuse and finished:
                continue
            cmd = ["src/train.py", "--fold", str(k), "--config", args.config, "--data-dir",
                   str(root), "--exp", args.exp, "--overwrite"]
            for o in args.overrides:
                cmd += ["--set", o.replace("{fold}", str(k))]
            run(cmd, log)
    from cellseg.experiment import resolve_config

    cfg, exp_dir, _ = resolve_config(args.config, exp=args.exp, config_explicit=True)
    n_trials = args.n_trials or cfg.tune.n_trials
    storage = exp_dir / f"tuning-{models_digest(exp_dir, folds)}.db"
    if not args.analyse_only:
        run(["src/tune.py", "--exp", args.exp, "--config", args.config, "--folds",
             ",".join(map(str, folds)), "--n-trials", str(n_trials), "--storage",
             f"sqlite:///{storage}", "--no-plots"], log)
    chain_s = time.time() - t_chain
    print("analysing OOF maps ...", flush=True)
    results = analyse(cfg, exp_dir, folds, n_trials, args.n_overlays,
                      RESULTS_DIR / args.name, REPO / "output" / "bench" / args.name)
    import json

    train_s = {}
    for k in folds:
        res = json.loads((exp_dir / f"fold{k}" / "result.json").read_text())
        train_s[k] = {"train_min": round(res["train_seconds"] / 60, 2),
                      "epochs": res["epochs_run"], "best_epoch": res["best_epoch"]}
    results.update(steps=log, folds=train_s,
                   chain_minutes=None if args.analyse_only else round(chain_s / 60, 2))
    headers = ["cell type", "images", "untuned", "tuned (held out)",
               "+ confidence filter (held out)", "tuned (in-sample)", "as inferred",
               "type accuracy"]
    rows = [[r["cell_type"], r["images"], r["untuned"], r["tuned_held_out"],
             r["tuned_held_out_filter"], r["tuned_in_sample"], r["as_inferred"],
             r["type_accuracy"]]
            for r in results["summary"]]
    import pandas as pd

    from cellseg.metrics.error_analysis import SIZE_BINS, WHAT_IF_COLUMNS

    err_cols = ["cell_type", "images", "tp", "fn", "fp", "merges", "splits",
                "precision@0.5", "recall@0.5", "mean_iou",
                *(f"miss_rate_{b}" for b in SIZE_BINS)]
    err_rows = [[e.get(c, "") for c in err_cols] for e in results["errors"]]
    lost_cols = ["cell_type", "images", *WHAT_IF_COLUMNS, "mean_iou"]
    lost_rows = [[e.get(c, "") for c in lost_cols] for e in results["errors"]]
    per_image = pd.DataFrame(results["per_image"])
    confusion = pd.crosstab(per_image["cell_type"], per_image["pred_cell_type"])
    results["type_confusion"] = {t: confusion.loc[t].to_dict() for t in confusion.index}
    body = (f"Config `{args.config}`, experiment `{args.exp}`, folds {folds} of {args.n_folds} "
            f"({len(results['per_image'])} out-of-fold real images). Chain "
            f"(make_folds + train + tune) "
            f"{results['chain_minutes'] or 'not re-run (--analyse-only)'} min; per fold: "
            f"{train_s}.\n\n"
            + markdown_table(headers, rows, digits=4)
            + "\n\nWhere the points are lost (tuned in-sample post-processing, true cell "
            "type; the image-mean score with one kind of error removed alone: "
            "score_outlines = every matched cell's outline perfect, score_no_fp = every false "
            "positive removed, score_merges_split = every merge replaced by its true cells; "
            "mean_iou = mean IoU of matched cells):\n\n"
            + markdown_table(lost_cols, lost_rows, digits=3)
            + "\n\nCell type out of fold (rows: true type, columns: the whole-image "
            "classifier's type):\n\n" + confusion.to_markdown()
            + "\n\nError analysis at IoU 0.5 (tuned post-processing, true cell type; "
            "mean_iou = mean IoU of matched cells; miss rates by true-cell area in px):\n\n"
            + markdown_table(err_cols, err_rows, digits=3)
            + "\n\nPictures: " + ", ".join(f"`{p}`" for p in results["pictures"]) + "\n")
    notes = ["Scores are the competition metric (mean over IoU 0.50-0.95) averaged over "
             "images; 40 labelled real images in all, so a few images move a type's figure.",
             "'tuned (in-sample)' chose its parameters on the images it is scored on; "
             "'tuned (held out)' tunes on half of a type's OOF images and scores the other "
             "half, both ways.",
             "'+ confidence filter (held out)': the held-out decoding, then tune.py's "
             "per-cell confidence filter (bench/confidence_cv.py's protocol: confidences "
             "cross-fitted leave-one-image-out, each image's cut-off chosen on the other "
             "images of its type); the whole chain's held-out estimate.",
             "'as inferred' uses the predicted cell type's parameters, like infer.py."]
    report = make_report(args.name, {"config": args.config, "exp": args.exp, "folds": folds,
                                     "n_folds": args.n_folds, "n_trials": n_trials,
                                     "overrides": args.overrides},
                         results, notes=notes, started=started)
    json_path, md_path = write_results(args.name, report, body,
                                       title="Real cross-validation (bench/real_cv.py)")
    print(body)
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
