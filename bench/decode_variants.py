"""Decoding variants on a trained real-CV experiment's out-of-fold maps, side by side.

    python bench/decode_variants.py --exp real_cv            # after bench/real_cv.py
    python bench/decode_variants.py --exp e1 --folds 0,1 --name decode_variants_e1

Same OOF maps, same held-out tuning protocol as ``bench/real_cv.py`` (Optuna tunes on half of
a type's images and scores the other half, both ways), one row per variant and cell type:
held-out score, mean matched IoU and the "where the points are lost" what-if scores of the
held-out decodings. A variant fixes some decoder knobs and/or adds knobs to the search space,
so what it is worth is read against the first row, tune.py's own search. No training: minutes.
When ``../shared/real_subset`` (or the experiment) is absent it prints a note and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, make_report, markdown_table, publish, start_info  # noqa: E402
from real_cv import REAL_SUBSET, held_out_tuning  # noqa: E402


def variants() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, fixed knobs, extra search ranges) of every variant, the reference first."""
    from cellseg.postprocess.search_space import SearchRange

    smooth = {"smooth_sigma": SearchRange("float", 0.0, 2.0)}
    split = {"split_height": SearchRange("float", 0.0, 4.0)}
    merge = {"merge_border": SearchRange("float", 0.0, 0.5)}
    return [
        ("tune.py's search (reference)", {}, {}),
        ("smooth_sigma 1.0 fixed", {"smooth_sigma": 1.0}, {}),
        ("smooth_sigma tuned 0-2", {}, smooth),
        ("split_height tuned 0-4", {}, split),
        ("smooth_sigma + split_height tuned", {}, {**smooth, **split}),
        ("merge_border tuned 0-0.5", {}, merge),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/real_cpu.yaml")
    p.add_argument("--exp", default="real_cv", help="trained experiment (default real_cv)")
    p.add_argument("--folds", default="0,1", help="its folds (default 0,1)")
    p.add_argument("--n-trials", type=int, default=None, help="Optuna trials per half")
    p.add_argument("--name", default="decode_variants", help="results file stem")
    p.add_argument("--variants", default="",
                   help="comma-separated indices into the variant list to run (default all; "
                        "0, the reference, is always run)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (REAL_SUBSET / "train.csv").is_file():
        print(f"decode_variants: skipped: no labelled real data at {REAL_SUBSET}")
        return 0
    import numpy as np
    import pandas as pd

    from cellseg.metrics.error_analysis import (
        WHAT_IF_COLUMNS,
        error_analysis,
        error_summary,
        error_table,
    )
    from cellseg.experiment import resolve_config
    from cellseg.postprocess.decode import decode_with_params
    from cellseg.postprocess.search_space import DEEP_SEARCH_SPACE
    from cellseg.train import oof
    from cellseg.tune.eval_sets import load_eval_sets

    started = start_info()
    cfg, exp_dir, _ = resolve_config(args.config, exp=args.exp, config_explicit=True)
    folds = [int(k) for k in args.folds.split(",")]
    if not all((exp_dir / f"fold{k}" / "best.keras").is_file() for k in folds):
        print(f"decode_variants: skipped: {exp_dir} has no trained folds {folds}")
        return 0
    n_trials = args.n_trials or cfg.tune.n_trials
    sets = load_eval_sets(cfg, "deep", folds=folds, log=None)
    rows = []
    chosen = {0, *(int(i) for i in args.variants.split(",") if i.strip())}
    for index, (name, fixed, extra) in enumerate(variants()):
        if args.variants and index not in chosen:
            continue
        print(f"variant: {name}", flush=True)
        held = held_out_tuning(sets, cfg, n_trials, cfg.tune.seed,
                               space={**DEEP_SEARCH_SPACE, **extra}, fixed=fixed)
        records = []
        for cell_type, es in sets.items():
            if cell_type not in held:
                continue
            for i, image_id in enumerate(es.ids):
                labels = decode_with_params(oof.dequantize(es.inputs[i]),
                                            held[cell_type]["params"][i])
                records.append((image_id, cell_type, error_analysis(es.truths[i], labels)))
        summary = error_summary(error_table(records))
        for cell_type, r in summary.iterrows():
            rows.append({"variant": name, "cell_type": cell_type, "images": int(r["images"]),
                         **{k: float(r[k]) for k in WHAT_IF_COLUMNS},
                         "mean_iou": float(r["mean_iou"])})
    frame = pd.DataFrame(rows)
    ref = frame[frame["variant"] == variants()[0][0]].set_index("cell_type")["score"]
    frame["vs reference"] = frame["score"] - frame["cell_type"].map(ref)
    headers = list(frame.columns)
    body = (f"Experiment `{args.exp}`, folds {folds}, {n_trials} Optuna trials per half. "
            "`score` = held-out tuned score; the what-if columns and `mean_iou` are of the "
            "same held-out decodings.\n\n"
            + markdown_table(headers, frame.to_numpy().tolist(), digits=4) + "\n")
    notes = ["Held out: each image is decoded with parameters tuned on the other half of "
             "its type's OOF images.",
             "Same maps for every row: the differences are the decoder's alone."]
    report = make_report(args.name, {"exp": args.exp, "folds": folds, "n_trials": n_trials,
                                     "config": args.config},
                         {"rows": frame.replace({np.nan: None}).to_dict("records")},
                         notes=notes, started=started)
    return publish(args.name, report, body,
                   title="Decoding variants on real OOF maps "
                         "(bench/decode_variants.py)")


if __name__ == "__main__":
    sys.exit(main())
