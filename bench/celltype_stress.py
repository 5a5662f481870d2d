"""Stress test of the whole-image cell-type classifier: how brittle is it, which variant is not.

    python bench/celltype_stress.py                      # every variant, 5-fold CV, seed 0
    python bench/celltype_stress.py --variants before,v2_aug_nested --folds 5 --seed 1

Why: out of fold on the 40 real labelled images the classifier was 40/40, yet on 21 other real
images it called 2 of 6 shsy5y images astro (one with p = 0.74, which cost that image ~0.1 of
score). Whatever differs between those images and ours (brightness, contrast, focus, noise,
crop, ...) moves the features; this script measures how much, per classifier variant.

Protocol (labelled images: ``../shared/real_subset/train.csv``, 40 images):

- stratified 5-fold CV over the images (seeded). Each fold's classifier is fitted on the
  training images only (plus, for ``aug`` variants, ``--n-augment`` randomly degraded copies
  of each, :func:`cellseg.model.celltype.augment_image`, whose random ranges are fixed in the
  library and were not chosen on the perturbations below); ``nested`` variants choose C by an
  inner 4-fold CV on the training images (log-loss on the inner held-out images and their
  augmented copies), never on the test perturbations;
- the held-out images are classified clean and under each fixed perturbation of
  :data:`PERTURBATIONS` (applied to held-out images only; random ones seeded per image):
  accuracy, mean probability of the true type, confusion matrix (rows true, columns predicted);
- routing cost (when ``--exp-dir`` has OOF maps of these 40 images and a ``postprocess.yaml``):
  each image's OOF maps are decoded with every type's tuned parameters and scored, so a
  routing decision has a measured score. The uncertainty rules of
  :func:`cellseg.model.celltype.choose_cell_type` are scored with the routing-score matrix
  estimated on the fold's *training* images only. The segmentation maps are the clean OOF
  maps (only the classifier's input is perturbed): this isolates the routing cost;
- the 150 unlabelled real images (``train_semi_supervised/``): each variant fitted on all 40
  images; predicted type distribution, share with max probability < 0.6, agreement between
  variants. No labels: it only shows which variant is confident where.

Features are cached under ``output/bench/celltype_stress/`` (git-ignored; real pixels never
enter the repository). Results: ``bench/results/celltype_stress.{md,json}``. When
``../shared/real_subset`` is absent it prints a note and exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
from common import REPO, make_report, markdown_table, start_info, write_results

from cellseg.constants import CELL_TYPES
from cellseg.model import celltype
from cellseg.model.celltype import CellTypeClassifier, augment_image, choose_cell_type

REAL_SUBSET = REPO.parent / "shared" / "real_subset"
CACHE = REPO / "output" / "bench" / "celltype_stress"
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


# ------------------------------------------------------------------------ frozen v1 features
FEATURE_SETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "v1": celltype.image_features_v1,  # the classifier's features before this study
    f"v{celltype.FEATURES_VERSION}": celltype.image_features,
}


# ------------------------------------------------------------------------ perturbations
def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _gamma(g: float) -> Callable:
    return lambda im, rng: _u8(255.0 * (im / 255.0) ** g)


def _contrast(k: float) -> Callable:
    return lambda im, rng: _u8((im - im.mean()) * k + im.mean())


def _resize(f: float) -> Callable:
    return lambda im, rng: cv2.resize(im, (round(im.shape[1] * f), round(im.shape[0] * f)),
                                      interpolation=cv2.INTER_AREA if f < 1 else
                                      cv2.INTER_LINEAR)


def _crop_half(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = im.shape
    ch, cw = round(h / np.sqrt(2)), round(w / np.sqrt(2))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return im[y0:y0 + ch, x0:x0 + cw]


def _vignette(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = im.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    return _u8(im * (1 - 0.45 * r2 / 2))


def _gradient(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = im.shape[1]
    ramp = np.linspace(0.6, 1.4, w, dtype=np.float32)[None]
    return _u8(im * ramp)


def _poisson(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = 40.0  # photons at full scale: strong shot noise
    return _u8(rng.poisson(im / 255.0 * peak) * 255.0 / peak)


PERTURBATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "clean": lambda im, rng: im,
    "gamma 0.6": _gamma(0.6),
    "gamma 1.6": _gamma(1.6),
    "contrast x0.5": _contrast(0.5),
    "contrast x1.5": _contrast(1.5),
    "brightness +40": lambda im, rng: _u8(im + 40.0),
    "brightness -40": lambda im, rng: _u8(im - 40.0),
    "blur 1": lambda im, rng: _u8(cv2.GaussianBlur(im, (0, 0), 1.0)),
    "blur 2": lambda im, rng: _u8(cv2.GaussianBlur(im, (0, 0), 2.0)),
    "gauss noise 10": lambda im, rng: _u8(im + rng.normal(0, 10, im.shape)),
    "poisson noise": _poisson,
    "resize 0.8": _resize(0.8),
    "resize 1.25": _resize(1.25),
    "crop half": _crop_half,
    "vignette": _vignette,
    "illum gradient": _gradient,
}


# ------------------------------------------------------------------------ variants
# name -> feature set ("a+b": concatenated), C (or "nested"), augmented copies per image
def variants(n_augment: int) -> dict[str, dict[str, Any]]:
    v = f"v{celltype.FEATURES_VERSION}"
    return {
        "before": {"features": "v1", "c": 1.0, "aug": 0},
        "v1_nested": {"features": "v1", "c": "nested", "aug": 0},
        "v1_aug": {"features": "v1", "c": 1.0, "aug": n_augment},
        "v1_aug_nested": {"features": "v1", "c": "nested", "aug": n_augment},
        f"{v}": {"features": v, "c": 1.0, "aug": 0},
        f"{v}_nested": {"features": v, "c": "nested", "aug": 0},
        f"{v}_aug": {"features": v, "c": 1.0, "aug": n_augment},
        f"{v}_aug_nested": {"features": v, "c": "nested", "aug": n_augment},
        f"{v}_aug4": {"features": v, "c": 1.0, "aug": min(4, n_augment)},
        f"{v}+v1spec_aug": {"features": f"{v}+v1spec", "c": 1.0, "aug": n_augment},
        f"v1+{v}_aug": {"features": f"v1+{v}", "c": 1.0, "aug": n_augment},
    }


# ------------------------------------------------------------------------ features (cached)
def _seed(*parts: Any) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def compute_features(images: dict[str, np.ndarray], feature_set: str, n_augment: int,
                     seed: int, unlabelled: dict[str, np.ndarray], cache: Path
                     ) -> dict[str, Any]:
    """Features of every image under every perturbation, of its augmented copies, and of the
    unlabelled images (cached by feature set, seed and counts)."""
    if feature_set == "v1spec":  # the radial power spectrum: v1's last 8 features
        v1 = compute_features(images, "v1", n_augment, seed, unlabelled, cache)
        return {k: v[..., -8:] for k, v in v1.items()}
    if "+" in feature_set:  # concatenation of cached sets
        parts = [compute_features(images, fs, n_augment, seed, unlabelled, cache)
                 for fs in feature_set.split("+")]
        return {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
    import inspect

    code = hashlib.sha256(inspect.getsource(FEATURE_SETS[feature_set]).encode()).hexdigest()[:8]
    path = cache / f"{feature_set}_{code}_s{seed}_a{n_augment}_n{len(images)}_u{len(unlabelled)}_" \
        f"p{len(PERTURBATIONS)}.npz"
    if path.is_file():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    fn = FEATURE_SETS[feature_set]
    ids = list(images)
    t0 = time.perf_counter()
    pert = np.stack([np.stack([fn(p(images[i],
                                    np.random.default_rng(_seed(seed, i, name))))
                               for name, p in PERTURBATIONS.items()]) for i in ids])
    aug = np.stack([np.stack([fn(augment_image(images[i], np.random.default_rng(
        _seed(seed, i, "augment", k)))) for k in range(n_augment)]) for i in ids]) \
        if n_augment else np.zeros((len(ids), 0, pert.shape[-1]))
    unl = np.stack([fn(im) for im in unlabelled.values()]) if unlabelled else \
        np.zeros((0, pert.shape[-1]))
    print(f"[{feature_set}] features of {pert.shape[0] * pert.shape[1] + aug.shape[0] * aug.shape[1] + len(unl)} images in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, pert=pert, aug=aug, unl=unl)
    return {"pert": pert, "aug": aug, "unl": unl}


# ------------------------------------------------------------------------ fitting
def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    idx = np.array([CELL_TYPES.index(t) for t in y])
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), idx], 1e-9, 1))))


def _stack(feats: dict[str, Any], rows: np.ndarray, types: np.ndarray, n_aug: int
           ) -> tuple[np.ndarray, np.ndarray]:
    x = [feats["pert"][rows, 0]]
    y = [types[rows]]
    if n_aug:
        x.append(feats["aug"][rows, :n_aug].reshape(-1, feats["aug"].shape[-1]))
        y.append(np.repeat(types[rows], n_aug))
    return np.concatenate(x), np.concatenate(y)


def fit_variant(feats: dict[str, Any], rows: np.ndarray, types: np.ndarray,
                spec: dict[str, Any], seed: int) -> tuple[CellTypeClassifier, float]:
    """The variant's classifier on images ``rows`` (and their augmented copies)."""
    from sklearn.model_selection import StratifiedKFold

    n_aug = spec["aug"]
    c = spec["c"]
    if c == "nested":
        inner = StratifiedKFold(4, shuffle=True, random_state=seed + 1)
        losses = []
        for cand in C_GRID:
            total = 0.0
            for tr, te in inner.split(rows, types[rows]):
                x, y = _stack(feats, rows[tr], types, n_aug)
                clf = CellTypeClassifier.fit(x, y, c=cand, seed=seed)
                xt, yt = _stack(feats, rows[te], types, n_aug)
                total += _log_loss(clf.predict_proba(xt), yt)
            losses.append(total)
        c = C_GRID[int(np.argmin(losses))]
    x, y = _stack(feats, rows, types, n_aug)
    return CellTypeClassifier.fit(x, y, c=float(c), seed=seed), float(c)


