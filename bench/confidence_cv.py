"""Does a per-cell confidence filter raise the held-out real score? Cross-fitted, per type.

    python bench/confidence_cv.py --exp base --set output_dir=/work/exp_base/output
    python bench/confidence_cv.py --exp real_cv                  # after bench/real_cv.py
    python bench/confidence_cv.py --collect confidence_cv,confidence_cv_e1 --name confidence_cv_all

Same OOF maps and the same held-out decoding as ``bench/real_cv.py``: per type, Optuna tunes
the decoder on half of the OOF images and decodes the other half, both ways
(``real_cv.held_out_tuning``). Then, for every decoded cell:

- **label**: it matches a true cell at IoU 0.5 (the metric's matching,
  ``cellseg.postprocess.confidence.match_labels``);
- **cross-fitted confidence**: leave one image out. Image i's cells are scored by a
  ``CellConfidence`` model fitted on the cells of the 15 other images (all types pooled, the
  type as a feature), so no image is scored by a model that saw it;
- **held-out cut-off**: image i's cut-off is chosen on the *other* images of its type, by a
  grid (0, 0.05, ..., 0.9; ties -> the lowest, i.e. the least filtering). Their confidences
  come from models fitted without image i *and* without themselves (nested leave-one-out), so
  neither the model nor the cut-off that filter image i saw image i's labels.

Rows per type: the held-out baseline (no filter), the filter with that held-out cut-off, two
variants (drop the lowest-confidence fraction q of each image's cells, q held out the same way;
the cut-off only for cells whose mean body probability is below the image's median), the
in-sample best cut-off per type (optimistic, to separate a useless model from a badly chosen
cut-off), and the in-sample upper bound (every false positive removed perfectly). Also the
classifier's cross-fitted ROC AUC (cells pooled) and the mean matched IoU. No training of the
network and no new tuning beyond real_cv's held-out protocol: a few minutes.

A final model fitted on every image is saved (``--save``) with its JSON record, to show the
file format; it is not used for any score here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, make_report, markdown_table, now_iso, publish, start_info
from real_cv import REAL_SUBSET, held_out_tuning

from cellseg.postprocess.confidence import CUTOFF_GRID

GRID_CUTOFF = list(CUTOFF_GRID)  # 0.0 .. 0.9, the grid tune.py chooses from
GRID_FRACTION = [round(0.05 * k, 2) for k in range(11)]  # 0.0 .. 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/real_cpu.yaml")
    p.add_argument("--exp", default="real_cv", help="trained experiment (default real_cv)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="config override, e.g. output_dir=... to read an "
                   "experiment trained in another checkout")
    p.add_argument("--folds", default="0,1", help="its folds (default 0,1)")
    p.add_argument("--n-trials", type=int, default=None, help="Optuna trials per half")
    p.add_argument("--seed", type=int, default=0, help="the classifier's random_state")
    p.add_argument("--tune-seeds", default=None, help="Optuna seeds of the held-out decoding, "
                   "comma-separated (default: the config's tune.seed, as real_cv); the first "
                   "gives the detailed tables, all of them the table across seeds")
    p.add_argument("--save", default=None, help="where to save the model fitted on every "
                   "image (default output/confidence/<exp>/confidence.skops)")
    p.add_argument("--name", default="confidence_cv", help="results file stem")
    p.add_argument("--collect", default=None, metavar="STEM[,STEM...]",
                   help="no computation: put the per-type deltas of earlier results "
                   "(bench/results/<STEM>.json) side by side in results/<--name>.{md,json}")
    return p.parse_args(argv)


def collect(args: argparse.Namespace) -> int:
    """Side-by-side table of earlier confidence_cv results (one row per run and type)."""
    import json

    from common import RESULTS_DIR

    started = start_info()
    headers = ["results", "exp", "cell type", "images", "baseline (held out)",
               "cut-off: delta ± SE", "drop fraction q: delta", "low-body cut-off: delta ± SE",
               "cut-off in-sample: delta", "perfect filter: delta", "AUC"]
    rows, records = [], []
    for stem in args.collect.split(","):
        report = json.loads((RESULTS_DIR / f"{stem}.json").read_text())
        exp = report["params"]["exp"]
        for r in report["results"]["summary"]:
            rows.append([stem, exp, r["cell_type"], r["images"], r["baseline"],
                         f"{r['delta']:+.4f} ± {r['delta_se']:.4f}", r["delta_fraction"],
                         f"{r['delta_low_body']:+.4f} ± {r['delta_low_body_se']:.4f}",
                         r["cutoff_in_sample"] - r["baseline"],
                         r["perfect_filter"] - r["baseline"], r["auc"]])
            records.append({"results": stem, "exp": exp, **r})
    body = ("Per-type deltas (filtered minus baseline, both held out) of "
            + ", ".join(f"`{s}`" for s in args.collect.split(","))
            + " (each file has the protocol, the per-image table and the timings).\n\n"
            + markdown_table(headers, rows, digits=4) + "\n")
    report = make_report(args.name, {"collect": args.collect}, {"rows": records},
                         notes=[("Same 16 out-of-fold images in every run; the networks "
                                "differ (issue 22's steps), so the runs are not independent "
                                "samples of the images.")], started=started)
    return publish(args.name, report, body,
                   title="Per-cell confidence across networks "
                         "(bench/confidence_cv.py --collect)")


class ImageCells:
    """One decoded image: its cells' features and labels, and exact scores of any subset of
    its cells (:class:`cellseg.postprocess.confidence.ScoredImage`, which tune.py uses too)."""

    def __init__(self, image_id: str, cell_type: str, fold: int, truth: Any, labels: Any,
                 probs: Any, image: Any) -> None:
        import numpy as np

        from cellseg.postprocess.confidence import FEATURE_NAMES, ScoredImage, cell_features

        self.id, self.cell_type, self.fold = image_id, cell_type, fold
        self.ids, self.X = cell_features(labels, probs, image, cell_type)
        self.scored = ScoredImage(truth, labels)
        assert np.array_equal(self.scored.ids, self.ids)
        self.y = self.scored.y
        self.body_mean = self.X[:, FEATURE_NAMES.index("body_mean")]

    @property
    def n(self) -> int:
        return int(self.ids.size)

    def score(self, keep: Any) -> tuple[float, float]:
        """(competition score, mean matched IoU at 0.5) with only the cells where ``keep``."""
        return self.scored.score(keep)


def keep_rule(kind: str, cells: ImageCells, p: Any, value: float) -> Any:
    """Which cells a variant keeps at setting ``value``."""
    import numpy as np

    if kind == "cutoff":
        return p >= value
    if kind == "fraction":  # drop the lowest-confidence fraction of the image's cells
        k = int(np.floor(value * cells.n))
        keep = np.ones(cells.n, bool)
        if k:
            keep[np.argsort(p, kind="stable")[:k]] = False
        return keep
    if kind == "low_body_cutoff":  # the cut-off only for the image's less certain half
        low = cells.body_mean < np.median(cells.body_mean)
        return ~low | (p >= value)
    raise ValueError(kind)


GRIDS = {"cutoff": GRID_CUTOFF, "fraction": GRID_FRACTION, "low_body_cutoff": GRID_CUTOFF}


def choose(kind: str, others: list[tuple[ImageCells, Any]]) -> float:
    """The grid value with the best mean score on ``others`` (ties -> least filtering, the
    rule tune.py uses: :func:`cellseg.postprocess.confidence.best_cutoff`)."""
    import numpy as np

    from cellseg.postprocess.confidence import best_cutoff

    means = [np.mean([c.score(keep_rule(kind, c, p, v))[0] for c, p in others])
             for v in GRIDS[kind]]
    return best_cutoff(np.asarray(means), GRIDS[kind])


def evaluate(cells: list[ImageCells], clf_seed: int) -> dict[str, Any]:
    """Cross-fit, choose cut-offs held out, score: the tables of one held-out decoding."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from cellseg.postprocess.confidence import CellConfidence, cross_fit_groups

    timings: dict[str, float] = {}
    n_img = len(cells)
    by_id = {c.id: k for k, c in enumerate(cells)}
    X = np.concatenate([c.X for c in cells])
    y = np.concatenate([c.y for c in cells])
    group = np.concatenate([[c.id] * c.n for c in cells])
    print(f"{n_img} images, {len(y)} decoded cells, {y.mean():.3f} matched at IoU 0.5",
          flush=True)
    # Outer cross-fit: leave one image out.
    t0 = time.time()
    outer: dict[str, np.ndarray] = {}
    n_fits = 0
    for g, train, test in cross_fit_groups(group):
        assert g not in set(group[train])
        model = CellConfidence(random_state=clf_seed).fit(X[train], y[train])
        n_fits += 1
        outer[g] = model.predict_proba(X[test])
    # Inner (nested) cross-fit: for test image i, every other image j of its type scored by a
    # model fitted without i and without j.
    inner: dict[tuple[str, str], np.ndarray] = {}
    for ci in cells:
        for cj in cells:
            if cj.id == ci.id or cj.cell_type != ci.cell_type:
                continue
            train = (group != ci.id) & (group != cj.id)
            model = CellConfidence(random_state=clf_seed).fit(X[train], y[train])
            n_fits += 1
            inner[(ci.id, cj.id)] = model.predict_proba(cj.X)
    timings["cross_fit_s"] = time.time() - t0
    timings["n_fits"] = n_fits

    t0 = time.time()
    rows = []
    for c in cells:
        p = outer[c.id]
        base, base_iou = c.score(np.ones(c.n, bool))
        perfect, perfect_iou = c.score(c.y.astype(bool))
        row = {"id": c.id, "cell_type": c.cell_type, "fold": c.fold, "cells": c.n,
               "matched": int(c.y.sum()), "baseline": base, "baseline_iou": base_iou,
               "perfect_filter": perfect, "perfect_filter_iou": perfect_iou}
        others = [(cells[by_id[j]], inner[(c.id, j)]) for (i, j) in inner if i == c.id]
        for kind in GRIDS:
            v = choose(kind, others)
            keep = keep_rule(kind, c, p, v)
            s, miou = c.score(keep)
            row.update({kind: s, f"{kind}_iou": miou, f"{kind}_value": v,
                        f"{kind}_dropped": int((~keep).sum())})
        row["auc"] = (float(roc_auc_score(c.y, p)) if 0 < c.y.mean() < 1 else float("nan"))
        rows.append(row)
    table = pd.DataFrame(rows)
    # In-sample best cut-off per type on the cross-fitted confidences (optimistic).
    insample_cut: dict[str, float] = {}
    table["cutoff_in_sample"] = np.nan
    for t, grp in table.groupby("cell_type"):
        members = [(cells[by_id[i]], outer[i]) for i in grp["id"]]
        v = choose("cutoff", members)
        insample_cut[t] = v
        for i in grp["id"]:
            c = cells[by_id[i]]
            table.loc[table["id"] == i, "cutoff_in_sample"] = c.score(
                keep_rule("cutoff", c, outer[i], v))[0]
    timings["cutoffs_and_scores_s"] = time.time() - t0

    summary = []
    for t, grp in [*table.groupby("cell_type"), ("overall", table)]:
        ids = list(grp["id"])
        yy = np.concatenate([cells[by_id[i]].y for i in ids])
        pp = np.concatenate([outer[i] for i in ids])
        auc = float(roc_auc_score(yy, pp)) if 0 < yy.mean() < 1 else float("nan")
        per_image_auc = [roc_auc_score(cells[by_id[i]].y, outer[i]) for i in ids
                         if 0 < cells[by_id[i]].y.mean() < 1]
        def delta(kind: str, grp: pd.DataFrame = grp) -> tuple[float, float]:
            d = (grp[kind] - grp["baseline"]).to_numpy()
            return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 \
                else float("nan")

        summary.append({
            "cell_type": t, "images": len(grp), "cells": int(grp["cells"].sum()),
            "matched_share": float(yy.mean()),
            "baseline": grp["baseline"].mean(),
            "cutoff": grp["cutoff"].mean(),
            "delta": delta("cutoff")[0], "delta_se": delta("cutoff")[1],
            "delta_fraction": delta("fraction")[0], "delta_fraction_se": delta("fraction")[1],
            "delta_low_body": delta("low_body_cutoff")[0],
            "delta_low_body_se": delta("low_body_cutoff")[1],
            "fraction": grp["fraction"].mean(),
            "low_body_cutoff": grp["low_body_cutoff"].mean(),
            "cutoff_in_sample": grp["cutoff_in_sample"].mean(),
            "perfect_filter": grp["perfect_filter"].mean(),
            "auc": auc, "auc_per_image_mean": float(np.mean(per_image_auc)),
            "iou_baseline": float(np.nanmean(grp["baseline_iou"])),
            "iou_cutoff": float(np.nanmean(grp["cutoff_iou"])),
            "images_better": int((grp["cutoff"] > grp["baseline"] + 1e-9).sum()),
            "images_worse": int((grp["cutoff"] < grp["baseline"] - 1e-9).sum()),
        })
    return {"summary": summary, "table": table, "insample_cut": insample_cut,
            "timings": timings, "n_fits": n_fits, "X": X, "y": y}


