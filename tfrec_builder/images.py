"""Turn one image file into the JPEG bytes a shard stores: copied untouched when possible, else converted.

A file is copied byte for byte when its header says it is a complete baseline
8-bit three-component JPEG whose long side already fits; that needs only a walk
over the marker segments, no decoding, so the common case runs at disk speed.
Anything else (progressive, greyscale, CMYK, PNG or WebP named .jpg, too large)
is decoded with OpenCV, resized so the long side is at most ``image_size``
(never upscaled) and re-encoded as a baseline RGB JPEG. Images far larger than
the target are decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself, so a
20000×20000 JPEG never needs 1.2 GB. A file that cannot become a JPEG raises
``ImageError`` with a short reason that the manifest records.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import cv2
import numpy as np

# Markers that start a frame (SOF0..SOF15 minus DHT, JPG and DAC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7}
# Decoding more than this many pixels (after libjpeg's own reduction) is refused, not attempted.
MAX_DECODE_PIXELS = 1 << 27
_MAGIC = [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
          (b"MM\x00*", "TIFF"), (b"RIFF", "WebP")]


class ImageError(Exception):
    """This file cannot be stored; ``str(exc)`` is the reason for the manifest."""


@dataclass(frozen=True)
class JpegInfo:
    sof: int  # 0xC0 is baseline
    precision: int
    height: int
    width: int
    components: int
    complete: bool  # an end-of-image marker follows the first scan


@dataclass(frozen=True)
class Prepared:
    data: bytes
    height: int
    width: int
    action: str  # "copied" | "resized" | "converted"


def jpeg_info(data: bytes) -> JpegInfo | None:
    """Frame header of a JPEG by walking its marker segments; None if ``data`` is not a JPEG at all."""
    if data[:2] != b"\xff\xd8":
        return None
    n, i, frame = len(data), 2, None
    while i < n:
        if data[i] != 0xFF:
            raise ImageError(f"corrupt JPEG header (no marker at byte {i})")
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            break
        if i + 2 > n:
            break
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2 or i + length > n:
            raise ImageError("corrupt JPEG header (segment runs past the end of the file)")
        if marker in _SOF:
            if length < 8:
                raise ImageError("corrupt JPEG header (short frame header)")
            seg = data[i + 2:i + 8]
            frame = (marker, seg[0], int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5])
        elif marker == 0xDA:
            if frame is None:
                raise ImageError("corrupt JPEG header (scan before frame header)")
            # Entropy-coded data can hold 0xFF only as 0xFF00 or a restart marker,
            # so an 0xFFD9 after the scan header is the end-of-image marker.
            complete = data.rfind(b"\xff\xd9") >= i + length
            return JpegInfo(*frame, complete=complete)
        i += length
    raise ImageError("truncated JPEG (ends before the image data)")


def sniff_format(data: bytes) -> str:
    if data[:2] == b"\xff\xd8":
        return "JPEG"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return "unknown"


def _reduction(long_side: int, image_size: int) -> int:
    for factor in (8, 4, 2):
        if long_side // factor >= image_size:
            return factor
    return 1


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def _header_size(data: bytes, info: JpegInfo | None) -> tuple[int, int] | None:
    if info is not None:
        return (info.height, info.width) if info.height > 0 else None
    from PIL import Image  # lazily: only non-JPEG inputs need it, and it reads the header alone

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception:
        return None


def decode(data: bytes, image_size: int, info: JpegInfo | None = None) -> np.ndarray:
    """BGR uint8 pixels; at a libjpeg-reduced scale when that still leaves the long side ≥ ``image_size``."""
    size = _header_size(data, info)
    factor = _reduction(max(size), image_size) if (size and info is not None) else 1
    if size and (size[0] // factor) * (size[1] // factor) > MAX_DECODE_PIXELS:
        raise ImageError(f"image too large to decode ({size[1]}x{size[0]} pixels)")
    # EXIF orientation is ignored, as tf.io.decode_jpeg ignores it: a converted
    # image must look like the copied ones do to the training pipeline.
    flags = _REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageError(f"cannot decode ({sniff_format(data)} data)")
    return image


def resize_to(image: np.ndarray, image_size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= image_size:
        return image
    scale = image_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()


def prepare_bytes(data: bytes, image_size: int, quality: int) -> Prepared:
    if not data:
        raise ImageError("empty file (0 bytes)")
    info = jpeg_info(data)
    if info is None and sniff_format(data) == "unknown":
        raise ImageError("not an image (unrecognised bytes)")
    if info is not None and not info.complete:
        raise ImageError("truncated JPEG (no end-of-image marker)")
    if (info is not None and info.sof == 0xC0 and info.precision == 8 and info.components == 3
            and 0 < max(info.height, info.width) <= image_size and min(info.height, info.width) > 0):
        return Prepared(data, info.height, info.width, "copied")
    image = decode(data, image_size, info)
    was = image.shape[:2] if info is None or info.height == 0 else (info.height, info.width)
    image = resize_to(image, image_size)
    h, w = image.shape[:2]
    return Prepared(encode(image, quality), h, w, "resized" if (h, w) != tuple(was) else "converted")


def read_file(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except OSError as exc:
        raise ImageError(f"unreadable file ({exc.strerror or exc})") from None
