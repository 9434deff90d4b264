"""Robust, fast image decoding for the dedup pipeline (pure Pillow/NumPy/OpenCV).

``decode_image(data)`` turns raw file bytes into a :class:`DecodedImage`: an
EXIF-oriented RGB ``uint8`` array whose long side is ``target_side`` (or the
true size, when smaller), plus metadata about the original file. With
``exact=False`` (stage 1) the array is only reduced by integer factors: its long
side lies in ``[target_side, 2 * target_side)``, which saves a costly fractional
area resize of the colour image (callers resize what they need, small).

Design notes
------------
* The format is taken from the bytes (Pillow's identification), never from a
  file name or extension.
* Size limits are checked on the *header* (``Image.open`` only parses the
  header) before any pixel buffer is allocated: ``width * height > max_pixels``
  -> ``decompression_bomb``.  Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``,
  errors above 2x that value) is not modified (it is process-global state); when
  it fires during ``Image.open`` it is reported with the same reason.  As a
  consequence ``max_pixels`` larger than ``2 * Image.MAX_IMAGE_PIXELS`` (~179 MP
  with Pillow's default) cannot raise the effective limit.
* JPEGs are decoded with libjpeg DCT scaling (Pillow's ``draft`` rule; the pixels of
  YCbCr/gray JPEGs come from libjpeg-turbo through OpenCV, ``decode_jpeg_pixels``, which
  gives Pillow's pixels without a copy), so a 12 MP JPEG is never decoded at full
  resolution.  Before decoding, the JPEG marker structure
  is validated (cheap, vectorised): a missing EOI (truncated file), a segment
  running past the end of the data, an invalid marker between scans, or restart
  markers out of sequence (typical of bytes overwritten in the middle) raise
  ``truncated``.  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never enabled.
  Limitation: corruption that stays inside entropy-coded data and produces no
  marker bytes is concealed silently by libjpeg and cannot be detected here.
* Other formats are decoded fully (Pillow cannot do otherwise), converted to an
  8-bit mode, shrunk with ``Image.reduce`` (integer box filter) and finally
  (``exact=True``) resized with OpenCV ``INTER_AREA`` to the target long side.
  ``jpeg_draft_size`` is the DCT-scaling request, shared with the benchmark so that
  its decode-only baseline uses exactly the same decoder settings.
* Every Pillow mode is converted to RGB: 16/32-bit integer modes are scaled to
  8 bits, ``F`` is min/max-stretched, CMYK goes through Pillow, alpha (RGBA, LA,
  PA, palette/colour-key transparency) is composited onto a WHITE background.
* EXIF orientation (and, failing that, an XMP ``tiff:Orientation``) is applied
  to the reduced array; ``width``/``height`` are full-resolution post-rotation.
* All Python warnings raised while decoding (decompression-bomb warnings,
  corrupt EXIF, palette transparency...) are suppressed with
  ``warnings.catch_warnings()`` (process-global state: safe in worker processes;
  with threads the filters are still restored, at worst a warning leaks).
* Pure function of the bytes; no global Pillow setting is modified.

Error reasons (``ImageDecodeError.reason``)
-------------------------------------------
``empty``               zero bytes
``not_an_image``        Pillow cannot identify the bytes and they look like no known format
``unsupported_format``  recognised non-raster / unsupported content (SVG, HTML/XML/text, PDF,
                        HEIC, video containers...) or a Pillow decoder that is not available
``truncated``           truncated or corrupt data (incl. a known image signature whose header
                        Pillow cannot parse)
``decompression_bomb``  declared ``width * height > max_pixels`` (refused from the header)
``extreme_aspect``      long side / short side > 50 (checked before ``too_small``)
``too_small``           short side < 8 px
``decode_failed``       anything else
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .kernels import jpeg_markers

__all__ = [
    "DecodedImage",
    "ImageDecodeError",
    "ERROR_REASONS",
    "MIN_SIDE",
    "MAX_ASPECT",
    "decode_image",
    "estimate_jpeg_quality",
    "jpeg_draft_size",
    "jpeg_scale",
    "decode_jpeg_pixels",
    "webp_compression",
]

ERROR_REASONS = (
    "empty",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "decompression_bomb",
    "too_small",
    "extreme_aspect",
    "decode_failed",
)

#: images whose shorter side is below this are refused ("too_small")
MIN_SIDE = 8
#: images whose long/short side ratio exceeds this are refused ("extreme_aspect")
MAX_ASPECT = 50.0

_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "AVIF", "HEIF", "JPEG2000"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageDecodeError(Exception):
    """Decoding failure with a short machine-readable ``reason`` code."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self):  # keep picklable across process pools
        return (type(self), (self.reason, self.message))