def decode_cells(sets: dict, data: Any, held: dict) -> list[ImageCells]:
    """Every OOF image decoded with its held-out parameters, with its cells' features."""
    from cellseg.postprocess.decode import decode_with_params
    from cellseg.train import oof

    cells: list[ImageCells] = []
    for cell_type, es in sets.items():
        if cell_type not in held:
            continue
        for i, image_id in enumerate(es.ids):
            probs = oof.dequantize(es.inputs[i])
            labels = decode_with_params(probs, held[cell_type]["params"][i])
            cells.append(ImageCells(image_id, cell_type, es.folds[i], es.truths[i], labels,
                                    probs, data.load_image(image_id)))
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.collect:
        return collect(args)
    if not (REAL_SUBSET / "train.csv").is_file():
        print(f"confidence_cv: skipped: no labelled real data at {REAL_SUBSET}")
        return 0
    import numpy as np
    import pandas as pd
    import sklearn

    from cellseg.data.data_root import TrainData
    from cellseg.experiment import resolve_config
    from cellseg.postprocess.confidence import FEATURE_NAMES, CellConfidence, ids_hash
    from cellseg.tune.eval_sets import load_eval_sets

    started = start_info()
    cfg, exp_dir, _ = resolve_config(args.config, args.overrides, exp=args.exp,
                                     config_explicit=True)
    folds = [int(k) for k in args.folds.split(",")]
    if not all((exp_dir / f"fold{k}" / "best.keras").is_file() for k in folds):
        print(f"confidence_cv: skipped: {exp_dir} has no trained folds {folds}")
        return 0
    n_trials = args.n_trials or cfg.tune.n_trials
    tune_seeds = ([int(s) for s in args.tune_seeds.split(",")] if args.tune_seeds
                  else [cfg.tune.seed])
    data = TrainData(cfg.data.root)
    sets = load_eval_sets(cfg, "deep", folds=folds, data=data, log=None)
    runs = []
    for tune_seed in tune_seeds:
        print(f"held-out decoding, Optuna seed {tune_seed}", flush=True)
        t0 = time.time()
        held = held_out_tuning(sets, cfg, n_trials, tune_seed)
        t_tune = time.time() - t0
        t0 = time.time()
        cells = decode_cells(sets, data, held)
        t_feat = time.time() - t0
        res = evaluate(cells, args.seed)
        res["timings"] = {"held_out_tuning_s": t_tune, "decode_and_features_s": t_feat,
                          **res["timings"]}
        res.update(tune_seed=tune_seed, cells=cells)
        runs.append(res)
    first = runs[0]
    summary, table, insample_cut = first["summary"], first["table"], first["insample_cut"]
    timings, n_fits, X, y, cells = (first["timings"], first["n_fits"], first["X"],
                                    first["y"], first["cells"])
    n_img = len(cells)


    # The final model on every image, saved with its record (format demonstration).
    t0 = time.time()
    save = Path(args.save) if args.save else REPO / "output" / "confidence" / args.exp / \
        "confidence.skops"
    final = CellConfidence(random_state=args.seed).fit(X, y)
    path = final.save(save, experiment=str(exp_dir), folds=folds,
                      image_ids_hash=ids_hash(c.id for c in cells), n_images=n_img,
                      image_ids=sorted(c.id for c in cells), date=now_iso(),
                      decoding=f"held-out tuned, Optuna seed {tune_seeds[0]}",
                      cutoffs_in_sample=insample_cut, trained_by="bench/confidence_cv.py",
                      label="matches a true cell at IoU > 0.5 (held-out tuned decoding)")
    again = CellConfidence.load(path)
    assert np.array_equal(again.predict_proba(X), final.predict_proba(X))
    timings["final_fit_save_load_s"] = time.time() - t0
    timings = {k: round(v, 2) for k, v in timings.items()}

    headers = ["cell type", "images", "cells", "matched", "baseline (held out)",
               "filter (held out)", "delta ± SE", "drop fraction q",
               "cut-off on low-body cells (delta ± SE)",
               "cut-off in-sample", "perfect filter (in-sample)", "AUC (cross-fitted)",
               "AUC per image", "IoU baseline", "IoU filtered", "images +/-"]
    trows = [[r["cell_type"], r["images"], r["cells"], r["matched_share"], r["baseline"],
              r["cutoff"], f"{r['delta']:+.4f} ± {r['delta_se']:.4f}", r["fraction"],
              (f"{r['low_body_cutoff']:.4f} ({r['delta_low_body']:+.4f} ± "
              f"{r['delta_low_body_se']:.4f})"),
              r["cutoff_in_sample"], r["perfect_filter"], r["auc"], r["auc_per_image_mean"],
              r["iou_baseline"], r["iou_cutoff"],
              f"{r['images_better']}/{r['images_worse']}"] for r in summary]
    seed_cols = ["baseline", "cutoff", "delta", "delta_fraction", "delta_low_body",
                 "cutoff_in_sample", "perfect_filter", "auc"]
    seeds = pd.DataFrame([{"tune_seed": r["tune_seed"], "cell_type": s["cell_type"],
                           **{k: s[k] for k in seed_cols}} for r in runs for s in r["summary"]])
    seed_mean = seeds.groupby("cell_type", sort=False)[seed_cols].mean().reset_index()
    seed_mean.insert(0, "tune_seed", "mean")
    seed_table = pd.concat([seeds, seed_mean], ignore_index=True)
    img_cols = ["id", "cell_type", "fold", "cells", "matched", "auc", "baseline", "cutoff",
                "cutoff_value", "cutoff_dropped", "fraction", "fraction_value",
                "low_body_cutoff", "low_body_cutoff_value", "perfect_filter"]
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    body = (f"Experiment `{args.exp}` ({exp_dir}), folds {folds}, {n_img} out-of-fold real "
            f"images, {len(y)} decoded cells; decoder tuned held out ({n_trials} Optuna trials "
            f"per half, as `bench/real_cv.py`). Confidence: `CellConfidence` "
            f"(HistGradientBoostingClassifier, random_state {args.seed}, "
            f"{len(FEATURE_NAMES)} features), cross-fitted leave-one-image-out; cut-offs from "
            f"a grid chosen on the other images of the type with nested leave-one-out "
            f"confidences ({n_fits} fits in all).\n\n"
            + markdown_table(headers, trows, digits=4)
            + f"\n\nAcross Optuna seeds of the held-out decoding {tune_seeds} (the first is "
            "the table above; `delta*` = filtered minus baseline, held out; `delta` = the "
            "cut-off, `delta_fraction` = drop fraction q, `delta_low_body` = cut-off on "
            "low-body cells):\n\n"
            + markdown_table(list(seed_table.columns), seed_table.to_numpy().tolist(), digits=4)
            + "\n\nPer image (held-out decoding; `*_value` = the cut-off or fraction chosen "
            "without the image):\n\n"
            + markdown_table(img_cols, table[img_cols].to_numpy().tolist(), digits=3)
            + f"\n\nIn-sample best cut-off per type (optimistic): {insample_cut}. "
            f"Final model (all images): `{shown}` + `.json` record. Timings (s): "
            f"{timings}.\n")
    notes = [
        ("Scores are the competition metric averaged over images; `baseline (held out)` is "
         "real_cv's held-out tuned score (same protocol, same seed)."),
        ("`filter (held out)`: cells with cross-fitted confidence below the cut-off removed; "
         "the cut-off for an image is chosen on the other images of its type (grid 0-0.9, "
         "ties -> least filtering), with confidences from models that saw neither image."),
        ("`drop fraction q`: each image's lowest-confidence fraction q removed (q in 0-0.5, held "
         "out the same way); `cut-off on low-body cells`: the cut-off applies only to cells "
         "whose mean body probability is below their image's median."),
        ("`cut-off in-sample`: one cut-off per type chosen on the same images (optimistic); "
         "`perfect filter`: every unmatched cell removed using the truth (upper bound)."),
        ("`AUC (cross-fitted)`: ROC AUC of the leave-one-image-out confidence against "
         "'matches a true cell at IoU 0.5', cells pooled over the type's images; `AUC per "
         "image`: mean of per-image AUCs (without between-image differences)."),
        ("The decoder's held-out parameters of a training image were tuned on the other half "
         "of its type, which may include the scored image: that touches the training cells' "
         "decoding, never their labels or the scored image's confidence."),
        f"scikit-learn {sklearn.__version__}.",
    ]
    report = make_report(args.name, {"exp": args.exp, "exp_dir": str(exp_dir),
                                     "folds": folds, "n_trials": n_trials,
                                     "config": args.config, "overrides": args.overrides,
                                     "seed": args.seed, "tune_seeds": tune_seeds,
                                     "cross_fit": "leave-one-image-out",
                                     "cutoff_choice": "grid on the other images of the type, "
                                     "nested leave-one-out confidences"},
                         {"summary": summary,
                          "per_image": table.replace({np.nan: None}).to_dict("records"),
                          "cutoffs_in_sample": insample_cut, "timings": timings,
                          "across_tune_seeds": seed_table.to_dict("records"),
                          "timings_per_seed": [r["timings"] for r in runs],
                          "model": str(path), "features": list(FEATURE_NAMES)},
                         notes=notes, started=started)
    return publish(args.name, report, body,
                   title="Per-cell confidence, cross-fitted on real OOF maps "
                         "(bench/confidence_cv.py)")


if __name__ == "__main__":
    sys.exit(main())
