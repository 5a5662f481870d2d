"""The base error of bad input, below every module that reads files.

Why a module of its own: :mod:`cellseg.rle` is imported by :mod:`cellseg.data`, yet a malformed
RLE is bad input like any other, so ``RLEError`` must be a ``DataError`` for every CLI's
``except DataError`` to turn it into one ``error:`` line. ``cellseg.data`` re-exports
``DataError`` so ``from cellseg.data import DataError`` keeps working.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message names the file, row or image id and what was expected."""


__all__ = ["DataError"]