@dataclass
class DecodedImage:
    """A decoded, EXIF-oriented, size-reduced image plus metadata.

    ``rgb``: ``H x W x 3`` ``uint8`` C-contiguous; long side == ``target_side`` when the
    image is larger than that (``exact=False``: in ``[target_side, 2 * target_side)``),
    otherwise the true size (never upscaled).
    ``width``/``height``: full-resolution size after EXIF orientation.
    ``format``: Pillow format identified from the bytes ("JPEG", "PNG", "WEBP", ...).
    ``mode``: the original Pillow mode ("RGB", "L", "P", "CMYK", "I;16", "F", ...).
    ``jpeg_quality``: estimated encoder quality (1..100): for JPEG the libjpeg quality
    that explains the quantisation tables, for lossy WebP libwebp's quality from the VP8
    quantiser; ``None`` otherwise.
    ``lossy``: the pixels went through a lossy codec (JPEG, lossy WebP, AVIF/HEIF).
    """

    rgb: np.ndarray
    width: int
    height: int
    format: str
    mode: str
    has_alpha: bool
    jpeg_quality: float | None
    lossy: bool = False


# --------------------------------------------------------------------------- #
# JPEG quality estimation
# --------------------------------------------------------------------------- #
# IJG / Annex K base tables, natural (row-major) order -- the order in which
# Pillow exposes ``im.quantization`` (it de-zigzags when parsing DQT).
_STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61,
     12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77,
     24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101,
     72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip
_STD_CHROMA = np.array(
    [17, 18, 24, 47, 99, 99, 99, 99,
     18, 21, 26, 66, 99, 99, 99, 99,
     24, 26, 56, 99, 99, 99, 99, 99,
     47, 66, 99, 99, 99, 99, 99, 99]
    + [99] * 32,
    dtype=np.float64,
)  # fmt: skip


def _ijg_tables() -> tuple[np.ndarray, np.ndarray]:
    q = np.arange(1, 101, dtype=np.float64)
    scale = np.where(q < 50, np.floor(5000.0 / q), 200.0 - 2.0 * q)[:, None]
    luma = np.clip(np.floor((_STD_LUMA[None, :] * scale + 50.0) / 100.0), 1, 255)
    chroma = np.clip(np.floor((_STD_CHROMA[None, :] * scale + 50.0) / 100.0), 1, 255)
    return np.log(luma), np.log(chroma)


_LOG_LUMA_BY_Q, _LOG_CHROMA_BY_Q = _ijg_tables()  # (100, 64) each, row i = quality i+1


def estimate_jpeg_quality(quantization: dict | None) -> float | None:
    """Estimate the IJG (libjpeg) quality 1..100 that best explains the tables.

    Matches the luminance table (id 0) and, if present, the first chroma table
    (id 1) against the 100 IJG-scaled standard tables in log space and returns
    the best-fitting quality (ties -> the higher quality).  Non-standard
    (camera) tables get the closest IJG-equivalent quality.
    """
    if not quantization:
        return None
    try:
        key = tuple(tuple(quantization[k]) for k in sorted(quantization))
    except Exception:
        return None
    return _quality_of_tables(key)


