"""Shared helpers of the benchmark scripts: machine facts, versions, timing, result files.

Why one module: every benchmark must say *where and when* it measured (a number without the
machine, the load on it and the library versions cannot be compared with anything), and
write its results atomically (a crash or Ctrl-C never leaves a half-written table). Each
script used to repeat that; now they share it, and the results files have one layout:

``bench/results/<name>.json``::

    {"benchmark": name, "date": ..., "command": ..., "machine": {...}, "versions": {...},
     "params": {...}, "results": ..., "notes": [...]}

``bench/results/<name>.md``: the same facts as a short markdown page with the table(s).

Timing rule used everywhere: one (or more) untimed warm-up call, then the **median** of
``repeats`` timed calls (the median resists the spikes that a shared machine adds).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from cellseg import fileio  # noqa: E402

# Distributions whose versions every result records (missing ones are left out).
BASE_PACKAGES: tuple[str, ...] = ("numpy", "tensorflow-cpu", "tensorflow", "keras")


# ------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """1-minute load average (None where the OS has none): how busy the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """Platform, CPU count and model, memory, and the load average now."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average_1min": load_average(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Python and installed package versions, read from the package metadata.

    Why metadata and not ``module.__version__``: it needs no import, so a benchmark that does
    not use TensorFlow still records its version without paying its start-up.
    """
    out = {"python": platform.python_version()}
    for name in (*BASE_PACKAGES, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def now_iso() -> str:
    """The current UTC time, to the second (ISO 8601)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    """The command that ran this process, as one could type it again (relative to the repo)."""
    argv = list(sys.argv)
    if argv:
        try:
            argv[0] = str(Path(argv[0]).resolve().relative_to(REPO))
        except ValueError:
            pass
    return "python " + " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Wall times (seconds) of repeated calls of one function."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median_ms(self) -> float:
        return 1000.0 * self.median

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "repeats": len(self.times)}


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[Timing, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns:
        ``(Timing, result of the last call)``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_call: need repeats >= 1 and warmup >= 0, got {repeats}, "
                         f"{warmup}")
    out = None
    for _ in range(warmup):
        out = fn()
    timing = Timing()
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        timing.times.append(time.perf_counter() - t0)
    return timing, out


class Stopwatch:
    """Accumulates the time spent inside ``with watch:`` blocks (for timing one stage of a
    loop without timing the set-up around it)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds += time.perf_counter() - self._t0


# ------------------------------------------------------------------------------ output
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant decimals, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.{max(digits - 2, 1)}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3
                   ) -> str:
    """A GitHub markdown table; cells go through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    """The same table aligned for a terminal."""
    cells = [[str(h) for h in headers]] + [[fmt(v, digits) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def header_markdown(title: str, report: Mapping[str, Any]) -> str:
    """The first lines of every results page: what, when, where, with what."""
    m, v = report["machine"], report["versions"]
    vers = ", ".join(f"{k} {val}" for k, val in v.items())
    return (f"# {title}\n\n"
            f"- date: {report['date']}\n"
            f"- command: `{report['command']}`\n"
            f"- machine: {m.get('cpu_model')}, {m.get('cpu_count')} CPU(s), "
            f"{m.get('memory_gib', '?')} GiB, {m.get('platform')}; 1-min load average "
            f"{m.get('load_average_1min')} at the start, {report.get('load_average_end')} "
            f"at the end (other jobs share this machine when it is above 0)\n"
            f"- versions: {vers}\n")


def make_report(name: str, params: Mapping[str, Any], results: Any,
                notes: Sequence[str] = (), extra_packages: Iterable[str] = (),
                started: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document every benchmark writes.

    Args:
        name: benchmark name (the results file stem).
        params: the sizes and options it ran with.
        results: its measurements (JSON-serialisable).
        notes: sentences a reader needs to interpret the numbers.
        extra_packages: distributions to record besides Python/NumPy/TF/Keras.
        started: :func:`start_info` taken when the run began (date, machine with the load
            then); default: now.
    """
    start = dict(started) if started is not None else start_info()
    return {
        "benchmark": name,
        "date": start["date"],
        "command": command_line(),
        "machine": start["machine"],
        "load_average_end": load_average(),
        "versions": versions(extra_packages),
        "params": dict(params),
        "results": results,
        "notes": list(notes),
    }


def start_info() -> dict[str, Any]:
    """Date and machine (with its load) at the start of a run."""
    return {"date": now_iso(), "machine": machine_info()}


