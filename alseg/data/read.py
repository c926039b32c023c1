"""Reading image and label files: the one way alseg reads them.

Every read starts in `file_bytes`: the file is read as bytes (so any file name works, also
one that is not UTF-8, which crashes `cv2.imread`) and checked to be complete before it is
decoded from memory by OpenCV or PIL. libjpeg decodes a truncated JPEG with a grey bottom
and only warns on stderr; a file cut short, empty or not an image is an AlsegError that
names it instead.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np

from alseg.errors import AlsegError

FIX = "replace it, or remove it and its label from the dataset"
# FF then a marker byte (FF fill bytes before a marker are skipped as they do not match)
_SEGMENT = re.compile(rb"\xff([^\x00\xff])")  # the next marker (libjpeg skips stray bytes before one)
_IN_SCAN = re.compile(rb"\xff([^\x00\xd0-\xd7\xff])")  # in entropy-coded data: a marker that ends the scan


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG stream runs through its segments and scans to its end-of-image marker."""
    pattern, i = _SEGMENT, 2
    while (found := pattern.search(data, i)) is not None:
        marker, i = found.group(1)[0], found.end()
        if marker == 0xD9:
            return True
        pattern = _SEGMENT
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if i + 2 > len(data):
            return False
        i += int.from_bytes(data[i:i + 2], "big")  # skip the segment (an EXIF thumbnail's own markers too)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            pattern = _IN_SCAN
    return False


def _png_complete(data: bytes) -> bool:
    """Whether a PNG stream's chunks run to its IEND chunk."""
    i, n = 8, len(data)
    while i + 12 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        if data[i + 4:i + 8] == b"IEND":
            return True
        i += 12 + length
    return False


def file_bytes(path: Path, what: str) -> bytes:
    """The bytes of an image file, checked to be non-empty and, for JPEG and PNG, complete;
    an AlsegError naming a file that cannot be read, is empty or is cut short."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AlsegError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not data:
        raise AlsegError(f"{what} {path} is empty (0 bytes); {FIX}")
    if data.startswith(b"\xff\xd8") and not _jpeg_complete(data):
        raise AlsegError(f"{what} {path} is damaged: its JPEG data ends before the end-of-image marker "
                         f"(a truncated file); {FIX}")
    if data.startswith(b"\x89PNG\r\n\x1a\n") and not _png_complete(data):
        raise AlsegError(f"{what} {path} is damaged: its PNG data ends before the IEND chunk (a truncated file); {FIX}")
    return data


def decode_cv2(path: Path, flags: int, what: str) -> np.ndarray:
    """`cv2.imdecode` of the checked bytes of `path` (BGR order, as OpenCV gives it)."""
    array = cv2.imdecode(np.frombuffer(file_bytes(path, what), np.uint8), flags)
    if array is None:
        raise AlsegError(f"cannot read {what} {path}: the file is damaged or not an image; {FIX}")
    return array


def decode_pil(path: Path, what: str, load: bool = True):
    """The PIL image of the checked bytes of `path`: fully decoded (PIL raises on damage), or
    with `load=False` only its header read."""
    from PIL import Image

    data = file_bytes(path, what)
    try:
        image = Image.open(io.BytesIO(data))
        if load:
            image.load()
    except Exception as exc:  # PIL raises several types for broken files
        raise AlsegError(f"cannot read {what} {path}: {exc}; {FIX}") from None
    return image


def read_image(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file (PNG, JPEG, ...)."""
    # never rotate by EXIF orientation: labels are stored in the raw pixel order
    image = decode_cv2(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, "image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_index_png(path: Path) -> np.ndarray:
    """uint8 [H, W] of a label PNG that stores one class index (or label id) per pixel."""
    label = decode_cv2(path, cv2.IMREAD_UNCHANGED, "label")
    if label.ndim == 3:
        if label.shape[2] == 3 and (label[..., 0] == label[..., 1]).all() and (label[..., 0] == label[..., 2]).all():
            label = label[..., 0]
        else:
            raise AlsegError(f"label {path} is a colour image; expected one class index per pixel (a single-channel PNG)")
    if label.dtype != np.uint8:
        raise AlsegError(f"label {path} has {label.dtype} pixels; expected uint8 class indices")
    return label


def read_palette_png(path: Path) -> np.ndarray:
    """uint8 [H, W] palette indices of a palette PNG (or the values of a greyscale one), not RGB."""
    image = decode_pil(path, "label")
    if image.mode not in ("P", "L"):
        raise AlsegError(f"label {path} has image mode {image.mode}; expected a palette (P) or greyscale (L) "
                         "PNG whose values are class indices")
    return np.array(image, dtype=np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    image = decode_pil(path, "image", load=False)
    return image.height, image.width
