"""Test-time flips and head modes on a trained real-CV experiment, scored held out.

    python bench/tta_heads.py --exp-dir /work/exp_r20/output/base     # folds 0,1
    python bench/tta_heads.py --exp real_cv --jobs 2                  # output/real_cv

Issue 22 item 2 ("TTA and fold averaging at the probability level", and the head mode): every
OOF image is predicted again by its own fold's ``best.keras`` (the fold whose validation set
holds it), with ``cellseg.model.predict.predict_images`` and the normalisation of training's
validation (``normalize_image``, one image per call), for each variant: TTA {identity},
{identity, hflip} (what ``train.py`` wrote the OOF maps with), {identity, hflip, vflip,
hvflip}, times heads ``mean`` / ``last`` (and ``prune=D-1`` with the baseline flips). The maps
are quantised like the OOF files (``cellseg.train.oof.quantize``), so the decoder sees what
tuning sees. First check: heads=mean + [identity, hflip] must reproduce the saved OOF maps
(max |difference| in uint8 steps, share of values that differ).

Per variant, the same protocol as ``bench/real_cv.py``: ``held_out_tuning`` (Optuna, the
config's trials and seed, tune on half of a type's images, score the other half, both ways)
and in-sample tuning (all the type's images, tune.py's seed), then the error analysis of the
held-out decodings (what-if scores, mean matched IoU) and of the in-sample ones (mean IoU),
plus model seconds per image. No training. When ``../shared/real_subset`` or the experiment
is absent it prints a note and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO,
    make_report,
    markdown_table,
    publish,
    quiet_tensorflow,
    start_info,
)
from real_cv import REAL_SUBSET, held_out_tuning  # noqa: E402

BASE_TTA = ("identity", "hflip")
TTAS: dict[str, tuple[str, ...]] = {
    "id": ("identity",),
    "id+h": BASE_TTA,
    "id+h+v+hv": ("identity", "hflip", "vflip", "hvflip"),
}


def variant_key(heads: str, tta: tuple[str, ...]) -> str:
    """Short name for ``--only``: ``mean:id+h``, ``last:id+h+v+hv``, ``prune=2:id+h``."""
    return f"{heads}:{next(k for k, v in TTAS.items() if tuple(v) == tuple(tta))}"


def variants(depth: int, prune: bool = True) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, heads, tta) of every variant; the saved OOF maps' setting first."""
    out = [("mean, id+h (OOF setting)", "mean", BASE_TTA)]
    for heads in ("mean", "last"):
        for tname, tta in TTAS.items():
            if (heads, tta) != ("mean", BASE_TTA):
                out.append((f"{heads}, {tname}", heads, tta))
    if prune and depth > 1:
        out.append((f"prune={depth - 1}, id+h", f"prune={depth - 1}", BASE_TTA))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/real_cpu.yaml")
    p.add_argument("--exp", default="real_cv", help="experiment under output/ (default "
                   "real_cv)")
    p.add_argument("--exp-dir", default=None, help="or the experiment folder itself (e.g. "
                   "/work/exp_r20/output/base); read only")
    p.add_argument("--folds", default="0,1", help="its folds (default 0,1)")
    p.add_argument("--n-trials", type=int, default=None, help="Optuna trials per study "
                   "(default: the config's, as real_cv.py)")
    p.add_argument("--no-prune", action="store_true", help="skip the prune=D-1 variant")
    p.add_argument("--limit", type=int, default=0, help="images per cell type (0 = all; "
                   "smoke runs)")
    p.add_argument("--only", default="", help="variants to run, comma-separated keys "
                   "(mean:id, mean:id+h, mean:id+h+v+hv, last:..., prune=L:id+h); default all")
    p.add_argument("--seeds", default="", help="tuning seeds, comma-separated (default: the "
                   "config's tune.seed, as real_cv.py); several measure the tuning noise")
    p.add_argument("--jobs", type=int, default=1, help="variants tuned in parallel processes")
    p.add_argument("--name", default="tta_heads", help="results file stem")
    p.add_argument("--out-dir", default=None, help="results folder (default bench/results)")
    return p.parse_args(argv)


