"""No-reference technical quality score (0..100) used to pick the best copy in a
group of near-duplicates.

All measurements except resolution and compression are made on one gray image at a
FIXED scale: the reduced decode (``DecodedImage.rgb``) converted to gray and, when
larger, area-resized to ``WORK_SIDE`` = 256 px on the long side (``working_gray``),
whatever the original resolution; smaller images are measured at their own size (the
resolution component already penalises them). 256 px is what a DCT-scaled decode gives
almost for free, so stage 1 costs little more than decoding.

Components (each 0..100, higher is better)
------------------------------------------
``q_resolution``   ``100 * log(MP / 0.01) / log(12 / 0.01)`` clipped: 0 at <= 0.01 MP,
                   100 at >= 12 MP (full-resolution width*height).
``q_sharpness``    Edge acutance: mean ``|Laplacian|`` over the 10 % strongest-gradient
                   pixels (Sobel) of the working gray after a 3x3 median (so pixel
                   noise barely registers), normalised by the contrast
                   ``p95 - p5 + 8``: ``E``; ``q = 100 * log(E / 0.05) / log(0.4 / 0.05)``
                   clipped (``SHARP_LO``/``SHARP_HI``): a blur that scales ``E`` by a
                   ratio costs the same points on any photo (sigma-3 blur of a ~1 MP
                   photo: ``E`` x ~0.6, about -25 points).
``q_exposure``     ``100 * (1 - min(1, penalty))`` with penalty =
                   ``2.0 * max(0, frac(>= 251) - 0.02)`` (blown highlights)
                   ``+ 1.5 * max(0, frac(<= 4) - 0.30)`` (crushed shadows; black
                   backgrounds are common, hence the large allowance)
                   ``+ 0.6 * clip((p0.5 - 25) / 60)`` (washed out: no true blacks)
                   ``+ 0.6 * clip((215 - p99.5) / 120)`` (dull/dark: no highlights)
                   ``+ 0.8 * max(0, |mean - 0.47| - 0.15) / 0.32`` (mean far from mid-grey)
                   ``+ 0.5 * max(0, 0.15 - std) / 0.15`` (very low contrast).
``q_noise``        Immerkaer fast noise estimate ``sigma = sqrt(pi/2) / 6 * mean |G * N|``
                   with ``N = [[1,-2,1],[-2,4,-2],[1,-2,1]]``, averaged only over the
                   30 % flattest pixels (weakest Sobel gradient of the median-filtered
                   gray: texture and edges are not noise);
                   ``q = 100 * (1 - (sigma - 0.5) / (3.0 - 0.5))`` clipped
                   (``NOISE_SIGMA_FREE``/``NOISE_SIGMA_ZERO``). The reduction averages
                   noise away (sigma 20 added to a ~1 MP photo adds ~1.5 here), hence
                   the low zero point. Limitation: on pure fine texture (grass, gravel)
                   texture reads as noise, and a blurred copy can then outrank the
                   original; at this scale the two cannot be told apart.
``q_compression``  From the encoder quality when known (JPEG quantisation tables, or
                   the VP8 quantiser of lossy WebP, see ``decode.webp_compression``):
                   ``interp(q, [10, 25, 50, 75, 95], [0, 20, 50, 80, 100])``;
                   ``LOSSY_UNKNOWN_Q`` = 70 for other lossy codecs (AVIF/HEIF), 100 for
                   lossless formats (PNG, lossless WebP, ...); multiplied by a blockiness factor when the decoded
                   array is at native resolution (8x8 grid discontinuities are only
                   visible there): ratio of the strongest 8-phase column/row boundary
                   difference to the second strongest, ``<= 1.15 -> no penalty``,
                   ``>= 2.0 -> factor 0.3``.

``quality_score`` is the weighted mean with ``QUALITY_WEIGHTS``, rounded to 2 decimals.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .kernels import area_resize_gray, structure_stats

__all__ = [
    "QUALITY_COMPONENTS",
    "QUALITY_WEIGHTS",
    "WORK_SIDE",
    "quality_components",
    "quality_score",
    "working_gray",
]

QUALITY_COMPONENTS = ("q_resolution", "q_sharpness", "q_exposure", "q_noise", "q_compression")

#: weights of the components in ``quality_score`` (sum to 1)
QUALITY_WEIGHTS = {
    "q_resolution": 0.20,
    "q_sharpness": 0.30,
    "q_exposure": 0.15,
    "q_noise": 0.15,
    "q_compression": 0.20,
}
assert abs(sum(QUALITY_WEIGHTS.values()) - 1.0) < 1e-9

WORK_SIDE = 256
LOSSY_UNKNOWN_Q = 70.0
SHARP_LO, SHARP_HI = 0.05, 0.4
NOISE_SIGMA_FREE, NOISE_SIGMA_ZERO = 0.5, 3.0
FLAT_FRACTION = 0.3
_MP_LO, _MP_HI = 0.01, 12.0
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def working_gray(img: np.ndarray) -> np.ndarray:
    """Gray ``uint8`` image at the fixed measurement scale (long side <= WORK_SIDE).

    ``img`` is RGB (``H x W x 3``) or already gray (``H x W``).
    """
    gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    h, w = gray.shape[:2]
    m = max(h, w)
    if m > WORK_SIDE:
        s = WORK_SIDE / m
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if gray.dtype == np.uint8 and 3 <= min(h, w) and w <= 2 * size[0] and h <= 2 * size[1]:
            # stage 1's case (a DCT-scaled decode, 1-2x the work side): compiled, ~4x faster
            return area_resize_gray(gray, *size)
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray)


def _clip100(x: float) -> float:
    return float(min(100.0, max(0.0, x)))


def _q_resolution(width: int, height: int) -> float:
    mp = max(1, int(width) * int(height)) / 1e6
    return _clip100(100.0 * math.log(max(mp, _MP_LO) / _MP_LO) / math.log(_MP_HI / _MP_LO))


def _hist_percentiles(hist: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    cdf = np.cumsum(hist) / max(float(hist.sum()), 1.0)
    return [float(np.searchsorted(cdf, q)) for q in qs]


def _u8_hist(gray: np.ndarray) -> np.ndarray:
    return cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)


_MAG_BINS = 2041  # |Sobel x| + |Sobel y| of 8-bit data is at most 2 * 4 * 255
_EDGE_FRACTION = 0.90
_CONTRAST_PERCENTILES = (0.05, 0.95)


def _rank(q: float, n: int) -> int:
    """1-based rank of the order statistic ``sorted(values)[int(q * (n - 1))]``."""
    return int(q * (n - 1)) + 1


def _kth_values(values: np.ndarray, qs: tuple[float, ...]) -> list[int]:
    """Exact order statistics ``sorted(values)[int(q * (n - 1))]`` of a non-negative int16
    array below ``_MAG_BINS`` (via its histogram: no sort)."""
    u16 = np.ascontiguousarray(values).view(np.uint16)
    counts = cv2.calcHist([u16], [0], None, [_MAG_BINS], [0, _MAG_BINS]).ravel()
    cdf = np.cumsum(counts)
    n = int(cdf[-1])
    return [int(np.searchsorted(cdf, _rank(q, n))) for q in qs]


def _gradient(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(den, mag)``: the 3x3-median-filtered gray and its ``|Sobel x| + |Sobel y|``
    (exact integer arithmetic in int16, at most 2040)."""
    den = cv2.medianBlur(gray, 3)
    gx = cv2.Sobel(den, cv2.CV_16S, 1, 0, ksize=3)
    gy = cv2.Sobel(den, cv2.CV_16S, 0, 1, ksize=3)
    return den, cv2.add(cv2.absdiff(gx, 0), cv2.absdiff(gy, 0))


