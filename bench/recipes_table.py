"""Side-by-side table of training recipes measured by ``bench/real_cv.py``.

    python bench/recipes_table.py --run real_cv_rerun="real only" \\
        --run real_cv_pre="synthetic pre-training" --run real_cv_pl="+ pseudo-labels" \\
        --name recipes_real

Each ``--run NAME=LABEL`` is a ``bench/results/NAME.json`` written by ``real_cv.py`` (same
folds, same images); the table puts their per-type scores (untuned, tuned held out, tuned
in-sample) side by side with the difference to the first run, the mean IoU of matched cells
and the score with perfect outlines (tuned in-sample), plus each run's training epochs and
minutes, and saves ``bench/results/<name>.{md,json}``. It reads results only; nothing is
trained here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import common

RESULTS = Path(__file__).resolve().parent / "results"
SCORES = (("untuned", "untuned"), ("tuned_held_out", "tuned, held out"),
          ("tuned_held_out_filter", "+ confidence filter, held out"),
          ("tuned_in_sample", "tuned, in-sample"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=LABEL",
                   help="a real_cv.py result (bench/results/NAME.json) and its label; the "
                   "first is the reference")
    p.add_argument("--name", default="recipes_real", help="results file stem")
    p.add_argument("--note", action="append", default=[], help="a note for the results page")
    return p.parse_args(argv)


def load_run(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (run bench/real_cv.py --name {name} first)")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = []
    for item in args.run:
        name, _, label = item.partition("=")
        runs.append((name, label or name, load_run(name)))
    ref = {r["cell_type"]: r for r in runs[0][2]["results"]["summary"]}
    headers = ["recipe", "cell type", "images"]
    for _, title in SCORES:
        headers += [title, "vs first"]
    headers += ["mean matched IoU", "perfect outlines"]
    rows, table = [], []
    for name, label, doc in runs:
        errors = {e["cell_type"]: e for e in doc["results"].get("errors", [])}
        for r in doc["results"]["summary"]:
            row: list[Any] = [label, r["cell_type"], r["images"]]
            rec = {"run": name, "label": label, "cell_type": r["cell_type"],
                   "images": r["images"]}
            for key, _ in SCORES:
                # Runs measured before a score existed lack it: shown as blank.
                value, first = r.get(key), ref.get(r["cell_type"], {}).get(key)
                delta = value - first if value is not None and first is not None else None
                row += [value, None if name == runs[0][0] else delta]
                rec[key] = value
                rec[f"{key}_delta"] = delta
            err = errors.get(r["cell_type"], {})
            # Runs measured before the what-if scores existed have no score_outlines.
            row += [err.get("mean_iou"), err.get("score_outlines")]
            rec["mean_iou"] = err.get("mean_iou")
            rec["score_outlines"] = err.get("score_outlines")
            rows.append(row)
            table.append(rec)
    setup = [[label, doc["params"].get("exp"), doc["params"].get("config", "–"), ", ".join(doc["params"].get("overrides") or [])
              or "–", "; ".join(f"fold {k}: {v['epochs']} epochs, {v['train_min']} min"
                               for k, v in doc["results"]["folds"].items()), doc["date"]]
             for _, label, doc in runs]
    body = "\n".join([
        common.markdown_table(headers, rows, digits=4),
        "",
        "Runs (folds 0 and 1 of 5, the same 16 out-of-fold images; config and train.py "
        "overrides as given):",
        "",
        common.markdown_table(["recipe", "experiment", "config", "overrides", "training",
                               "measured"],
                              setup),
    ])
    report = common.make_report(args.name, {"runs": args.run}, {"rows": table},
                                args.note)
    print(body)
    common.write_results(args.name, report, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