def tune_variant(name: str, sets: dict, cfg, n_trials: int, seed: int) -> dict[str, Any]:
    """Held-out and in-sample tuning of one variant's maps + error analysis (own process)."""
    import optuna

    from cellseg.metrics.error_analysis import (
        WHAT_IF_COLUMNS,
        error_analysis,
        error_summary,
        error_table,
    )
    from cellseg.postprocess.decode import decode_with_params
    from cellseg.postprocess.search_space import DEEP_SEARCH_SPACE
    from cellseg.train import oof
    from cellseg.tune.scoring import Evaluator
    from cellseg.tune.study import method_defaults, tune_cell_type

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.time()
    held = held_out_tuning(sets, cfg, n_trials, seed)
    defaults = method_defaults(cfg, "deep")
    in_params: dict[str, dict[str, Any]] = {}
    in_scores: dict[str, list[float]] = {}
    for cell_type in held:
        with Evaluator({cell_type: sets[cell_type]}, n_jobs=1) as ev:
            res = tune_cell_type(ev, cell_type, optuna.storages.InMemoryStorage(),
                                 f"insample-{cell_type}", defaults, DEEP_SEARCH_SPACE,
                                 n_trials, seed=seed, log=None)
            in_params[cell_type] = dict(res.params)
            in_scores[cell_type] = [float(s) for s in ev.image_scores(cell_type, res.params)]
    rec_held, rec_in = [], []
    for cell_type, es in sets.items():
        if cell_type not in held:
            continue
        for i, image_id in enumerate(es.ids):
            probs = oof.dequantize(es.inputs[i])
            rec_held.append((image_id, cell_type, error_analysis(
                es.truths[i], decode_with_params(probs, held[cell_type]["params"][i]))))
            rec_in.append((image_id, cell_type, error_analysis(
                es.truths[i], decode_with_params(probs, in_params[cell_type]))))
    s_held = error_summary(error_table(rec_held))
    s_in = error_summary(error_table(rec_in))
    rows = []
    for cell_type, r in s_held.iterrows():
        if cell_type == "overall":
            held_score = float(sum(held[t]["score"] * held[t]["images"] for t in held)
                               / sum(held[t]["images"] for t in held))
        else:
            held_score = held[cell_type]["score"]
        rows.append({"variant": name, "seed": seed, "cell_type": cell_type,
                     "images": int(r["images"]),
                     "held_out": held_score,
                     "in_sample": float(s_in.loc[cell_type, "score"]),
                     **{f"held_{k}": float(r[k]) for k in WHAT_IF_COLUMNS if k != "score"},
                     "held_mean_iou": float(r["mean_iou"]),
                     "in_sample_mean_iou": float(s_in.loc[cell_type, "mean_iou"]),
                     "tp": int(r["tp"]), "fn": int(r["fn"]), "fp": int(r["fp"]),
                     "merges": int(r["merges"]), "splits": int(r["splits"])})
    per_image = {t: {"ids": sets[t].ids, "held_out": [float(x) for x in
                                                      _held_scores(held[t], sets[t], cfg)],
                     "in_sample": in_scores[t]} for t in held}
    return {"variant": name, "seed": seed, "rows": rows, "in_sample_params": in_params,
            "held_out_params": {t: held[t]["params"] for t in held},
            "per_image": per_image, "tune_seconds": round(time.time() - t0, 1)}


def _held_scores(held_t: dict[str, Any], es, cfg) -> list[float]:
    """Per image held-out score (re-scored with the parameters that scored it)."""
    from cellseg.metrics.score import match
    from cellseg.postprocess.decode import decode_with_params
    from cellseg.train import oof

    return [match(es.truths[i], decode_with_params(oof.dequantize(es.inputs[i]),
                                                   held_t["params"][i])).score
            for i in range(len(es))]


