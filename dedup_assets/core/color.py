"""Compact colour signature of an image and a colour-aware similarity.

Signature (``color_signature(rgb)`` on ``DecodedImage.rgb``)
-------------------------------------------------------------
All of it is computed on a small copy (integer-factor area reduction, long side
64..127 px), which is cheap and holds all the colour information needed.

``hist``      joint RGB histogram with ``HIST_BINS = (4, 4, 4)`` (64 bins, channel
              values binned as ``v // 64``; bin index ``r*16 + g*4 + b``), float32,
              L1-normalised.  Stored as float16 (128 bytes).
``thumb``     16x16x3 ``uint8`` RGB thumbnail (``cv2.INTER_AREA``, aspect ratio NOT
              preserved, so a rotated/mirrored copy has the rotated/mirrored thumb).
              Stored raw (768 bytes, row-major HWC).
``dominant``  up to 3 ``"#rrggbb"`` colours, most frequent first: the mean colour of
              the most populated 4x4x4 bins (bins holding < 3 % of pixels are skipped).
``is_gray``   True when the image has (almost) no chroma: the per-pixel channel
              spread ``max(R,G,B) - min(R,G,B)`` of the small copy has mean < 4 and
              fewer than 2 % of pixels above 20 (grayscale / 1-bit / B&W copies,
              including JPEG-chroma noise).

Similarity (``color_similarity(a, b, transform)``), in [-1, 1]
-------------------------------------------------------------
``a.thumb`` is first transformed with ``hashing.apply_dihedral(.., transform)`` so
that it is compared with ``b`` as ``b ~= transform(a)``.

* ``lum``: Pearson correlation of the two thumbnails' luminance (BT.601 luma,
  the same weights as Pillow's ``convert("L")`` and OpenCV's RGB2GRAY), i.e. the
  structure.  Flat thumbnails fall back to ``1 - |mean difference| / 64``.
* If either image is gray (``is_gray``) only ``lum`` counts: a grayscale copy of a
  colour photo scores high.
* Otherwise ``0.5 * lum + 0.2 * hist_corr + 0.3 * chroma`` where ``hist_corr`` is
  ``histogram_correlation`` (``cv2.compareHist`` ``HISTCMP_CORREL``) and ``chroma``
  is the agreement of the thumbnails' (Cb, Cr) chroma planes:
  ``1 - 2 * min(1, mean |delta chroma| / 32)`` (1 = identical chroma, -1 = differs by
  >= 32 levels on average, e.g. a hue-rotated copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .hashing import apply_dihedral
from .kernels import color_stats, reduce_rgb

__all__ = [
    "HIST_BINS",
    "HIST_SIZE",
    "THUMB_SIDE",
    "ColorSignature",
    "color_signature",
    "color_similarity",
    "histogram_correlation",
]

HIST_BINS = (4, 4, 4)
HIST_SIZE = HIST_BINS[0] * HIST_BINS[1] * HIST_BINS[2]
THUMB_SIDE = 16
SMALL_SIDE = 64
_DOMINANT_MIN_FRACTION = 0.03
_GRAY_MEAN_SPREAD = 4.0
_GRAY_SPREAD_LEVEL = 20
_GRAY_MAX_FRACTION = 0.02
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass
class ColorSignature:
    hist: np.ndarray  # (HIST_SIZE,) float32, L1-normalised
    thumb: np.ndarray  # (16, 16, 3) uint8 RGB
    dominant: list[str] = field(default_factory=list)
    is_gray: bool = False

    def to_bytes(self) -> tuple[bytes, bytes]:
        """``(hist as float16 bytes, thumb bytes)`` for storage."""
        hist = np.asarray(self.hist, dtype=np.float16).tobytes()
        thumb = np.ascontiguousarray(self.thumb, dtype=np.uint8).tobytes()
        return hist, thumb

    @classmethod
    def from_bytes(cls, hist: bytes, thumb: bytes, dominant: str | None, is_gray: bool) -> "ColorSignature":
        h = np.frombuffer(hist, dtype=np.float16).astype(np.float32)
        t = np.frombuffer(thumb, dtype=np.uint8).reshape(THUMB_SIDE, THUMB_SIDE, 3).copy()
        dom = [c for c in (dominant or "").split(",") if c]
        return cls(hist=h, thumb=t, dominant=dom, is_gray=bool(is_gray))

    @property
    def dominant_str(self) -> str:
        return ",".join(self.dominant)


def _hex(rgb: np.ndarray) -> str:
    r, g, b = (int(round(float(v))) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _small(rgb: np.ndarray, side: int = SMALL_SIDE) -> np.ndarray:
    """Area-reduce by the integer factor ``long side // side`` (the image centre-cropped to
    a multiple of the factor): long side in ``[side, 2 * side)`` (or the image itself when
    smaller)."""
    h, w = rgb.shape[:2]
    k = max(h, w) // side
    if k < 2:
        return rgb
    if k <= 16:  # stage 1 (a 256-511 px decode): compiled
        return reduce_rgb(rgb, k)
    hh, ww = h - h % k, w - w % k
    y, x = (h - hh) // 2, (w - ww) // 2
    crop = np.ascontiguousarray(rgb[y : y + hh, x : x + ww])
    return cv2.resize(crop, (ww // k, hh // k), interpolation=cv2.INTER_AREA)


def color_signature(rgb: np.ndarray) -> ColorSignature:
    """Colour signature of an ``H x W x 3`` ``uint8`` RGB image (EXIF-oriented).

    Everything is computed on ``_small(rgb)`` (long side 64..127 px): cheap, and colour
    statistics need no more.
    """
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    small = _small(rgb)
    # one compiled pass: joint histogram (bin r*16 + g*4 + b of v // 64), colour sums per bin,
    # channel spread max(R,G,B) - min(R,G,B)
    counts, sums, spread_sum, spread_high = color_stats(small, _GRAY_SPREAD_LEVEL)
    n = int(counts.sum())
    hist = (counts / max(float(n), 1.0)).astype(np.float32)
    thumb = cv2.resize(small, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    is_gray = bool(spread_sum / max(n, 1) < _GRAY_MEAN_SPREAD and spread_high < _GRAY_MAX_FRACTION * n)
    top = [int(i) for i in np.argsort(-counts, kind="stable")[:3]]
    dominant = [_hex(sums[i] / counts[i]) for i in top if counts[i] > 0 and counts[i] >= _DOMINANT_MIN_FRACTION * n]
    return ColorSignature(hist=hist, thumb=thumb, dominant=dominant, is_gray=is_gray)


def histogram_correlation(a: ColorSignature, b: ColorSignature) -> float:
    """Pearson correlation of the two colour histograms (``cv2.HISTCMP_CORREL``), [-1, 1]."""
    ha = np.asarray(a.hist, dtype=np.float32).ravel()
    hb = np.asarray(b.hist, dtype=np.float32).ravel()
    return float(np.clip(cv2.compareHist(ha, hb, cv2.HISTCMP_CORREL), -1.0, 1.0))


def _luma(thumb: np.ndarray) -> np.ndarray:
    return thumb.astype(np.float64) @ _LUMA


def _chroma(thumb: np.ndarray) -> np.ndarray:
    t = thumb.astype(np.float64)
    y = t @ _LUMA
    cb = (t[..., 2] - y) * 0.564
    cr = (t[..., 0] - y) * 0.713
    return np.stack([cb, cr], axis=-1)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x.ravel() - x.mean()
    y = y.ravel() - y.mean()
    sx = float(np.sqrt((x * x).sum()))
    sy = float(np.sqrt((y * y).sum()))
    if sx < 1e-6 * x.size or sy < 1e-6 * y.size:
        return float("nan")
    return float((x * y).sum() / (sx * sy))


def color_similarity(a: ColorSignature, b: ColorSignature, transform: int = 0) -> float:
    """Similarity in [-1, 1] of ``b`` and ``transform(a)`` (see module docstring)."""
    ta = apply_dihedral(np.asarray(a.thumb), transform)
    tb = np.asarray(b.thumb)
    ya, yb = _luma(ta), _luma(tb)
    lum = _pearson(ya, yb)
    if not np.isfinite(lum):  # at least one flat thumbnail
        if ya.std() < 1.0 and yb.std() < 1.0:
            lum = 1.0 - min(2.0, abs(float(ya.mean() - yb.mean())) / 64.0)
        else:
            lum = 0.0
    if a.is_gray or b.is_gray:
        return float(np.clip(lum, -1.0, 1.0))
    hist = histogram_correlation(a, b)
    dchroma = float(np.abs(_chroma(ta) - _chroma(tb)).mean())
    chroma = 1.0 - 2.0 * min(1.0, dchroma / 32.0)
    return float(np.clip(0.5 * lum + 0.2 * hist + 0.3 * chroma, -1.0, 1.0))