@functools.lru_cache(maxsize=1024)  # one encoder/camera setting: one set of tables
def _quality_of_tables(key: tuple[tuple[int, ...], ...]) -> float | None:
    try:
        tables = [np.asarray(t, dtype=np.float64) for t in key]
    except Exception:
        return None
    tables = [t for t in tables if t.size == 64]
    if not tables:
        return None
    luma = np.log(np.clip(tables[0], 1, None))
    err = np.abs(_LOG_LUMA_BY_Q - luma[None, :]).mean(axis=1)
    if len(tables) > 1:
        chroma = np.log(np.clip(tables[1], 1, None))
        err = 0.6 * err + 0.4 * np.abs(_LOG_CHROMA_BY_Q - chroma[None, :]).mean(axis=1)
    # argmin over reversed array -> on ties prefer the highest quality
    best = 99 - int(np.argmin(err[::-1]))
    return float(best + 1)


# --------------------------------------------------------------------------- #
# WebP: lossy (VP8) or lossless (VP8L), and the lossy quantiser
# --------------------------------------------------------------------------- #
class _BoolDecoder:
    """VP8 boolean entropy decoder (RFC 6386, section 7), enough to read the frame header."""

    def __init__(self, data: bytes):
        self.data = data
        self.value = int.from_bytes(data[:2].ljust(2, b"\0"), "big")
        self.pos = 2
        self.range = 255
        self.bits = 0

    def bool(self, prob: int = 128) -> int:
        split = 1 + (((self.range - 1) * prob) >> 8)
        big = split << 8
        if self.value >= big:
            bit = 1
            self.range -= split
            self.value -= big
        else:
            bit = 0
            self.range = split
        while self.range < 128:
            self.value <<= 1
            self.range <<= 1
            self.bits += 1
            if self.bits == 8:
                self.bits = 0
                if self.pos < len(self.data):
                    self.value |= self.data[self.pos]
                self.pos += 1
        return bit

    def literal(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | self.bool()
        return v

    def signed(self, n: int) -> int:
        v = self.literal(n)
        return -v if self.bool() else v

    def skip_optional(self, n: int, signed: bool = True) -> None:
        if self.bool():
            self.literal(n)
            if signed:
                self.bool()


def _vp8_base_quantizer(frame: bytes) -> float | None:
    """Mean luma AC quantiser index (0..127) of a VP8 key frame (segments included)."""
    if len(frame) < 12 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None  # not a key frame
    d = _BoolDecoder(frame[10:])
    d.literal(2)  # colour space, clamping type
    segment_q: list[int] | None = None
    absolute = False
    if d.bool():  # segmentation enabled
        update_map = d.bool()
        if d.bool():  # update segment feature data
            absolute = bool(d.bool())
            segment_q = [d.signed(7) if d.bool() else 0 for _ in range(4)]
            for _ in range(4):
                d.skip_optional(6)  # loop-filter levels
        if update_map:
            for _ in range(3):
                d.skip_optional(8, signed=False)
    d.literal(1 + 6 + 3)  # filter type, level, sharpness
    if d.bool() and d.bool():  # loop-filter deltas enabled and updated
        for _ in range(8):
            d.skip_optional(6)
    d.literal(2)  # log2 number of DCT partitions
    base = d.literal(7)
    if segment_q is None:
        return float(base)
    qs = [q if absolute else base + q for q in segment_q]
    return float(sum(min(127, max(0, q)) for q in qs)) / len(qs)


def _webp_quality_from_quantizer(qi: float) -> float:
    """Invert libwebp's quality -> base quantiser mapping (``VP8SetSegmentParams``)."""
    c = 1.0 - min(127.0, max(0.0, qi)) / 127.0
    linear = c**3
    q = linear * 1.5 if linear < 0.5 else (linear + 1.0) / 2.0
    return float(min(100.0, max(1.0, round(100.0 * q))))


def webp_compression(data: bytes) -> tuple[bool, float | None]:
    """``(lossy, estimated quality)`` of WebP bytes: lossy when the image is a VP8
    bitstream (simple or extended/VP8X/animated file), lossless for VP8L. The quality is
    libwebp's 1..100 scale estimated from the VP8 quantiser (``None`` when lossless)."""
    pos = 12  # after "RIFF" <size> "WEBP"
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        if tag == b"VP8 ":
            qi = _vp8_base_quantizer(body)
            return True, None if qi is None else _webp_quality_from_quantizer(qi)
        if tag == b"VP8L":
            return False, None
        if tag == b"ANMF":  # animation frame: 16-byte header, then the frame's chunks
            pos += 8 + 16
            continue
        pos += 8 + size + (size & 1)
    return False, None


# --------------------------------------------------------------------------- #
# JPEG structural validation
# --------------------------------------------------------------------------- #
# markers legal after the first SOS (between scans / before EOI)
_INTER_SCAN_MARKERS = frozenset(
    {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE} | set(range(0xE0, 0xF0))
)


def _validate_jpeg_structure(data: bytes) -> None:
    """Raise ``ImageDecodeError('truncated')`` if the JPEG marker structure is broken.

    Walks the marker segments; for each scan (SOS) locates the end of the
    entropy-coded data (first ``FF xx`` with ``xx`` not in ``00``/``FF``/RSTn),
    checks the RST markers inside the scan cycle ``D0..D7`` in order, and
    requires the segment chain to reach an EOI marker.  Data after the first
    EOI (camera MPF images, trailers) is ignored.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ImageDecodeError("truncated", "JPEG data does not start with SOI")
    mpos, mcode = jpeg_markers(data)  # positions of every marker-looking "FF xx"
    is_rst = (mcode >= 0xD0) & (mcode <= 0xD7)
    nonrst_pos = mpos[~is_rst]

    pos = 2
    seen_scan = False
    while True:
        # skip fill bytes (FF FF ... xx)
        if pos >= n:
            raise ImageDecodeError("truncated", "JPEG data ends before the EOI marker")
        if data[pos] != 0xFF:
            if seen_scan:
                raise ImageDecodeError("truncated", f"corrupt JPEG: no marker at offset {pos}")
            # Pillow/libjpeg tolerate junk between header segments: resync.
            j = data.find(b"\xff", pos)
            if j < 0:
                raise ImageDecodeError("truncated", "JPEG data ends before the EOI marker")
            pos = j
            continue
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise ImageDecodeError("truncated", "JPEG data ends before the EOI marker")
        code = data[pos]
        pos += 1
        if code == 0xD9:  # EOI
            return
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # standalone markers
            continue
        if seen_scan and code not in _INTER_SCAN_MARKERS:
            raise ImageDecodeError("truncated", f"corrupt JPEG: unexpected marker 0xFF{code:02X}")
        if code < 0xC0 and code != 0x01:
            raise ImageDecodeError("truncated", f"corrupt JPEG: invalid marker 0xFF{code:02X}")
        if pos + 2 > n:
            raise ImageDecodeError("truncated", "JPEG data ends inside a marker segment")
        seglen = (data[pos] << 8) | data[pos + 1]
        if seglen < 2:
            raise ImageDecodeError("truncated", "corrupt JPEG: bad segment length")
        pos += seglen
        if pos > n:
            raise ImageDecodeError("truncated", "JPEG data ends inside a marker segment")
        if code != 0xDA:
            continue
        # ---- entropy-coded scan data: find its end -------------------------
        seen_scan = True
        k = int(np.searchsorted(nonrst_pos, pos))
        if k >= len(nonrst_pos):
            raise ImageDecodeError("truncated", "JPEG data ends inside the entropy-coded scan")
        end = int(nonrst_pos[k])
        lo = int(np.searchsorted(mpos, pos))
        hi = int(np.searchsorted(mpos, end))
        if hi > lo:
            rst = mcode[lo:hi].astype(np.int64) - 0xD0  # all RST by construction
            if not np.array_equal(rst, np.arange(rst.size) % 8):
                raise ImageDecodeError("truncated", "corrupt JPEG: restart markers out of sequence")
        pos = end


# --------------------------------------------------------------------------- #
# Format sniffing for files Pillow cannot identify
# --------------------------------------------------------------------------- #
_RASTER_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
)
_UNSUPPORTED_FTYP = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
                     b"isom", b"mp41", b"mp42", b"qt  ", b"3gp4", b"3gp5", b"M4V ", b"crx ")


def _classify_unidentified(data: bytes) -> tuple[str, str]:
    head = data[:512]
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "truncated", "WebP header cannot be parsed (truncated or corrupt)"
    for magic in _RASTER_MAGIC:
        if data.startswith(magic) and len(data) > len(magic) + 2:
            return "truncated", "image signature found but the header cannot be parsed"
    if data.startswith(b"BM") and len(data) > 4 and not _looks_like_text(head):
        return "truncated", "BMP signature found but the header cannot be parsed"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _UNSUPPORTED_FTYP:
            return "unsupported_format", f"ISO-BMFF container brand {brand.decode('latin-1')!r}"
        return "unsupported_format", "ISO-BMFF container (video/HEIF) not supported"
    if head.startswith(b"%PDF"):
        return "unsupported_format", "PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "unsupported_format", "ZIP archive"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    low = stripped[:256].lower()
    if b"<svg" in head.lower() or (low.startswith(b"<?xml") and b"svg" in data[:4096].lower()):
        return "unsupported_format", "SVG vector image"
    if low.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return "unsupported_format", "markup (HTML/XML) document"
    if _looks_like_text(head):
        return "unsupported_format", "text content, not a raster image"
    return "not_an_image", "Pillow cannot identify the data as an image"


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = head[:-3].decode("utf-8")  # multi-byte char cut at the boundary
        except UnicodeDecodeError:
            return False
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
    return printable / len(text) > 0.95


# --------------------------------------------------------------------------- #
# Mode conversion helpers
# --------------------------------------------------------------------------- #
def _orientation(im: Image.Image) -> int:
    value = None
    try:
        value = im.getexif().get(0x0112)
    except Exception:
        value = None
    if value is None:
        xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
        if xmp:
            if isinstance(xmp, (bytes, bytearray)):
                xmp = xmp.decode("utf-8", "ignore")
            m = re.search(r'tiff:Orientation(?:="|>)([0-9])', str(xmp))
            if m:
                value = int(m.group(1))
    try:
        value = int(value) if value is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation (same result as ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:  # Image.Transpose.TRANSPOSE
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:  # Image.Transpose.ROTATE_270 (90 deg clockwise)
        arr = np.rot90(arr, -1)
    elif orientation == 7:  # Image.Transpose.TRANSVERSE
        arr = arr[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:  # Image.Transpose.ROTATE_90 (90 deg counter-clockwise)
        arr = np.rot90(arr, 1)
    return np.ascontiguousarray(arr)


def _int_to_u8(a: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    if sixteen_bit:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    # mode "I" (int32): 8-bit data, 16-bit data, or arbitrary range
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    return _stretch(a.astype(np.float64))


def _stretch(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo = float(a[finite].min())
    hi = float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        out = np.full(a.shape, float(np.clip(lo, 0, 255)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_8bit_mode(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to one of L, RGB, LA, RGBA (8 bits per band)."""
    mode = im.mode
    has_key = "transparency" in im.info
    if mode in ("L", "RGB"):
        return im.convert("RGBA") if has_key else im
    if mode in ("LA", "RGBA"):
        return im
    if mode == "1":
        return im.convert("RGBA") if has_key else im.convert("L")
    if mode in ("P", "PA"):
        return im.convert("RGBA") if (mode == "PA" or has_key) else im.convert("RGB")
    if mode.startswith("I;16"):
        return Image.fromarray(_int_to_u8(np.asarray(im), True), "L")
    if mode == "I" or mode.startswith("I;"):
        return Image.fromarray(_int_to_u8(np.asarray(im), False), "L")
    if mode == "F":
        return Image.fromarray(_stretch(np.asarray(im)), "L")
    if mode == "La":
        return im.convert("LA")
    if mode == "RGBa":
        return im.convert("RGBA")
    return im.convert("RGB")  # CMYK, YCbCr, RGBX, LAB, HSV, ...


def _composite_white(arr: np.ndarray) -> np.ndarray:
    """L/LA/RGB/RGBA uint8 array -> RGB uint8, alpha composited on white."""
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    bands = arr.shape[2]
    if bands in (2, 4):
        color = arr[..., : bands - 1].astype(np.float32)
        alpha = arr[..., bands - 1 :].astype(np.float32) * (1.0 / 255.0)
        out = color * alpha + 255.0 * (1.0 - alpha)
        arr = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        if bands == 2:
            return cv2.cvtColor(np.ascontiguousarray(arr[..., 0]), cv2.COLOR_GRAY2RGB)
        return arr
    return arr


def _fit(arr: np.ndarray, target_side: int) -> np.ndarray:
    h, w = arr.shape[:2]
    m = max(h, w)
    if m <= target_side:
        return arr
    s = target_side / m
    nw = max(1, min(target_side, int(round(w * s))))
    nh = max(1, min(target_side, int(round(h * s))))
    return cv2.resize(np.ascontiguousarray(arr), (nw, nh), interpolation=cv2.INTER_AREA)


_CORRUPT_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error, IndexError)


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #
def jpeg_draft_size(width: int, height: int, target_side: int) -> tuple[int, int] | None:
    """The ``Image.draft`` request for a JPEG: the smallest DCT scale keeping the long side
    >= ``target_side`` (``None``: no reduction needed)."""
    s = target_side / max(width, height)
    if s >= 1.0:
        return None
    return max(1, math.ceil(width * s)), max(1, math.ceil(height * s))


