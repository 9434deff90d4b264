"""No-reference technical quality score (0..100) used to pick the best copy in a
group of near-duplicates.

All measurements except resolution are made on the decoded, reduced image
(``DecodedImage.rgb``, long side ~512) converted to gray; images larger than
``WORK_SIDE`` on their long side are first area-resized to it, so sharpness and
noise are measured at a FIXED scale whatever the original resolution (smaller
images are measured at their own size: the resolution component already
penalises them).

Components (each 0..100, higher is better)
------------------------------------------
``q_resolution``   ``100 * log(MP / 0.01) / log(12 / 0.01)`` clipped: 0 at <= 0.01 MP,
                   100 at >= 12 MP (full-resolution width*height).
``q_sharpness``    Edge acutance: mean ``|Laplacian|`` over the 10 % strongest-gradient
                   pixels (Sobel) of the working gray after a 3x3 median (so pixel
                   noise barely registers), normalised by the contrast
                   ``p95 - p5 + 8``: ``E``; ``q = 100 * (1 - exp(-E / SHARP_SCALE))``
                   (``SHARP_SCALE = 0.10``; sharp photos ~70-95, sigma-3 blur of a
                   ~1 MP photo ~30).
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
                   80 % of pixels with the weakest Sobel gradient (texture/edges are
                   not noise); ``q = 100 * (1 - sigma / NOISE_SIGMA_ZERO)`` clipped, with
                   ``NOISE_SIGMA_ZERO = 6``.  Because sigma is measured at the reduced
                   working scale (reduction averages noise away: sigma 20 added to a
                   ~1 MP photo measures ~3 at 512 px), the zero point is 6 rather
                   than the ~15 one would use at full resolution.
``q_compression``  From the JPEG quantisation-table quality when given
                   (``interp(q, [10, 25, 50, 75, 95], [0, 20, 50, 80, 100])``), 100 for
                   lossless formats; multiplied by a blockiness factor when the decoded
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
    "q_sharpness": 0.25,
    "q_exposure": 0.15,
    "q_noise": 0.20,
    "q_compression": 0.20,
}
assert abs(sum(QUALITY_WEIGHTS.values()) - 1.0) < 1e-9

WORK_SIDE = 512
SHARP_SCALE = 0.10
NOISE_SIGMA_ZERO = 6.0
_MP_LO, _MP_HI = 0.01, 12.0
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def working_gray(rgb: np.ndarray) -> np.ndarray:
    """Gray ``uint8`` image at the fixed measurement scale (long side <= WORK_SIDE)."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    h, w = gray.shape[:2]
    m = max(h, w)
    if m > WORK_SIDE:
        s = WORK_SIDE / m
        gray = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray)


def _clip100(x: float) -> float:
    return float(min(100.0, max(0.0, x)))


def _q_resolution(width: int, height: int) -> float:
    mp = max(1, int(width) * int(height)) / 1e6
    return _clip100(100.0 * math.log(max(mp, _MP_LO) / _MP_LO) / math.log(_MP_HI / _MP_LO))


def _u8_percentiles(gray: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    cdf = np.cumsum(np.bincount(gray.ravel(), minlength=256)) / gray.size
    return [float(np.searchsorted(cdf, q)) for q in qs]


def _quantile(x: np.ndarray, q: float) -> float:
    """Fast approximate quantile (on a regular subsample of at most ~65k values)."""
    flat = x.ravel()
    step = max(1, flat.size // 65536)
    sub = flat[::step].copy()
    k = min(sub.size - 1, max(0, int(q * (sub.size - 1))))
    return float(np.partition(sub, k)[k])


def _grad_mag(g: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.add(cv2.absdiff(gx, 0), cv2.absdiff(gy, 0))


def _q_sharpness(gray: np.ndarray) -> float:
    den = cv2.medianBlur(gray, 3)
    g = den.astype(np.float32)
    lap = cv2.absdiff(cv2.Laplacian(g, cv2.CV_32F, ksize=1), 0)
    mag = _grad_mag(g)
    edges = mag >= _quantile(mag, 0.90)
    p5, p95 = _u8_percentiles(den, (0.05, 0.95))
    e = float(lap[edges].mean()) / (p95 - p5 + 8.0)
    return _clip100(100.0 * (1.0 - math.exp(-e / SHARP_SCALE)))


def _q_exposure(gray: np.ndarray) -> float:
    n = gray.size
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
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


def _noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer sigma over the 80 % of pixels with the weakest Sobel gradient."""
    h, w = gray.shape
    if h < 3 or w < 3:
        return 0.0
    g = gray.astype(np.float32)
    resp = cv2.absdiff(cv2.filter2D(g, cv2.CV_32F, _IMMERKAER, borderType=cv2.BORDER_REFLECT), 0)[1:-1, 1:-1]
    mag = _grad_mag(g)[1:-1, 1:-1]
    flat = mag <= _quantile(mag, 0.80)
    if not flat.any():
        return 0.0
    return float(math.sqrt(math.pi / 2.0) / 6.0 * float(resp[flat].mean()))


def _q_noise(gray: np.ndarray) -> float:
    return _clip100(100.0 * (1.0 - _noise_sigma(gray) / NOISE_SIGMA_ZERO))


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


def _q_compression(gray_native: np.ndarray | None, jpeg_quality: float | None) -> float:
    if jpeg_quality is None:
        q = 100.0
    else:
        q = float(np.interp(jpeg_quality, [10, 25, 50, 75, 95], [0, 20, 50, 80, 100]))
    if gray_native is not None:
        b = _blockiness(gray_native)
        factor = 1.0 - 0.7 * min(1.0, max(0.0, (b - 1.15) / 0.85))
        q *= factor
    return _clip100(q)


def quality_components(
    rgb: np.ndarray, width: int, height: int, jpeg_quality: float | None
) -> dict[str, float]:
    """The five quality components (0..100) of an image.

    ``rgb`` is ``DecodedImage.rgb``; ``width``/``height`` the full-resolution size;
    ``jpeg_quality`` the estimated JPEG quality or ``None`` for non-JPEG data.
    """
    gray = working_gray(rgb)
    native = rgb.shape[0] * rgb.shape[1] >= int(width) * int(height)
    gray_native = gray if (native and gray.shape[:2] == rgb.shape[:2]) else None
    comps = {
        "q_resolution": _q_resolution(width, height),
        "q_sharpness": _q_sharpness(gray),
        "q_exposure": _q_exposure(gray),
        "q_noise": _q_noise(gray),
        "q_compression": _q_compression(gray_native, jpeg_quality),
    }
    return {k: round(v, 2) for k, v in comps.items()}


def quality_score(components: dict[str, float]) -> float:
    """Weighted mean of the components (missing/None components count as 0), 0..100."""
    total = 0.0
    for name, wgt in QUALITY_WEIGHTS.items():
        v = components.get(name)
        total += wgt * (float(v) if v is not None else 0.0)
    return round(min(100.0, max(0.0, total)), 2)
