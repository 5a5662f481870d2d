"""Constants of the Sartorius competition format, kept in one place."""

from __future__ import annotations

# Order matters: it is the index order of the model's cell-type head.
CELL_TYPES: tuple[str, ...] = ("shsy5y", "astro", "cort")
CELL_TYPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(CELL_TYPES)}

# The competition's image size. Code never relies on it: sizes come from the CSV and the images.
IMAGE_HEIGHT = 520
IMAGE_WIDTH = 704

TRAIN_COLUMNS: tuple[str, ...] = (
    "id",
    "annotation",
    "width",
    "height",
    "cell_type",
    "plate_time",
    "sample_date",
    "sample_id",
    "elapsed_timedelta",
)
SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "predicted")

# IoU thresholds of the competition metric (0.50, 0.55, ..., 0.95).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

DEFAULT_DATA_DIR = "input/sartorius-cell-instance-segmentation"
