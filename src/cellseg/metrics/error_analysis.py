"""Error analysis of segmented images: which kind of mistake, on which cells.

Why: the competition score says how good a segmentation is, not why it is not better. Crowded
shsy5y cells fail by merges (under-segmentation), faint broken astro cells by splits, every
type by missing small cells; which one dominates decides the next modelling choice (border
weight, seed threshold, minimum area, ...). So every image gets these counts, with fixed
rules that stay comparable across runs:

- **match** (IoU 0.5, strict, the metric's loosest threshold): a maximum one-to-one matching of
  pairs with IoU > 0.5 (:func:`cellseg.metrics.score.matched_pairs`, same TP count as the metric).
  Matched true cells are TP; unmatched true cells are misses (FN); unmatched predicted cells
  are false positives (FP).
- **merge**: a predicted cell that holds >= 50 % of the pixels of each of two or more true
  cells (several cells became one). Counted per predicted cell.
- **split**: a true cell of which two or more predicted cells each cover >= 20 % (one cell
  became several). Counted per true cell.
- Merges and splits overlap with FN/FP (a merge is usually one FP plus two FN); ``fn_merge``,
  ``fn_split``, ``fn_other`` (and the same for FP) say why each miss / false positive happened:
  a missed cell inside a merge counts as ``fn_merge``, else a split one as ``fn_split``, else
  ``fn_other`` (nothing or a poorly fitting mask found); an FP that is a merge counts as
  ``fp_merge``, else a piece (>= 20 %) of a split cell as ``fp_split``, else ``fp_other``.
- **size bins** by area in pixels (a true cell's full annotation, a predicted cell's mask):
  ``<100`` (fragments, debris), ``100-300`` (typical cort and shsy5y, median ~200-270),
  ``300-1000`` (typical astro, median ~560), ``>=1000`` (large astro). Misses and FPs are
  counted per bin, with the number of true / predicted cells in the bin for rates.
- **IoU**: for every true cell its best IoU with any predicted cell (0 when none touches it)
  and the IoU of its matched pair (NaN when missed), for IoU histograms per cell type.

- **where the points are lost** (what-if scores, the competition metric of the image with
  one kind of error removed, each alone): ``score`` as predicted; ``score_outlines`` with
  every matched cell's outline made perfect (IoU 1, so it also matches at 0.55-0.95);
  ``score_no_fp`` with every false positive removed; ``score_merges_split`` with every merge
  replaced by the true cells it holds. They are edits of the list of overlapping pairs: a
  prediction made perfect is given IoU 0 with every other true cell, exact when true cells do
  not overlap. The
  gap between a what-if score and ``score`` is what fixing that kind of error alone is worth.

Truth is a label image or per-cell pixel-index lists (overlapping annotations count shared
pixels for every cell, as in the metric). Everything is computed from one intersection matrix
(:func:`cellseg.metrics.score.overlap`): ~10 ms for an 800-cell 520x704 image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellseg.constants import IOU_THRESHOLDS
from cellseg.metrics.score import MatchResult, Truth, match_candidates, overlap

MATCH_IOU = 0.5
MERGE_COVER = 0.5  # a true cell is inside a prediction when >= this share of it lies there
SPLIT_COVER = 0.2  # a prediction is a piece of a true cell when it covers >= this share of it
SIZE_EDGES: tuple[int, ...] = (100, 300, 1000)  # bin k is [edge k-1, edge k) pixels
SIZE_BINS: tuple[str, ...] = ("lt100", "100_300", "300_1000", "ge1000")  # column suffixes
SIZE_LABELS: tuple[str, ...] = ("<100", "100-300", "300-1000", ">=1000")  # for tables

WHAT_IF_COLUMNS: tuple[str, ...] = ("score", "score_outlines", "score_no_fp",
                                    "score_merges_split")
COUNT_COLUMNS: tuple[str, ...] = ("tp", "fn", "fp", "merges", "splits", "mean_iou",
                                  *WHAT_IF_COLUMNS)
REASON_COLUMNS: tuple[str, ...] = ("fn_merge", "fn_split", "fn_other",
                                   "fp_merge", "fp_split", "fp_other")
SIZE_COLUMNS: tuple[str, ...] = tuple(f"{kind}_{name}" for kind in ("true", "fn", "pred", "fp")
                                      for name in SIZE_BINS)
TABLE_COLUMNS: tuple[str, ...] = ("n_true", "n_pred", *COUNT_COLUMNS, *REASON_COLUMNS,
                                  *SIZE_COLUMNS)  # per-image columns of errors.csv


def size_bin(area: np.ndarray) -> np.ndarray:
    """Index into :data:`SIZE_BINS` of each area (pixels)."""
    return np.searchsorted(np.asarray(SIZE_EDGES), np.asarray(area), side="right")


@dataclass
class ErrorRecord:
    """Error analysis of one image (see the module docstring for the rules).

    Per true cell (length ``n_true``, in truth order): ``true_ids`` (label id; k + 1 for list
    truth), ``true_area``, ``best_iou``, ``matched_iou`` (NaN if missed), ``true_match``
    (column of the matched prediction or -1), ``true_split``, ``true_in_merge`` (>= 50 % of it
    inside a merge prediction). Per predicted cell (length ``n_pred``, in sorted label order):
    ``pred_ids``, ``pred_area``, ``pred_matched``, ``pred_merge``, ``pred_split_piece`` (covers
    >= 20 % of a split true cell).
    """

    true_ids: np.ndarray
    true_area: np.ndarray
    best_iou: np.ndarray
    matched_iou: np.ndarray
    true_match: np.ndarray
    true_split: np.ndarray
    true_in_merge: np.ndarray
    pred_ids: np.ndarray
    pred_area: np.ndarray
    pred_matched: np.ndarray
    pred_merge: np.ndarray
    pred_split_piece: np.ndarray
    what_if: dict[str, float]

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def tp(self) -> int:
        return int((self.true_match >= 0).sum())

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def merges(self) -> int:
        return int(self.pred_merge.sum())

    @property
    def splits(self) -> int:
        return int(self.true_split.sum())

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs (NaN when nothing matched)."""
        return float(np.nanmean(self.matched_iou)) if self.tp else float("nan")

    @property
    def missed(self) -> np.ndarray:
        return self.true_match < 0

    @property
    def false_positive(self) -> np.ndarray:
        return ~self.pred_matched

    def reasons(self) -> dict[str, int]:
        """Why each miss / false positive happened (exclusive, in the module's order)."""
        missed, false = self.missed, self.false_positive
        fn_merge = missed & self.true_in_merge
        fn_split = missed & ~self.true_in_merge & self.true_split
        fp_merge = false & self.pred_merge
        fp_split = false & ~self.pred_merge & self.pred_split_piece
        return {"fn_merge": int(fn_merge.sum()), "fn_split": int(fn_split.sum()),
                "fn_other": int((missed & ~fn_merge & ~fn_split).sum()),
                "fp_merge": int(fp_merge.sum()), "fp_split": int(fp_split.sum()),
                "fp_other": int((false & ~fp_merge & ~fp_split).sum())}

    def by_size(self) -> dict[str, int]:
        """Per size bin: true cells, misses, predicted cells, false positives."""
        n = len(SIZE_BINS)
        t_bin, p_bin = size_bin(self.true_area), size_bin(self.pred_area)
        counts = {"true": np.bincount(t_bin, minlength=n),
                  "fn": np.bincount(t_bin[self.missed], minlength=n),
                  "pred": np.bincount(p_bin, minlength=n),
                  "fp": np.bincount(p_bin[self.false_positive], minlength=n)}
        return {f"{kind}_{name}": int(values[k]) for kind, values in counts.items()
                for k, name in enumerate(SIZE_BINS)}

    def counts(self) -> dict[str, float]:
        """The flat per-image columns: n_true, n_pred, tp, fn, fp, merges, splits, mean_iou,
        the reasons and the size-bin counts."""
        row: dict[str, float] = {"n_true": self.n_true, "n_pred": self.n_pred,
                                 "tp": self.tp, "fn": self.fn, "fp": self.fp,
                                 "merges": self.merges, "splits": self.splits,
                                 "mean_iou": self.mean_iou}
        row.update(self.what_if)
        row.update(self.reasons())
        row.update(self.by_size())
        return row