def jpeg_scale(width: int, height: int, target_side: int) -> int:
    """DCT-scaling denominator (1, 2, 4 or 8) for ``jpeg_draft_size`` (Pillow's draft rule)."""
    request = jpeg_draft_size(width, height, target_side)
    if request is None:
        return 1
    scale = min(width // request[0], height // request[1])
    return next(s for s in (8, 4, 2, 1) if scale >= s)


_CV2_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
              8: cv2.IMREAD_REDUCED_COLOR_8}
_CV2_GRAY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
             8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def decode_jpeg_pixels(data: bytes, width: int, height: int, gray: bool, target_side: int) -> np.ndarray:
    """Pixels of a YCbCr/RGB (``gray``: 1-component) JPEG, DCT-scaled by ``jpeg_scale``, as a
    numpy RGB (gray: 2-D) ``uint8`` array in stored orientation.

    libjpeg-turbo through OpenCV: the same pixels as Pillow's ``draft`` + ``load``, without
    Pillow's copy into numpy. Structure and size limits must have been checked before.
    """
    s = jpeg_scale(width, height, target_side)
    flags = (_CV2_GRAY if gray else _CV2_COLOR)[s] | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    expected = (-(-height // s), -(-width // s))
    if arr is None or arr.shape[:2] != expected:
        raise ImageDecodeError("truncated", "libjpeg could not decode the image data")
    return arr if gray else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def _reduce_int(arr: np.ndarray, k: int) -> np.ndarray:
    """Area-reduce by the integer ``k`` (OpenCV's fast path; a remainder of < ``k`` rows or
    columns is cropped, split between both sides)."""
    h, w = arr.shape[:2]
    hh, ww = h - h % k, w - w % k
    if (hh, ww) != (h, w):
        y, x = (h - hh) // 2, (w - ww) // 2
        arr = np.ascontiguousarray(arr[y : y + hh, x : x + ww])
    return cv2.resize(arr, (ww // k, hh // k), interpolation=cv2.INTER_AREA)


def decode_image(
    data: bytes,
    target_side: int = 512,
    max_pixels: int = 150_000_000,
    exact: bool = True,
    cover_short_side: int = 0,
) -> DecodedImage:
    """Decode ``data`` (raw file bytes) into a :class:`DecodedImage`.

    ``cover_short_side``: raise ``target_side`` (the long side) as far as needed for the short
    side to stay >= this (when the image has it): a model that resizes the short side to
    224 px gets a DCT-scaled decode that still covers 224 px, never a full-size one.

    Raises :class:`ImageDecodeError` (see module docstring for reasons); never
    returns a partially decoded image.
    """
    if target_side < MIN_SIDE:
        raise ValueError(f"target_side must be >= {MIN_SIDE}")
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty", "zero-byte input")
    if not isinstance(data, bytes):
        data = bytes(data)  # bytearray / memoryview
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _decode(data, target_side, max_pixels, exact, cover_short_side)
        except ImageDecodeError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError("decompression_bomb", str(exc)) from None
        except MemoryError:
            raise ImageDecodeError("decode_failed", "out of memory while decoding") from None
        except Exception as exc:  # noqa: BLE001 - classify everything else
            raise ImageDecodeError("decode_failed", f"{type(exc).__name__}: {exc}") from None


def _decode(data: bytes, target_side: int, max_pixels: int, exact: bool, cover_short_side: int = 0) -> DecodedImage:
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        reason, msg = _classify_unidentified(data)
        raise ImageDecodeError(reason, msg) from None
    except _CORRUPT_ERRORS as exc:
        reason, msg = _classify_unidentified(data)
        if reason == "unsupported_format":  # e.g. text that happens to start with "BM"
            raise ImageDecodeError(reason, msg) from None
        raise ImageDecodeError("truncated", f"cannot parse header: {exc}") from None

    with im:
        fmt = im.format or "UNKNOWN"
        mode = im.mode
        w, h = im.size
        # ---- header checks: run before any pixel allocation -----------------
        if w <= 0 or h <= 0:
            raise ImageDecodeError("decode_failed", f"invalid image size {w}x{h}")
        if w * h > max_pixels:
            raise ImageDecodeError(
                "decompression_bomb",
                f"declared size {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}",
            )
        if max(w, h) / min(w, h) > MAX_ASPECT:
            raise ImageDecodeError("extreme_aspect", f"aspect ratio of {w}x{h} exceeds {MAX_ASPECT:g}:1")
        if min(w, h) < MIN_SIDE:
            raise ImageDecodeError("too_small", f"{w}x{h} has a side smaller than {MIN_SIDE} px")
        has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
        if cover_short_side > 0:
            target_side = max(target_side, math.ceil(cover_short_side * max(w, h) / min(w, h)))

        jpeg_quality = None
        lossy = fmt in _LOSSY_FORMATS
        if fmt == "WEBP":
            lossy, jpeg_quality = webp_compression(data)
        if fmt in _JPEG_FORMATS:
            _validate_jpeg_structure(data)
            jpeg_quality = estimate_jpeg_quality(getattr(im, "quantization", None))
        orientation = _orientation(im)

        if fmt in _JPEG_FORMATS and mode in ("RGB", "L"):
            arr = decode_jpeg_pixels(data, w, h, mode == "L", target_side)
            m = max(arr.shape[:2])
            if m >= 2 * target_side:
                arr = _reduce_int(arr, m // target_side)
        else:
            if fmt in _JPEG_FORMATS:  # CMYK JPEG: Pillow's draft
                request = jpeg_draft_size(w, h, target_side)
                if request is not None:
                    im.draft(None, request)
            try:
                im.load()
            except Image.DecompressionBombError:
                raise
            except _CORRUPT_ERRORS as exc:
                msg = str(exc)
                if "decoder" in msg and "not available" in msg:
                    raise ImageDecodeError("unsupported_format", msg) from None
                raise ImageDecodeError("truncated", f"{type(exc).__name__}: {msg}") from None
            img = _to_8bit_mode(im)
            m = max(img.size)
            if m >= 2 * target_side:
                img = img.reduce(m // target_side)
            arr = np.asarray(img)

    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    side = target_side if exact else 2 * target_side - 1  # no-op fit when not exact
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        # composite first: cv2 resizing of straight (non-premultiplied) alpha would
        # bleed the colour of transparent pixels into the edges
        rgb = _fit(_composite_white(arr), side)
    else:
        rgb = _composite_white(_fit(arr, side))
    rgb = _orient(rgb, orientation)
    if orientation >= 5:
        w, h = h, w
    return DecodedImage(
        rgb=rgb,
        width=int(w),
        height=int(h),
        format=fmt,
        mode=mode,
        has_alpha=bool(has_alpha),
        jpeg_quality=jpeg_quality,
        lossy=bool(lossy),
    )
