"""Reading microscopy images of any common format as one 2-D array.

PNG, JPEG and BMP through OpenCV (16-bit PNG kept), TIFF through ``tifffile``; 8- or 16-bit,
integer or float, grey, RGB(A) or several channels / planes. One reader serves both
``segment.py`` (own images, kept in their own dtype) and the converters that write the
competition's 8-bit PNGs (``convert_coco.py``, ``pseudo_label.py``: :func:`read_image_uint8`),
so an image is read the same way whichever command sees it. The competition's own PNGs are read
by :func:`cellseg.data.data_root.read_image`, which also checks them against ``train.csv``.

Every reader goes through :func:`decode_file` (bytes first, then decode): ``cv2.imread`` takes
the name as text and crashes the process on a file name that is not valid UTF-8.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from cellseg import fileio
from cellseg.exceptions import ImageReadError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _to_gray(arr: np.ndarray, channel: int | None, path: Path, rgb_order: bool) -> np.ndarray:
    """H x W from H x W x C (or C x H x W with C <= 4 from TIFF)."""
    if arr.ndim == 2:
        if channel not in (None, 0):
            raise ImageReadError(f"{path}: single-channel image has no channel {channel}")
        return arr
    if arr.ndim != 3:
        raise ImageReadError(f"{path}: expected a 2-D image or one with channels, got shape "
                             f"{arr.shape} (stacks and time series are not supported)")
    if arr.shape[0] < min(arr.shape[1], arr.shape[2]):  # channels / planes first ("CYX")
        arr = np.moveaxis(arr, 0, -1)
    n_channels = arr.shape[-1]
    if channel is not None:
        if not 0 <= channel < n_channels:
            raise ImageReadError(f"{path}: --channel {channel} out of range; the image has "
                                 f"{n_channels} channels (0..{n_channels - 1})")
        return np.ascontiguousarray(arr[..., channel])
    if n_channels == 1:
        return arr[..., 0]
    if n_channels in (3, 4):
        rgb = arr[..., :3] if rgb_order else arr[..., 2::-1]
        gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if np.issubdtype(arr.dtype, np.integer):
            gray = np.rint(gray).astype(arr.dtype)
        return gray
    raise ImageReadError(f"{path}: {n_channels} channels (or planes); choose one with "
                         f"--channel K")


def decode_file(path: str | os.PathLike, flags: int = cv2.IMREAD_UNCHANGED
                ) -> np.ndarray | None:
    """Read the file's bytes with Python, then decode them with OpenCV; None when OpenCV
    cannot decode them (corrupt, truncated, empty or another format).

    Why not ``cv2.imread(str(path))``: OpenCV converts the name to UTF-8 itself and ends the
    process with a segmentation fault on a name Python holds with surrogate escapes (a
    non-UTF-8 file name on Linux), losing every other image of the run.

    Raises:
        OSError: the file cannot be opened or read.
    """
    data = np.frombuffer(Path(path).read_bytes(), np.uint8)
    if data.size == 0:
        return None
    return cv2.imdecode(data, flags)


def check_suffix(path: str | os.PathLike) -> None:
    """Fail, naming the file, when its extension is not an image type this module reads."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
                             f"expected an image: {', '.join(IMAGE_SUFFIXES)}")


def read_image_any(path: str | os.PathLike, channel: int | None = None) -> np.ndarray:
    """One image as a 2-D array in its own dtype (uint8, uint16, float32, ...).

    PNG and JPEG through OpenCV (16-bit PNG kept), TIFF through ``tifffile`` (first series;
    singleton axes dropped). ``channel`` picks one channel (0-based, RGB order); by default
    RGB(A) becomes luminance. Why native dtype: a 16-bit 8000 x 8000 image is 128 MB as read
    and would be 256 MB as float32; normalisation happens per tile.

    Raises:
        ImageReadError: unreadable, truncated or empty file, or unusable shape (named).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    check_suffix(path)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = np.squeeze(tifffile.imread(path))
            rgb_order = True
        else:
            arr = decode_file(path)
            if arr is None:
                raise ImageReadError(f"{path}: cannot read the image (corrupt or not "
                                     f"{suffix.lstrip('.').upper()})")
            rgb_order = False  # OpenCV gives BGR(A)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except Exception as exc:  # tifffile raises several types on a damaged file
        raise ImageReadError(f"{path}: cannot read the image ({type(exc).__name__}: "
                             f"{exc})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    gray = _to_gray(arr, channel, path, rgb_order)
    if gray.ndim != 2 or min(gray.shape) < 8:
        raise ImageReadError(f"{path}: image of shape {gray.shape} is too small (>= 8 x 8)")
    if np.issubdtype(gray.dtype, np.floating) and not np.isfinite(gray).all():
        raise ImageReadError(f"{path}: image contains NaN or infinite values")
    return gray


def to_uint8(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Any grayscale array -> uint8; non-8-bit data is scaled between its 0.5 and 99.5
    percentiles (so one hot pixel cannot darken a 16-bit image). Returns (image, rescaled)."""
    if image.dtype == np.uint8:
        return image, False
    if image.dtype == bool:
        return image.astype(np.uint8) * 255, True
    data = image.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(image.shape, np.uint8), True
    lo, hi = np.percentile(data[finite], [0.5, 99.5])
    if hi <= lo:
        out = np.zeros(image.shape, np.uint8)
    else:
        out = np.clip(np.round((np.where(finite, data, lo) - lo) * (255.0 / (hi - lo))), 0, 255)
    return out.astype(np.uint8), True

def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """A PNG (8-bit grayscale for the competition's layout), written atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    with fileio.atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def read_image_uint8(path: str | os.PathLike, channel: int | None = None
                     ) -> tuple[np.ndarray, bool]:
    """:func:`read_image_any` then :func:`to_uint8`: ``(uint8 H x W, rescaled)``."""
    return to_uint8(read_image_any(path, channel))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels.

    Why: validating a submission of ~240 test images, or grouping a folder by shape, should not
    decode every image. ``PIL.Image.open`` is lazy (~0.1 ms a file); TIFFs PIL cannot open
    are sized by ``tifffile``; anything else (or an image over PIL's 179 MPx
    decompression-bomb limit) is decoded once with :func:`read_image_any`.

    Raises:
        ImageReadError: missing file, or not a readable image (a DataError naming the file).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
        if width > 0 and height > 0:
            return int(height), int(width)
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError):
        pass
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                shape = tif.pages[0].shape
            return int(shape[0]), int(shape[1])
        except Exception:  # noqa: BLE001, S110 - fall back to decoding the whole image
            pass
    try:
        return read_image_any(path).shape  # type: ignore[return-value]
    except ImageReadError:
        raise ImageReadError(f"{path}: not a readable image (corrupt, or not PNG/TIFF/JPEG)"
                             ) from None