def error_analysis(truth: Truth, pred_labels: np.ndarray, iou_threshold: float = MATCH_IOU,
                   merge_cover: float = MERGE_COVER,
                   split_cover: float = SPLIT_COVER) -> ErrorRecord:
    """Matches, misses, false positives, merges and splits of one image.

    Args:
        truth: label image (0 = background) or list of flat pixel-index arrays, one per cell
            (overlaps allowed), as for :func:`cellseg.metrics.score.match`.
        pred_labels: int label image, 0 = background.
        iou_threshold, merge_cover, split_cover: the rules' constants (module docstring);
            keep the defaults so numbers compare across runs.
    """
    ov = overlap(truth, pred_labels)
    n_true, n_pred = ov.inter.shape
    # Work on the nonzero pairs only (a few per cell), not the dense n_true x n_pred matrix.
    flat = np.flatnonzero(ov.inter)
    pr, pc = np.divmod(flat, max(n_pred, 1))
    inter = ov.inter.ravel()[flat]
    iou = inter / (ov.true_area[pr] + ov.pred_area[pc] - inter)
    cand = iou > iou_threshold
    rows, cols = match_candidates(pr[cand], pc[cand], iou[cand])
    true_match = np.full(n_true, -1, np.int64)
    true_match[rows] = cols
    pred_matched = np.zeros(n_pred, bool)
    pred_matched[cols] = True
    matched_iou = np.full(n_true, np.nan)
    matched_iou[rows] = ov.inter[rows, cols] / (ov.true_area[rows] + ov.pred_area[cols]
                                               - ov.inter[rows, cols])
    best_iou = np.zeros(n_true)
    np.maximum.at(best_iou, pr, iou)
    # Share of each true cell inside each prediction (a row's shares sum to <= 1).
    cover = inter / np.maximum(ov.true_area[pr], 1)
    inside = cover >= merge_cover
    pred_merge = np.bincount(pc[inside], minlength=n_pred) >= 2
    true_in_merge = np.zeros(n_true, bool)
    true_in_merge[pr[inside & pred_merge[pc]]] = True
    piece = cover >= split_cover
    true_split = np.bincount(pr[piece], minlength=n_true) >= 2
    pred_split_piece = np.zeros(n_pred, bool)
    pred_split_piece[pc[piece & true_split[pr]]] = True
    merged = [(int(j), pr[inside & (pc == j)]) for j in np.flatnonzero(pred_merge)]
    scored = iou > IOU_THRESHOLDS[0]  # every pair any metric threshold can count
    return ErrorRecord(true_ids=ov.true_ids, true_area=ov.true_area, best_iou=best_iou,
                       matched_iou=matched_iou, true_match=true_match, true_split=true_split,
                       true_in_merge=true_in_merge, pred_ids=ov.pred_ids,
                       pred_area=ov.pred_area, pred_matched=pred_matched,
                       pred_merge=pred_merge, pred_split_piece=pred_split_piece,
                       what_if=what_if_scores(pr[scored], pc[scored], iou[scored], n_true,
                                              n_pred, (rows, cols), merged))