# ------------------------------------------------------------------------ routing cost
def routing_scores(exp_dir: Path, ids: list[str]) -> np.ndarray | None:
    """(N, 3) score of each image's OOF maps decoded with each type's tuned parameters."""
    import yaml

    from cellseg.data.data_root import TrainData
    from cellseg.metrics.score import match
    from cellseg.postprocess.decode import decode_with_params
    from cellseg.train import oof

    pp = exp_dir / "postprocess.yaml"
    if not pp.is_file():
        return None
    params = {t: v["params"] for t, v in yaml.safe_load(pp.read_text())["cell_types"].items()}
    if set(params) != set(CELL_TYPES):
        return None
    files = {iid: path for _, iid, path in oof.iter_oof_files(exp_dir)}
    if not set(ids) <= set(files):
        print(f"routing cost: {exp_dir} lacks OOF maps of {len(set(ids) - set(files))} images")
        return None
    data = TrainData(REAL_SUBSET)
    out = np.zeros((len(ids), len(CELL_TYPES)))
    for i, iid in enumerate(ids):
        probs, _ = oof.load_oof(files[iid])
        truth = [p.astype(np.int32) for p in data.load_instances(iid).pixels]
        for j, t in enumerate(CELL_TYPES):
            out[i, j] = match(truth, decode_with_params(probs, params[t])).score
    return out


