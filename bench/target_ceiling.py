"""The ceiling of the training targets on real cells: score of a *perfect* prediction.

    python bench/target_ceiling.py [--source ../shared/real_subset] [--radii 1,2,3,4]

The network predicts a body map and a touching-border band (``cellseg.model.targets``); the
watershed (``cellseg.postprocess.decode``) turns them into cells. If the network predicted its
targets exactly, how well would the cells come back? This decodes the real subset's own
targets (band half-width = the per-image default, and fixed radii) with the default
post-processing and scores them against the true annotations, per cell type. A low figure
means the representation itself loses cells (e.g. a wide band erodes thin astro processes
into several seeds), whatever the network learns. Writes ``bench/results/target_ceiling.md``.
Exits 0 with a note when the real subset is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, make_report, markdown_table, start_info, write_results  # noqa: E402

REAL_SUBSET = REPO.parent / "shared" / "real_subset"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(REAL_SUBSET))
    p.add_argument("--radii", default="1,2,3,4", help="fixed band half-widths to compare")
    args = p.parse_args(argv)
    if not (Path(args.source) / "train.csv").is_file():
        print(f"target_ceiling: skipped: no labelled real data at {args.source}")
        return 0
    import numpy as np

    from cellseg.constants import CELL_TYPES
    from cellseg.data.data_root import TrainData
    from cellseg.metrics.score import match
    from cellseg.model.targets import border_radius, make_targets
    from cellseg.postprocess.decode import decode_instances

    started = start_info()
    data = TrainData(args.source)
    radii: list[int | None] = [None, *(int(r) for r in args.radii.split(","))]
    scores: dict[tuple[str, str], list[float]] = {}
    default_r: dict[str, list[int]] = {}
    for image_id in data.ids:
        inst = data.load_instances(image_id)
        cell_type = data.cell_type(image_id)
        default_r.setdefault(cell_type, []).append(border_radius(inst))
        for r in radii:
            targets = make_targets(inst, radius=r).astype(np.float32)
            key = "default" if r is None else str(r)
            scores.setdefault((cell_type, key), []).append(
                match(inst.pixels, decode_instances(targets)).score)
        scores.setdefault((cell_type, "label image"), []).append(
            match(inst.pixels, inst.labels).score)
    cols = ["default", *(str(r) for r in radii[1:]), "label image"]
    types = [t for t in CELL_TYPES if t in default_r]
    rows = [[t, len(default_r[t]), f"{np.median(default_r[t]):.0f}",
             *(float(np.mean(scores[(t, c)])) for c in cols)] for t in types]
    headers = ["cell type", "images", "default radius (median)",
               *(f"band r={c}" if c.isdigit() else c for c in cols)]
    body = ("Score (competition metric) of the targets decoded with the default "
            "post-processing, against the true annotations. 'label image' = the flattened "
            "annotations themselves (the loss from overlaps alone).\n\n"
            + markdown_table(headers, rows, digits=3))
    results = {"rows": [dict(zip(headers, r)) for r in rows]}
    report = make_report("target_ceiling", {"source": args.source, "radii": args.radii},
                         results, notes=["A perfect network would score this; the trained "
                                         "ones score far less, so the ceiling is not what "
                                         "limits them today."], started=started)
    write_results("target_ceiling", report, body, title="Target ceiling on real cells")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
