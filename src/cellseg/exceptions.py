"""The package's one error hierarchy: what a command cannot do because of what it was given.

Every error below :class:`CellsegError` means bad input or state that the user can fix (a
file, a row, an option, an experiment folder); its message names it and what was expected.
The command-line scripts turn any of them (and a ``ValueError`` or ``OSError``) into one
``error:`` line and exit status 2 (:data:`cellseg.cli.USER_ERRORS`,
:func:`cellseg.cli.print_error`); anything else is a bug and keeps its traceback.

Why one module: :mod:`cellseg.data.rle` sits below :mod:`cellseg.data.data_root`, yet a
malformed RLE is bad data like any other, and the CLIs of every stage catch one base class
instead of a list that is easy to get wrong. Each stage's module re-exports its own error.
"""

from __future__ import annotations


class CellsegError(ValueError):
    """Bad input or state; the message names the file, row, option or folder to fix.

    A ``ValueError`` so that code written against the standard library's convention (and
    older callers of this package) still catches it.
    """


class DataError(CellsegError):
    """Bad input data: a data root, CSV, image or id."""


class RLEError(DataError):
    """A malformed run-length string; the message names the source (file, row, image id)."""


class CocoError(DataError):
    """Bad COCO input; the message names the file, image id or annotation id at fault."""


class ConfigError(CellsegError):
    """A config file or override that does not match the schema."""


class TrainingError(CellsegError):
    """A fold cannot be trained as asked (existing run, missing folds, ...)."""


class CellTypeClassifierError(CellsegError):
    """A classifier file that cannot be used (missing keys, other feature version, ...)."""


class TuningError(CellsegError):
    """Tuning cannot start or continue; the message says what is missing and how to fix it."""


class InferenceError(CellsegError):
    """Inference cannot start or go on (no trained model, models without a cell-type head,
    bad options); the message says what to run or pass instead."""


class SubmissionError(CellsegError):
    """A submission that the competition's checker would reject; the message names the
    line / image id and the problem."""


class SegmentError(CellsegError):
    """Bad options or inputs for a whole segment.py run."""


class ImageReadError(DataError):
    """One input file cannot be read as an image (its name is in the message); the other
    images of a folder still run."""


class PseudoLabelError(CellsegError):
    """Bad input for pseudo-labelling; the message names the file or option at fault."""


class PackagingError(CellsegError):
    """A package cannot be built or used; the message names the file or option."""


class ExportError(CellsegError):
    """The export cannot be written or does not reproduce the Keras maps."""


__all__ = [
    "CellsegError", "DataError", "RLEError", "CocoError", "ConfigError", "TrainingError",
    "CellTypeClassifierError", "TuningError", "InferenceError", "SubmissionError",
    "SegmentError", "ImageReadError", "PseudoLabelError", "PackagingError", "ExportError",
]