# ------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(REAL_SUBSET), help="labelled real data root")
    p.add_argument("--variants", default=None, help="comma list (default: all)")
    p.add_argument("--folds", type=int, default=5, help="outer CV folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-augment", type=int, default=8,
                   help="augmented copies per training image for 'aug' variants (default 8)")
    p.add_argument("--exp-dir", default=str(REPO.parent / "exp_r20" / "output" / "base"),
                   help="experiment with OOF maps of the 40 images + postprocess.yaml, for "
                   "the routing cost (skipped when absent)")
    p.add_argument("--threshold", type=float, default=0.6,
                   help="choose_cell_type's confidence threshold (default 0.6, fixed a priori)")
    p.add_argument("--n-unlabelled", type=int, default=150)
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument("--name", default="celltype_stress", help="results file stem")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = Path(args.source)
    if not (source / "train.csv").is_file():
        print(f"{source}/train.csv not found: the real subset is absent, nothing to measure")
        return 0
    from sklearn.model_selection import StratifiedKFold

    from cellseg.data.data_root import TrainData, read_image

    started = start_info()
    t_start = time.perf_counter()
    data = TrainData(source)
    ids = sorted(data.ids)
    types = np.array([data.cell_type(i) for i in ids])
    images = {i: data.load_image(i) for i in ids}
    unl_paths = sorted((source / "train_semi_supervised").glob("*.png"))[:args.n_unlabelled]
    unlabelled = {p.stem: read_image(p) for p in unl_paths}
    all_variants = variants(args.n_augment)
    names = args.variants.split(",") if args.variants else list(all_variants)
    unknown = [n for n in names if n not in all_variants]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(all_variants)}")
    needed = sorted({all_variants[n]["features"] for n in names})
    max_aug = max(all_variants[n]["aug"] for n in names)
    feats = {fs: compute_features(images, fs, max_aug, args.seed, unlabelled,
                                  Path(args.cache)) for fs in needed}
    t_feat = {}
    for fs in needed:  # per-image feature time, clean 704 x 520 image
        if fs not in FEATURE_SETS:
            continue
        fn = FEATURE_SETS[fs]
        fn(images[ids[0]])
        t0 = time.perf_counter()
        for i in ids[:10]:
            fn(images[i])
        t_feat[fs] = (time.perf_counter() - t0) / 10

    scores = routing_scores(Path(args.exp_dir), ids) if Path(args.exp_dir).is_dir() else None
    pert_names = list(PERTURBATIONS)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
                 .split(ids, types))
    true_idx = np.array([CELL_TYPES.index(t) for t in types])
    results: dict[str, Any] = {"variants": {}, "routing": None, "unlabelled": {}}
    if scores is not None:
        results["routing"] = {
            "per_image": {i: dict(zip(CELL_TYPES, s.round(4).tolist())) for i, s in
                          zip(ids, scores)},
            "mean_by_true_type": {t: dict(zip(CELL_TYPES, scores[types == t].mean(0)
                                              .round(4).tolist())) for t in CELL_TYPES}}
    rules = ("argmax", "expected", f"threshold {args.threshold}")
    unl_pred: dict[str, np.ndarray] = {}
    for name in names:
        spec = all_variants[name]
        f = feats[spec["features"]]
        probs = np.zeros((len(ids), len(pert_names), len(CELL_TYPES)))
        chosen_c = []
        routed = {r: np.zeros((len(ids), len(pert_names))) for r in rules}
        for tr, te in folds:
            clf, c = fit_variant(f, tr, types, spec, args.seed)
            chosen_c.append(c)
            for k in range(len(pert_names)):
                probs[te, k] = clf.predict_proba(f["pert"][te, k])
            if scores is not None:
                matrix = {t: dict(zip(CELL_TYPES, scores[tr][types[tr] == t].mean(0)))
                          for t in CELL_TYPES}
                for i in te:
                    for k in range(len(pert_names)):
                        p = probs[i, k]
                        routed["argmax"][i, k] = scores[i, int(np.argmax(p))]
                        e = choose_cell_type(p, routing_scores=matrix, threshold=1.01)
                        routed["expected"][i, k] = scores[i, CELL_TYPES.index(e.cell_type)]
                        th = choose_cell_type(p, routing_scores=matrix,
                                              threshold=args.threshold)
                        routed[rules[2]][i, k] = scores[i, CELL_TYPES.index(th.cell_type)]
        pred = probs.argmax(-1)
        correct = pred == true_idx[:, None]
        margin = probs[np.arange(len(ids)), :, true_idx]
        clean_cm = np.zeros((3, 3), int)
        pooled_cm = np.zeros((3, 3), int)
        for i in range(len(ids)):
            clean_cm[true_idx[i], pred[i, 0]] += 1
            for k in range(1, len(pert_names)):
                pooled_cm[true_idx[i], pred[i, k]] += 1
        per_pert = {}
        for k, pn in enumerate(pert_names):
            row = {"accuracy": float(correct[:, k].mean()),
                   "mean_p_true": float(margin[:, k].mean()),
                   "min_p_true": float(margin[:, k].min()),
                   "errors": [f"{ids[i]} {types[i]}->{CELL_TYPES[pred[i, k]]}"
                              for i in np.flatnonzero(~correct[:, k])]}
            if scores is not None:
                row["routed_score"] = {r: float(routed[r][:, k].mean()) for r in rules}
            per_pert[pn] = row
        pert_only = slice(1, None)
        summary = {"clean_accuracy": float(correct[:, 0].mean()),
                   "perturbed_accuracy": float(correct[:, pert_only].mean()),
                   "worst_accuracy": float(correct[:, pert_only].mean(0).min()),
                   "perturbed_mean_p_true": float(margin[:, pert_only].mean()),
                   "chosen_c": chosen_c}
        if scores is not None:
            summary["routed_score_perturbed"] = {r: float(routed[r][:, pert_only].mean())
                                                 for r in rules}
            summary["routed_score_clean"] = {r: float(routed[r][:, 0].mean()) for r in rules}
            summary["oracle_score"] = float(scores[np.arange(len(ids)), true_idx].mean())
        # unlabelled: fitted on all 40
        clf_all, c_all = fit_variant(f, np.arange(len(ids)), types, spec, args.seed)
        pu = clf_all.predict_proba(f["unl"]) if len(f["unl"]) else np.zeros((0, 3))
        unl_pred[name] = pu.argmax(1)
        results["unlabelled"][name] = {
            "distribution": {t: int((pu.argmax(1) == j).sum()) for j, t in enumerate(CELL_TYPES)},
            "share_max_p_below_0.6": float((pu.max(1) < 0.6).mean()) if len(pu) else None,
            "mean_max_p": float(pu.max(1).mean()) if len(pu) else None, "c": c_all}
        results["variants"][name] = {"spec": spec, "summary": summary, "per_perturbation":
                                     per_pert, "clean_confusion": clean_cm.tolist(),
                                     "pooled_perturbed_confusion": pooled_cm.tolist()}
        print(f"{name:>22}: clean {summary['clean_accuracy']:.3f}  perturbed "
              f"{summary['perturbed_accuracy']:.3f}  worst {summary['worst_accuracy']:.3f}  "
              f"p_true {summary['perturbed_mean_p_true']:.3f}  C {chosen_c}  "
              f"unl {results['unlabelled'][name]['distribution']}", flush=True)
    if len(names) > 1 and len(unl_pred[names[0]]):
        results["unlabelled_agreement"] = {a: {b: float((unl_pred[a] == unl_pred[b]).mean())
                                               for b in names} for a in names}
    results["feature_seconds_per_image"] = t_feat
    results["wall_s"] = time.perf_counter() - t_start

    params = {"source": str(source), "folds": args.folds, "seed": args.seed,
              "n_augment": args.n_augment, "c_grid": list(C_GRID), "threshold": args.threshold,
              "exp_dir": args.exp_dir, "n_labelled": len(ids),
              "n_unlabelled": len(unlabelled), "perturbations": pert_names}
    notes = [
        ("Perturbations are applied to the held-out images only; training sees clean images "
         "plus, for 'aug' variants, celltype.augment_image copies (its own random ranges, e.g. "
         "gamma in exp(+-0.35), blur sigma 0.5-1.6, zoom exp(+-0.12); not the test values)."),
        ("C of 'nested' variants is chosen in an inner 4-fold CV on the training images "
         f"(log-loss), from {list(C_GRID)}."),
        ("Routed score: the competition score of the image's clean OOF maps decoded with the "
         "tuned parameters of the type chosen from the (perturbed-input) probabilities. The "
         "tuned parameters were tuned on these same 40 OOF images, so the diagonal is "
         "optimistic; the rules' routing-score matrix comes from the fold's training images."),
        "40 images (astro 9, cort 21, shsy5y 10): one image is 2.5 points of accuracy.",
        ("Selection caveat: the library's v2 features leave out the radial power spectrum "
         "after this test showed it turned shsy5y into astro under strong shot noise "
         "(row v2+v1spec_aug); that choice was made on these perturbations, so the kept "
         "variant's figures are slightly optimistic against unseen degradations."),
    ]
    report = make_report(args.name, params, results, notes,
                         extra_packages=("scikit-learn", "opencv-python-headless"),
                         started=started)
    write_results(args.name, report, markdown(results, names, pert_names, rules),
                  title="Cell-type classifier stress test")
    print(f"wrote bench/results/{args.name}.md ({time.perf_counter() - t_start:.0f} s)")
    return 0