def limit_sets(sets: dict, limit: int) -> dict:
    """The first ``limit`` images of each type's eval set (``--limit``: a quick run)."""
    from cellseg.tune.eval_sets import EvalSet

    return {t: EvalSet("deep", t, es.ids[:limit], es.folds[:limit], es.inputs[:limit],
                       es.truths[:limit]) for t, es in sets.items()}


def map_check(maps_by_type: dict, sets: dict) -> dict[str, Any]:
    """How far re-predicted uint8 maps (type -> list, in ``sets``' order) are from the saved
    OOF maps: the sanity check that the bench predicts what train.py saved."""
    import numpy as np

    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16))
             for t, es in sets.items() for a, b in zip(maps_by_type[t], es.inputs, strict=True)]
    total = sum(d.size for d in diffs)
    return {"images": len(diffs),
            "max_abs_diff_uint8": int(max(int(d.max()) for d in diffs)),
            "share_values_differing": float(sum(int((d > 0).sum()) for d in diffs) / total),
            "share_values_off_by_more_than_1": float(sum(int((d > 1).sum()) for d in diffs)
                                                     / total)}


def run_jobs(jobs: list[tuple[str, dict, int]], cfg, n_trials: int, n_proc: int) -> list[dict]:
    """:func:`tune_variant` for each (row name, eval sets, seed), on ``n_proc`` processes."""
    if n_proc > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(n_proc, len(jobs)),
                                 mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(tune_variant, r, s, cfg, n_trials, sd) for r, s, sd in jobs]
            return [f.result() for f in futures]
    out = []
    for r, s, sd in jobs:
        print(f"tuning: {r}", flush=True)
        out.append(tune_variant(r, s, cfg, n_trials, sd))
    return out