def _pairs_score(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_true: int,
                 n_pred: int) -> float:
    """The competition score of an image given as its candidate pairs (IoU > 0.5)."""
    tp = np.array([match_candidates(rows[m], cols[m], values[m])[0].size
                   for m in (values > t for t in IOU_THRESHOLDS)], np.int64)
    return MatchResult(np.asarray(IOU_THRESHOLDS, np.float64), tp, n_pred - tp, n_true - tp,
                       n_true, n_pred).score


def what_if_scores(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_true: int,
                   n_pred: int, matched: tuple[np.ndarray, np.ndarray],
                   merged: list[tuple[int, np.ndarray]]) -> dict[str, float]:
    """The image's score as predicted and with one kind of error removed (module docstring).

    Args:
        rows, cols, values: the (true cell, prediction, IoU) pairs with IoU > 0.5, the only
            ones any metric threshold counts (a few per cell: no dense matrix).
        n_true, n_pred: cells in the truth and the prediction.
        matched: the matching at IoU 0.5 (true cells, their predictions).
        merged: (prediction, true cells it holds) of every merge.
    """
    m_rows, m_cols = matched
    ones = np.ones(m_rows.size)
    is_matched = np.isin(cols, m_cols)
    # Perfect outlines: a matched prediction becomes its true cell (IoU 1 with it, 0 with
    # every other true cell).
    out_r = np.concatenate([rows[~is_matched], m_rows])
    out_c = np.concatenate([cols[~is_matched], m_cols])
    out_v = np.concatenate([values[~is_matched], ones])
    # Merges split: each merge is replaced by one new prediction per true cell it holds.
    gone = np.isin(cols, [j for j, _ in merged])
    cells = (np.concatenate([c for _, c in merged]) if merged else np.zeros(0, np.int64))
    new_c = n_pred + np.arange(cells.size)
    split_r = np.concatenate([rows[~gone], cells])
    split_c = np.concatenate([cols[~gone], new_c])
    split_v = np.concatenate([values[~gone], np.ones(cells.size)])
    return {
        "score": _pairs_score(rows, cols, values, n_true, n_pred),
        "score_outlines": _pairs_score(out_r, out_c, out_v, n_true, n_pred),
        "score_no_fp": _pairs_score(rows[is_matched], cols[is_matched], values[is_matched],
                                    n_true, m_cols.size),
        "score_merges_split": _pairs_score(split_r, split_c, split_v, n_true,
                                           n_pred - len(merged) + cells.size),
    }