def markdown(results: dict[str, Any], names: list[str], pert_names: list[str],
             rules: tuple[str, ...]) -> str:
    v = results["variants"]
    out = ["## Summary (5-fold CV over the 40 labelled images)\n"]
    head = ["variant", "features", "C", "aug copies", "clean acc", "perturbed acc (mean)",
            "worst perturbation acc", "mean p(true) perturbed"]
    rows = []
    for n in names:
        s, spec = v[n]["summary"], v[n]["spec"]
        cs = sorted(set(s["chosen_c"]))
        rows.append([n, spec["features"],
                     "/".join(f"{c:g}" for c in cs), spec["aug"], s["clean_accuracy"],
                     s["perturbed_accuracy"], s["worst_accuracy"], s["perturbed_mean_p_true"]])
    out.append(markdown_table(head, rows))
    out.append("\n## Accuracy per perturbation (held-out images)\n")
    out.append(markdown_table(["perturbation"] + names,
                              [[pn] + [v[n]["per_perturbation"][pn]["accuracy"] for n in names]
                               for pn in pert_names]))
    out.append("\n## Mean probability of the true type per perturbation\n")
    out.append(markdown_table(["perturbation"] + names,
                              [[pn] + [v[n]["per_perturbation"][pn]["mean_p_true"]
                                       for n in names] for pn in pert_names]))
    out.append("\n## Confusion matrices (rows true, columns predicted; "
               + " / ".join(CELL_TYPES) + ")\n")
    cm_rows = []
    for n in names:
        cm_rows.append([n, "; ".join(" ".join(str(c) for c in r) for r in v[n]["clean_confusion"]),
                        "; ".join(" ".join(str(c) for c in r)
                                  for r in v[n]["pooled_perturbed_confusion"])])
    out.append(markdown_table(["variant", "clean OOF", "pooled over perturbations"], cm_rows))
    if results.get("routing"):
        out.append("\n## Routing cost: mean score of the clean OOF maps by true type (rows) "
                   "and the type whose parameters decode them (columns)\n")
        m = results["routing"]["mean_by_true_type"]
        out.append(markdown_table(["true \\ routed"] + list(CELL_TYPES),
                                  [[t] + [m[t][r] for r in CELL_TYPES] for t in CELL_TYPES]))
        out.append("\n## Uncertainty rules: mean routed score (40 images; perturbed = mean over "
                   "the perturbations)\n")
        rr = []
        for n in names:
            s = v[n]["summary"]
            rr.append([n, s["oracle_score"]] + [s["routed_score_clean"][r] for r in rules]
                      + [s["routed_score_perturbed"][r] for r in rules])
        out.append(markdown_table(["variant", "true type"] + [f"clean {r}" for r in rules]
                                  + [f"perturbed {r}" for r in rules], rr, digits=4))
    out.append("\n## 150 unlabelled real images (variant fitted on all 40)\n")
    u = results["unlabelled"]
    out.append(markdown_table(["variant"] + [f"pred {t}" for t in CELL_TYPES]
                              + ["share max p < 0.6", "mean max p"],
                              [[n] + [u[n]["distribution"][t] for t in CELL_TYPES]
                               + [u[n]["share_max_p_below_0.6"], u[n]["mean_max_p"]]
                               for n in names]))
    if "unlabelled_agreement" in results:
        a = results["unlabelled_agreement"]
        out.append("\n### Agreement of predicted types on the unlabelled images\n")
        out.append(markdown_table([""] + names, [[x] + [a[x][y] for y in names] for x in names]))
    out.append("\nFeature time per 704 x 520 image (s): " + ", ".join(
        f"{k} {t:.3f}" for k, t in results["feature_seconds_per_image"].items()))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