def _q_sharpness(lap_mean: float, p5: float, p95: float) -> float:
    e = max(lap_mean / (p95 - p5 + 8.0), 1e-6)
    return _clip100(100.0 * math.log(e / SHARP_LO) / math.log(SHARP_HI / SHARP_LO))


def _q_noise(resp_mean: float) -> float:
    sigma = math.sqrt(math.pi / 2.0) / 6.0 * resp_mean
    return _clip100(100.0 * (1.0 - (sigma - NOISE_SIGMA_FREE) / (NOISE_SIGMA_ZERO - NOISE_SIGMA_FREE)))


def _structure(gray: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(q_sharpness, q_noise, histogram of gray)`` from one gradient of the median-filtered
    gray; the masked measures in one compiled pass (``kernels.structure_stats``) for a
    ``uint8`` image of at least 3 x 3, else with OpenCV (the same definitions)."""
    den, mag = _gradient(gray)
    h, w = gray.shape
    if h >= 3 and w >= 3 and gray.dtype == np.uint8:
        hist, p5, p95, lap_sum, lap_n, resp_sum, resp_n = structure_stats(
            gray, den, mag, _rank(FLAT_FRACTION, mag.size), _rank(_EDGE_FRACTION, mag.size), *_CONTRAST_PERCENTILES
        )
        sharp = _q_sharpness(lap_sum / max(lap_n, 1), p5, p95)
        return sharp, _q_noise(resp_sum / resp_n if resp_n else 0.0), hist.astype(np.float64)
    return (*_structure_opencv(gray, den, mag), _u8_hist(gray))


def _structure_opencv(gray: np.ndarray, den: np.ndarray, mag: np.ndarray) -> tuple[float, float]:
    """``(q_sharpness, q_noise)`` with OpenCV calls: what ``kernels.structure_stats`` computes
    (sharpness: mean |Laplacian| of ``den`` where ``mag`` is in its top 10 %, over the
    contrast; noise: mean |Immerkaer| of ``gray`` over the interior's flattest 30 %)."""
    t_flat, t_edge = _kth_values(mag, (FLAT_FRACTION, _EDGE_FRACTION))
    lap = cv2.absdiff(cv2.Laplacian(den, cv2.CV_16S, ksize=1), 0)
    p5, p95 = _hist_percentiles(_u8_hist(den), _CONTRAST_PERCENTILES)
    sharp = _q_sharpness(cv2.mean(lap, mask=cv2.compare(mag, t_edge, cv2.CMP_GE))[0], p5, p95)
    h, w = gray.shape
    if h < 3 or w < 3:
        return sharp, 100.0  # no interior: no noise measure
    resp = cv2.absdiff(cv2.filter2D(gray, cv2.CV_16S, _IMMERKAER), 0)[1:-1, 1:-1]
    flat = cv2.compare(mag[1:-1, 1:-1], t_flat, cv2.CMP_LE)
    return sharp, _q_noise(cv2.mean(resp, mask=flat)[0] if cv2.countNonZero(flat) else 0.0)


def _q_exposure(hist: np.ndarray) -> float:
    """From the 256-bin histogram of the work gray."""
    n = max(float(hist.sum()), 1.0)
    cdf = np.cumsum(hist) / n
    black = float(np.searchsorted(cdf, 0.005))  # 0.5th percentile
    white = float(np.searchsorted(cdf, 0.995))  # 99.5th percentile
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean = float((hist * levels).sum() / n)
    std = float(math.sqrt(max(0.0, (hist * (levels - mean) ** 2).sum() / n)))
    clip_lo = hist[:5].sum() / n
    clip_hi = hist[251:].sum() / n
    penalty = (
        1.5 * max(0.0, clip_lo - 0.30)  # crushed shadows (black backgrounds are common)
        + 2.0 * max(0.0, clip_hi - 0.02)  # blown highlights
        + 0.6 * min(1.0, max(0.0, black - 25.0) / 60.0)  # washed-out: no true blacks
        + 0.6 * min(1.0, max(0.0, 215.0 - white) / 120.0)  # dull/dark: no highlights
        + 0.8 * max(0.0, abs(mean - 0.47) - 0.15) / 0.32  # mean far from mid-grey
        + 0.5 * max(0.0, 0.15 - std) / 0.15  # very low contrast
    )
    return _clip100(100.0 * (1.0 - min(1.0, penalty)))


def _blockiness(gray: np.ndarray) -> float:
    """Strongest / second-strongest mean |difference| over the 8 column (row) phases."""
    g = gray.astype(np.float32)
    ratios = []
    for d in (np.abs(np.diff(g, axis=1)).mean(axis=0), np.abs(np.diff(g, axis=0)).mean(axis=1)):
        if d.size < 32:
            continue
        phases = np.array([d[p::8].mean() for p in range(8)])
        top = np.sort(phases)[::-1]
        ratios.append(float(top[0] / max(top[1], 1e-3)))
    return max(ratios) if ratios else 1.0


def _q_compression(
    gray_native: np.ndarray | None, jpeg_quality: float | None, lossy: bool | None = None
) -> float:
    """``jpeg_quality``: the encoder quality estimate (JPEG tables, WebP VP8 quantiser);
    ``lossy``: lossy codec (default: ``jpeg_quality is not None``)."""
    if lossy is None:
        lossy = jpeg_quality is not None
    if jpeg_quality is not None:
        q = float(np.interp(jpeg_quality, [10, 25, 50, 75, 95], [0, 20, 50, 80, 100]))
    elif lossy:
        q = LOSSY_UNKNOWN_Q  # lossy codec, quality unknown (AVIF/HEIF, damaged header)
    else:
        q = 100.0
    if gray_native is not None:
        b = _blockiness(gray_native)
        factor = 1.0 - 0.7 * min(1.0, max(0.0, (b - 1.15) / 0.85))
        q *= factor
    return _clip100(q)


def quality_components(
    img: np.ndarray,
    width: int,
    height: int,
    jpeg_quality: float | None,
    lossy: bool | None = None,
    work: np.ndarray | None = None,
) -> dict[str, float]:
    """The five quality components (0..100) of an image.

    ``img`` is ``DecodedImage.rgb`` or its gray version; ``width``/``height`` the
    full-resolution size; ``jpeg_quality`` the estimated encoder quality or ``None``;
    ``lossy``: see ``_q_compression``; ``work``: ``working_gray(img)`` if already made.
    """
    gray = working_gray(img) if work is None else work
    native = img.shape[0] * img.shape[1] >= int(width) * int(height)
    gray_native = None
    if native:  # blockiness is only visible at native resolution
        gray_native = img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    sharp, noise, hist = _structure(gray)
    comps = {
        "q_resolution": _q_resolution(width, height),
        "q_sharpness": sharp,
        "q_exposure": _q_exposure(hist),
        "q_noise": noise,
        "q_compression": _q_compression(gray_native, jpeg_quality, lossy),
    }
    return {k: round(v, 2) for k, v in comps.items()}


def quality_score(components: dict[str, float]) -> float:
    """Weighted mean of the components (missing/None components count as 0), 0..100."""
    total = 0.0
    for name, wgt in QUALITY_WEIGHTS.items():
        v = components.get(name)
        total += wgt * (float(v) if v is not None else 0.0)
    return round(min(100.0, max(0.0, total)), 2)