def write_results(name: str, report: Mapping[str, Any], markdown_body: str,
                  out_dir: str | os.PathLike | None = None, title: str | None = None
                  ) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<name>.md`` atomically.

    Args:
        name: file stem.
        report: the :func:`make_report` document.
        markdown_body: the tables / text that follow the standard header.
        out_dir: default ``bench/results``.
        title: page title (default: "Benchmark: <name>").
    """
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    fileio.write_text(json_path, json.dumps(report, indent=2, default=_json_default) + "\n")
    notes = "".join(f"- {n}\n" for n in report.get("notes", []))
    md = header_markdown(title or f"Benchmark: {name}", report) + "\n" + markdown_body.strip()
    if notes:
        md += "\n\nNotes:\n\n" + notes
    fileio.write_text(md_path, md.rstrip() + "\n")
    return json_path, md_path


def publish(name: str, report: Mapping[str, Any], markdown_body: str, title: str,
            out_dir: str | os.PathLike | None = None) -> int:
    """:func:`write_results`, then print the body and where it went: the ending of a
    bench script's ``main`` (returns its exit status, 0)."""
    json_path, md_path = write_results(name, report, markdown_body, out_dir=out_dir,
                                       title=title)
    print(markdown_body)
    print(f"wrote {md_path} and {json_path}")
    return 0


def _json_default(value: Any) -> Any:
    """NumPy scalars and arrays, paths: as plain JSON values."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------ synthetic cells
@dataclass(frozen=True)
class CellSpec:
    """Real per-type statistics (docs/design.md section 2) for fast random label images."""

    images: int  # images of this type in the real train.csv
    cells: int  # rows of this type in the real train.csv
    count_median: float
    count_sigma: float
    count_min: int
    count_max: int
    area_median: float
    aspect: tuple[float, float]  # long / short axis


REAL_TYPES: dict[str, CellSpec] = {
    "shsy5y": CellSpec(155, 52_286, 320, 0.45, 75, 790, 230, (2.0, 4.0)),
    "astro": CellSpec(131, 10_522, 73, 0.8, 5, 594, 560, (1.2, 2.5)),
    "cort": CellSpec(320, 10_777, 30, 0.6, 4, 108, 200, (1.0, 1.5)),
}


def real_counts(rng: Any, spec: CellSpec, n_images: int | None = None) -> Any:
    """Cells per image for ``n_images`` images of one type (default: the real number), drawn
    log-normally, clipped to the real min / max and rescaled so that, for the real number of
    images, the total is the real row count."""
    import numpy as np

    n = spec.images if n_images is None else n_images
    raw = np.clip(spec.count_median * np.exp(rng.normal(0.0, spec.count_sigma, n)),
                  spec.count_min, spec.count_max)
    target = spec.cells * n / spec.images
    counts = np.clip(np.rint(raw * target / raw.sum()), spec.count_min, spec.count_max)
    return counts.astype(np.int64)


def draw_labels(rng: Any, shape: tuple[int, int], n_cells: int, area_median: float,
                aspect: tuple[float, float], max_overlap: float = 0.3, min_pixels: int = 12
                ) -> Any:
    """A label image (int32, 0 = background) of up to ``n_cells`` random ellipses.

    Why not :func:`cellseg.data.synthetic.make_image`: benchmarks need tens of thousands of cells
    in seconds and no rendered image. Each cell is drawn in its own small patch; a candidate
    that would lie more than ``max_overlap`` on earlier cells is redrawn, and it takes only
    free pixels (earlier cells stay whole), so crowded types give touching cells.
    """
    import cv2
    import numpy as np

    h, w = shape
    labels = np.zeros((h, w), np.int32)
    k = 0
    for _ in range(30 * n_cells):
        if k == n_cells:
            break
        area = area_median * float(np.exp(rng.normal(0.0, 0.35)))
        ratio = float(rng.uniform(*aspect))
        a = max(np.sqrt(area * ratio / np.pi), 2.0)
        b = max(area / (np.pi * a), 1.5)
        r = int(np.ceil(a)) + 2
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.ellipse(patch, (cx - x0, cy - y0), (int(round(a)), int(round(b))),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
        cell = patch.astype(bool)
        n_px = int(cell.sum())
        if n_px < min_pixels:
            continue
        view = labels[y0:y1, x0:x1]
        free = cell & (view == 0)
        n_free = int(free.sum())
        if n_free < min_pixels or n_free < (1.0 - max_overlap) * n_px:
            continue
        k += 1
        view[free] = k
    return labels


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


__all__ = [
    "BENCH_DIR",
    "REPO",
    "RESULTS_DIR",
    "Stopwatch",
    "Timing",
    "command_line",
    "cpu_model",
    "fmt",
    "header_markdown",
    "load_average",
    "machine_info",
    "make_report",
    "markdown_table",
    "now_iso",
    "quiet_tensorflow",
    "start_info",
    "text_table",
    "time_call",
    "versions",
    "write_results",
]