def error_counts(truth: Truth, pred_labels: np.ndarray,
                 by_size: bool = False) -> dict[str, float]:
    """Flat error columns for a per-image score row (e.g. the OOF table): tp, fn, fp, merges,
    splits, mean_iou (NaN when nothing matched); with ``by_size`` also the reasons and the
    size-bin counts (``fn_lt100``, ...)."""
    rec = error_analysis(truth, pred_labels)
    row = rec.counts()
    return row if by_size else {k: row[k] for k in COUNT_COLUMNS}


def error_table(records: Iterable[tuple[str, str, ErrorRecord]]) -> pd.DataFrame:
    """One row per image: id, cell_type and :meth:`ErrorRecord.counts`."""
    rows = [{"id": image_id, "cell_type": cell_type, **rec.counts()}
            for image_id, cell_type, rec in records]
    return pd.DataFrame(rows, columns=["id", "cell_type", *TABLE_COLUMNS])


def _ratio(num: pd.Series | float, den: pd.Series | float):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(den) > 0, np.asarray(num, float) / np.maximum(den, 1), np.nan)


def error_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per cell type and ``overall``: summed counts, precision@0.5 = TP / (TP + FP) and
    recall@0.5 = TP / (TP + FN) over all cells (pooled, unlike the image-mean competition
    score), mean matched IoU over all matched cells, miss rate (FN / true cells) and FP rate
    (FP / predicted cells) per size bin (NaN for an empty bin)."""
    if table.empty:
        raise ValueError("error_summary: no images")
    sums = [c for c in TABLE_COLUMNS if c != "mean_iou" and c not in WHAT_IF_COLUMNS]
    work = table.assign(_iou_sum=table["mean_iou"].fillna(0.0) * table["tp"])
    groups = [(name, part) for name, part in work.groupby("cell_type", sort=True)]
    groups.append(("overall", work))
    rows = {}
    for name, part in groups:
        total = part[sums].sum()
        row: dict[str, float] = {"images": len(part)}
        row.update({k: int(total[k]) for k in ("n_true", "n_pred", "tp", "fn", "fp",
                                                "merges", "splits")})
        row["precision@0.5"] = float(_ratio(total["tp"], total["tp"] + total["fp"]))
        row["recall@0.5"] = float(_ratio(total["tp"], total["tp"] + total["fn"]))
        row["mean_iou"] = float(_ratio(part["_iou_sum"].sum(), total["tp"]))
        row.update({k: float(part[k].mean()) for k in WHAT_IF_COLUMNS})
        row.update({k: int(total[k]) for k in REASON_COLUMNS})
        for name_bin in SIZE_BINS:
            row[f"true_{name_bin}"] = int(total[f"true_{name_bin}"])
            row[f"miss_rate_{name_bin}"] = float(_ratio(total[f"fn_{name_bin}"],
                                                        total[f"true_{name_bin}"]))
        for name_bin in SIZE_BINS:
            row[f"pred_{name_bin}"] = int(total[f"pred_{name_bin}"])
            row[f"fp_rate_{name_bin}"] = float(_ratio(total[f"fp_{name_bin}"],
                                                      total[f"pred_{name_bin}"]))
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "cell_type"
    return out


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if pd.isna(value) else f"{value:.{digits}f}"


def _markdown(rows: list[list[str]], header: list[str]) -> str:
    """Rows of formatted cells as a markdown table: a cell-type column, then numbers."""
    return pd.DataFrame(rows, columns=header).to_markdown(
        index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(header) - 1))


WHAT_IF_HEADER = ["cell type", "score", "perfect outlines", "no false positives",
                  "merges split", "mean matched IoU"]


def error_summary_markdown(summary: pd.DataFrame) -> str:
    """An :func:`error_summary` table as three markdown tables (counts, reasons, sizes)."""
    counts = [[str(name), *(str(int(r[c])) for c in ("images", "n_true", "n_pred", "tp", "fn",
                                                     "fp", "merges", "splits")),
               _fmt(r["precision@0.5"]), _fmt(r["recall@0.5"]), _fmt(r["mean_iou"])]
              for name, r in summary.iterrows()]
    lost = [[str(name), *(_fmt(r[c]) for c in WHAT_IF_COLUMNS), _fmt(r["mean_iou"])]
            for name, r in summary.iterrows()]
    reasons = [[str(name), *(str(int(r[c])) for c in REASON_COLUMNS)]
               for name, r in summary.iterrows()]
    sizes = [[str(name),
              *(f"{_fmt(r[f'miss_rate_{b}'])} ({int(r[f'true_{b}'])})" for b in SIZE_BINS),
              *(f"{_fmt(r[f'fp_rate_{b}'])} ({int(r[f'pred_{b}'])})" for b in SIZE_BINS)]
             for name, r in summary.iterrows()]
    return "\n".join([
        "## Where the points are lost (image-mean score with one kind of error removed)", "",
        _markdown(lost, WHAT_IF_HEADER),
        "", "## Counts at IoU > 0.5", "",
        _markdown(counts, ["cell type", "images", "true", "pred", "TP", "FN", "FP", "merges",
                           "splits", "precision@0.5", "recall@0.5", "mean matched IoU"]),
        "", "## Why: misses (FN) and false positives (FP) by cause", "",
        _markdown(reasons, ["cell type", "FN in merge", "FN split", "FN other", "FP merge",
                            "FP split piece", "FP other"]),
        "", "## By cell area (pixels): miss rate = FN / true cells, FP rate = FP / "
        "predicted cells (cells in the bin in parentheses)", "",
        _markdown(sizes, ["cell type", *(f"miss {lab}" for lab in SIZE_LABELS),
                          *(f"FP {lab}" for lab in SIZE_LABELS)])])


__all__ = [
    "COUNT_COLUMNS",
    "ErrorRecord",
    "MATCH_IOU",
    "MERGE_COVER",
    "SIZE_BINS",
    "SIZE_EDGES",
    "SIZE_LABELS",
    "SPLIT_COVER",
    "TABLE_COLUMNS",
    "WHAT_IF_COLUMNS",
    "WHAT_IF_HEADER",
    "error_analysis",
    "error_counts",
    "error_summary",
    "error_summary_markdown",
    "error_table",
    "size_bin",
    "what_if_scores",
]