def predict_variants(sets: dict, exp_dir: Path, folds: list[int], data, specs
                     ) -> tuple[dict[str, dict], dict[str, float], dict[str, Any]]:
    """Maps of every variant (uint8, as the OOF files), model seconds per image, the check of
    the OOF setting against the saved files."""
    from cellseg.model.network import model_info
    from cellseg.model.predict import load_models, normalize_image, predict_images
    from cellseg.train import oof
    from cellseg.tune.eval_sets import EvalSet

    models = dict(zip(folds, load_models([exp_dir / f"fold{k}" / "best.keras" for k in folds]),
                      strict=True))
    images = {t: [normalize_image(data.load_image(i))[None] for i in es.ids]
              for t, es in sets.items()}
    maps: dict[str, dict[str, list]] = {}
    seconds: dict[str, float] = {}
    for name, heads, tta in specs:
        for model in models.values():  # warm-up: trace (and build a pruned view) untimed
            predict_images(model, next(iter(images.values()))[0], heads=heads, tta=tta,
                           batch_size=1)
        spent, n = 0.0, 0
        maps[name] = {}
        for t, es in sets.items():
            out = []
            for i in range(len(es)):
                t0 = time.perf_counter()
                probs, _ = predict_images(models[es.folds[i]], images[t][i], heads=heads,
                                          tta=tta, batch_size=1)
                spent += time.perf_counter() - t0
                n += 1
                out.append(oof.quantize(probs[0]))
            maps[name][t] = out
        seconds[name] = spent / max(n, 1)
        print(f"  predicted {name}: {seconds[name]:.2f} s per image", flush=True)
    ref = specs[0][0]
    check = {**map_check(maps[ref], sets),
             "depth": model_info(next(iter(models.values()))).depth}
    out_sets = {name: {t: EvalSet("deep", t, es.ids, es.folds, maps[name][t], es.truths)
                       for t, es in sets.items()} for name in maps}
    return out_sets, seconds, check


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (REAL_SUBSET / "train.csv").is_file():
        print(f"tta_heads: skipped: no labelled real data at {REAL_SUBSET}")
        return 0
    quiet_tensorflow()
    from cellseg.experiment import resolve_config

    folds = [int(k) for k in args.folds.split(",")]
    overrides: list[str] = []
    exp = args.exp
    if args.exp_dir:
        exp_path = Path(args.exp_dir).resolve()
        overrides.append(f"output_dir={exp_path.parent}")
        exp = exp_path.name
    if not all((Path(args.exp_dir or REPO / "output" / exp) / f"fold{k}" / "best.keras"
                ).is_file() for k in folds):
        print(f"tta_heads: skipped: {args.exp_dir or 'output/' + exp} has no trained folds "
              f"{folds}")
        return 0
    import numpy as np
    import pandas as pd

    from cellseg.data.data_root import TrainData
    from cellseg.tune.eval_sets import load_eval_sets

    started = start_info()
    t_all = time.time()
    cfg, exp_dir, _ = resolve_config(args.config, overrides, exp=exp, config_explicit=True)
    n_trials = args.n_trials or cfg.tune.n_trials
    data = TrainData(cfg.data.root)
    sets = load_eval_sets(cfg, "deep", folds=folds, data=data, log=None)
    if args.limit:
        sets = limit_sets(sets, args.limit)
    from cellseg.model.network import model_info
    from cellseg.model.predict import load_models

    depth = model_info(load_models([exp_dir / f"fold{folds[0]}" / "best.keras"])[0]).depth
    specs = variants(depth, prune=not args.no_prune)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        known = {variant_key(h, t): (n, h, t) for n, h, t in specs}
        bad = [k for k in keys if k not in known]
        if bad:
            raise SystemExit(f"error: --only {bad}: known variants {list(known)}")
        specs = [known[k] for k in keys]
    seeds = ([int(x) for x in args.seeds.split(",")] if args.seeds else [cfg.tune.seed])
    print(f"predicting {sum(len(es) for es in sets.values())} OOF images x {len(specs)} "
          f"variants ...", flush=True)
    t0 = time.time()
    variant_sets, seconds, check = predict_variants(sets, exp_dir, folds, data, specs)
    predict_s = time.time() - t0
    print(f"check vs saved OOF maps: {check}", flush=True)
    # The saved maps themselves as a row: the reference real_cv.py's numbers came from.
    # Byte-identical maps give identical tuning (same seed), so that row is then copied.
    oof_name = variants(depth)[0][0]
    identical = check["max_abs_diff_uint8"] == 0 and oof_name in variant_sets
    if not identical:
        variant_sets = {"saved OOF maps": sets, **variant_sets}
        seconds["saved OOF maps"] = float("nan")
    if identical:
        seconds["saved OOF maps"] = seconds[oof_name]

    def row_name(name: str, seed: int) -> str:
        return name if len(seeds) == 1 else f"{name} @seed {seed}"

    jobs = [(row_name(n, sd), n, sd) for sd in seeds for n in variant_sets]
    t0 = time.time()
    done = run_jobs([(r, variant_sets[n], sd) for r, n, sd in jobs], cfg, n_trials, args.jobs)
    tune_s = time.time() - t0
    if identical:
        import copy

        first = next(i for i, (_, n, sd) in enumerate(jobs) if n == oof_name and sd == seeds[0])
        saved = copy.deepcopy(done[first])
        name = row_name("saved OOF maps", seeds[0])
        saved["variant"] = name
        for r in saved["rows"]:
            r["variant"] = name
        done.insert(0, saved)
        jobs.insert(0, (name, "saved OOF maps", seeds[0]))
    names = [r for r, _, _ in jobs]
    frame = pd.DataFrame([r for d in done for r in d["rows"]])
    sec_by_row = {r: seconds.get(n, np.nan) for r, n, _ in jobs}
    frame["model_s_per_image"] = frame["variant"].map(sec_by_row)
    # Reference: the OOF setting re-predicted, tuned with the same seed (else the first row).
    refs = {}
    for r, n, sd in jobs:
        if n == oof_name or (n == "saved OOF maps" and sd not in refs):
            refs[sd] = r
    ref_by_seed = {sd: frame[frame["variant"] == r].set_index("cell_type")["held_out"]
                   for sd, r in refs.items()}
    frame["held_vs_ref"] = [
        h - ref_by_seed[sd][t] if sd in ref_by_seed else np.nan
        for h, sd, t in zip(frame["held_out"], frame["seed"], frame["cell_type"], strict=True)]
    order = ["variant", "seed", "cell_type", "images", "held_out", "held_vs_ref", "in_sample",
             "held_mean_iou", "in_sample_mean_iou", "held_score_outlines", "held_score_no_fp",
             "held_score_merges_split", "tp", "fn", "fp", "merges", "splits",
             "model_s_per_image"]
    frame = frame[order]
    compact = frame.pivot(index="variant", columns="cell_type", values="held_out")
    compact = compact.loc[names, [c for c in ("astro", "cort", "shsy5y", "overall")
                                  if c in compact.columns]]
    iou = frame.pivot(index="variant", columns="cell_type", values="held_mean_iou").loc[names]
    compact_rows = [[n, *compact.loc[n].tolist(), float(iou.loc[n, "overall"]),
                     sec_by_row[n]] for n in names]
    body = (f"Experiment `{exp_dir}`, folds {folds}, {sum(len(es) for es in sets.values())} "
            f"OOF images, {n_trials} Optuna trials per study, tuning seed(s) {seeds}. Each image "
            "re-predicted by its own fold's `best.keras` (`predict_images`, batch 1, "
            "`normalize_image`), maps quantised to uint8 like the OOF files.\n\n"
            f"Check (heads=mean, TTA [identity, hflip] vs the saved OOF maps, {check['images']}"
            f" images): max |difference| {check['max_abs_diff_uint8']} uint8 step(s); "
            f"{100 * check['share_values_differing']:.4f} % of values differ, "
            f"{100 * check['share_values_off_by_more_than_1']:.4f} % by more than 1.\n\n"
            "Held-out score per type (overall = image-weighted), held-out mean matched IoU, "
            "model seconds per image:\n\n"
            + markdown_table(["variant", *compact.columns, "mean IoU (held out)",
                              "model s / image"], compact_rows, digits=4)
            + "\n\nAll columns (`held_*` = the held-out decodings: what-if scores and mean "
            "matched IoU; `in_sample` = tuned and scored on all of a type's images, "
            "optimistic; `held_vs_ref` = held out minus the first re-predicted row):\n\n"
            + markdown_table(order, frame.to_numpy().tolist(), digits=4) + "\n")
    counts = ", ".join(f"{t} {len(es)}" for t, es in sets.items())
    notes = [
        (f"{sum(len(es) for es in sets.values())} images ({counts}): one image is a third to "
         "a ninth of a type's mean, and Optuna's draws change when the maps change, so "
         "differences of a few hundredths per type are within the tuning noise (rerun "
         "with --seeds to see it)."),
        ("Held out: each image is decoded with parameters tuned on the other half of its "
         "type's images; in-sample: tuned on all of them (what tune.py does)."),
        ("'saved OOF maps' is the files train.py wrote (the real_cv.py reference); with "
         "byte-identical re-predicted maps (check above: 0 steps) its row is a copy of the "
         "OOF setting's, not re-tuned (same maps + same seed = same tuning)."),
        ("Model seconds: predict_images per image after a warm-up, mean over the images, "
         "on a shared CPU (see the load average)."),
    ]
    report = make_report(args.name, {"exp_dir": str(exp_dir), "folds": folds,
                                     "n_trials": n_trials,
                                     "config": args.config, "limit": args.limit,
                                     "variants": [list(s[1:]) for s in specs],
                                     "seeds": seeds},
                         {"check": check, "rows": frame.replace({np.nan: None}).to_dict(
                             "records"), "model_seconds_per_image": seconds,
                          "per_variant": done, "predict_seconds": round(predict_s, 1),
                          "tune_seconds": round(tune_s, 1),
                          "total_minutes": round((time.time() - t_all) / 60, 2)},
                         notes=notes, started=started)
    return publish(args.name, report, body, out_dir=args.out_dir,
                   title="TTA and head modes, held out on real OOF images "
                         "(bench/tta_heads.py)")


if __name__ == "__main__":
    sys.exit(main())
