"""Local keypoint verification of near-duplicate candidate pairs (OpenCV ORB + RANSAC).

``extract_features`` resizes a grayscale image so that its long side equals
``side`` (small images are upscaled too, so all images are compared at the same
scale) and computes ORB keypoints / 256-bit binary descriptors.
``match_inliers`` matches two feature sets (Hamming brute force, k=2, Lowe
ratio test) and counts the matches consistent with one RANSAC homography.

Copies of one photo (resized, recompressed, rotated by a few degrees, cropped
by ~10%, gray) keep hundreds of inliers out of 1000 features, unrelated photos
usually give about a dozen chance inliers (RANSAC always finds 4+ points that
agree with *some* homography). Distinct photos of one layout (a dish centred on
a plain background, ``food-originals``) reach 25-39 now and then, so
:data:`DEFAULT_MIN_INLIERS` = 40 (calibrated with ``dedup-assets bench accuracy``
on the dev set: precision 0.984 at 25, 1.0 at 40, same recall).  Mirrored copies are not handled here: the caller
flips one image beforehand.

Inliers on one shared object are not enough: the same burger cut out and pasted on another
background (``food-originals`` 0000087/0000346) keeps ~100 inliers. ``overlap_disagreement``
maps one image onto the other with the RANSAC homography and counts the blocks of the overlap
where the pictures disagree: edited copies of one picture stay below 0.2 on the dev set
(captions included), that pair lies at 0.32, so :data:`DEFAULT_MAX_DISAGREEMENT` = 0.26.

Pure OpenCV / numpy (no Dagster).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .kernels import hamming_knn2

#: recommended decision threshold: ``inliers >= DEFAULT_MIN_INLIERS`` -> same picture
DEFAULT_MIN_INLIERS = 40
DEFAULT_N_FEATURES = 1000
DEFAULT_SIDE = 512


@dataclass
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32 keypoint coordinates (in the resized image)
    descriptors: np.ndarray  # (n, 32) uint8 ORB descriptors (may be empty: (0, 32))

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @staticmethod
    def empty() -> "LocalFeatures":
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))


def _to_gray_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif arr.shape[2] in (3, 4):
            # callers pass RGB(A); for luminance the channel order barely matters,
            # but use the RGB weights to be exact.
            code = cv2.COLOR_RGB2GRAY if arr.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
            arr = cv2.cvtColor(np.ascontiguousarray(arr if arr.dtype == np.uint8 else _clip_u8(arr)), code)
        else:
            raise ValueError(f"expected a gray (H, W) image, got shape {arr.shape}")
    elif arr.ndim != 2:
        raise ValueError(f"expected a gray (H, W) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = _clip_u8(arr)
    return np.ascontiguousarray(arr)


def _clip_u8(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr.astype(np.float32)), 0, 255).astype(np.uint8)


def _orb(n_features: int) -> "cv2.ORB":
    # edgeThreshold/patchSize 31 are the OpenCV defaults; FAST threshold lowered
    # a bit (20 -> 12) so low-contrast / small images still yield keypoints.
    return cv2.ORB_create(
        nfeatures=int(n_features),
        scaleFactor=1.2,
        nlevels=8,
        edgeThreshold=31,
        firstLevel=0,
        WTA_K=2,
        scoreType=cv2.ORB_HARRIS_SCORE,
        patchSize=31,
        fastThreshold=12,
    )


def feature_frame(shape: tuple[int, int], side: int = DEFAULT_SIDE) -> tuple[int, int]:
    """``(h, w)`` of the frame :func:`extract_features` detects in (and its points use)."""
    h, w = int(shape[0]), int(shape[1])
    if not side or max(h, w) == side:
        return h, w
    scale = side / float(max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def extract_features(gray: np.ndarray, n_features: int = DEFAULT_N_FEATURES, side: int = DEFAULT_SIDE) -> LocalFeatures:
    """ORB features of a grayscale uint8 image (RGB input is converted).

    The image is resized so that its long side equals ``side`` (``INTER_AREA``
    when shrinking, ``INTER_LINEAR`` when enlarging) before detection; the
    returned points are in that resized frame.
    """
    img = _to_gray_uint8(gray)
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        return LocalFeatures.empty()
    nh, nw = feature_frame((h, w), side)
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    keypoints, descriptors = _orb(n_features).detectAndCompute(img, None)
    if descriptors is None or not keypoints:
        return LocalFeatures.empty()
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    return LocalFeatures(points, np.ascontiguousarray(descriptors, dtype=np.uint8).reshape(-1, 32))


def match_homography(
    a: LocalFeatures,
    b: LocalFeatures,
    ratio: float = 0.8,
    ransac_reproj: float = 5.0,
    min_inliers: int = 0,
) -> tuple[int, int, np.ndarray | None]:
    """Returns ``(inliers, good_matches, H)`` between two feature sets.

    ``good_matches``: matches a->b that pass Lowe's ratio test (nearest
    Hamming distance < ``ratio`` x second nearest; brute force, :func:`.kernels.hamming_knn2`).  ``inliers``: how many of
    them agree with one homography ``H`` (a's resized frame -> b's) estimated by
    RANSAC (reprojection error <= ``ransac_reproj`` px in ``b``'s resized frame).
    With fewer than 4 good matches no homography can be fitted, and with fewer than
    ``min_inliers`` (the caller's decision threshold) none can reach it: no RANSAC is run,
    ``(0, good, None)``.
    """
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0, 0, None
    nearest, d1, d2 = hamming_knn2(a.descriptors, b.descriptors)
    good = np.flatnonzero(d1 < ratio * d2)
    n_good = len(good)
    if n_good < max(4, min_inliers):
        return 0, n_good, None
    src = a.points[good].reshape(-1, 1, 2)
    dst = b.points[nearest[good]].reshape(-1, 1, 2)
    try:
        H, mask = cv2.findHomography(src, dst, cv2.RANSAC, float(ransac_reproj), maxIters=2000, confidence=0.995)
    except cv2.error:
        return 0, n_good, None
    if H is None or mask is None:
        return 0, n_good, None
    return int(mask.sum()), n_good, H


def match_inliers(
    a: LocalFeatures, b: LocalFeatures, ratio: float = 0.8, ransac_reproj: float = 5.0
) -> tuple[int, int]:
    """``(inliers, good_matches)`` of :func:`match_homography`.

    Decide with ``inliers >= DEFAULT_MIN_INLIERS`` (40).
    """
    inliers, good, _ = match_homography(a, b, ratio, ransac_reproj)
    return inliers, good


#: long side (px) of the gray images compared by :func:`overlap_disagreement`
CHECK_SIDE = 256
#: recommended threshold: a pair whose overlap disagrees on more blocks than this is two
#: pictures sharing an object (a cut-out pasted on another background), not one picture
DEFAULT_MAX_DISAGREEMENT = 0.26
_FLAT_STD, _TEXTURED_STD, _MIN_NCC = 4.0, 12.0, 0.3


def check_gray(gray: np.ndarray, side: int = CHECK_SIDE) -> np.ndarray:
    """The gray image :func:`overlap_disagreement` compares: long side ``side``."""
    h, w = gray.shape[:2]
    nh, nw = feature_frame((h, w), side)
    if (nh, nw) == (h, w):
        return np.ascontiguousarray(gray)
    return cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR)


def overlap_disagreement(
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    H: np.ndarray,
    frame_a: tuple[int, int],
    frame_b: tuple[int, int],
    block: int = 8,
) -> float:
    """Fraction of the blocks of ``b`` covered by ``a`` (mapped through ``H``) where the two
    pictures disagree.

    ``H`` maps ``a``'s feature frame (``frame_a`` = its ``(h, w)``) to ``b``'s; ``gray_a`` /
    ``gray_b`` are the same views at :data:`CHECK_SIDE` (:func:`check_gray`). Per
    ``block`` x ``block`` block fully inside the warped footprint of ``a``: flat in both
    (std < 4 grey levels) agrees; flat in one and textured (std >= 12) in the other
    disagrees (a texture on one side, a plain background on the other); textured in both
    disagrees when their normalised cross-correlation is below 0.3. Edited copies of one
    picture (recolour, recompression, crop, captions up to a band) stay below ~0.2 on the
    dev set; the same object pasted onto another background lies above 0.3.
    """
    sa = gray_a.shape[0] / float(frame_a[0])
    sb = gray_b.shape[0] / float(frame_b[0])
    Hs = np.diag([sb, sb, 1.0]) @ np.asarray(H, dtype=np.float64) @ np.diag([1.0 / sa, 1.0 / sa, 1.0])
    h, w = gray_b.shape[:2]
    warped = cv2.warpPerspective(gray_a, Hs, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    cover = cv2.warpPerspective(
        np.full(gray_a.shape[:2], 255, np.uint8), Hs, (w, h), flags=cv2.INTER_NEAREST, borderValue=0
    )
    nby, nbx = h // block, w // block
    if nby == 0 or nbx == 0:
        return 0.0

    def blocks(x: np.ndarray) -> np.ndarray:
        return x[: nby * block, : nbx * block].reshape(nby, block, nbx, block).swapaxes(1, 2).reshape(nby * nbx, -1)

    inside = blocks(cover).min(axis=1) == 255
    if not inside.any():
        return 0.0
    xa = blocks(warped)[inside].astype(np.float32)
    xb = blocks(gray_b)[inside].astype(np.float32)
    xa -= xa.mean(axis=1, keepdims=True)
    xb -= xb.mean(axis=1, keepdims=True)
    std_a = np.sqrt((xa * xa).mean(axis=1))
    std_b = np.sqrt((xb * xb).mean(axis=1))
    lo, hi = np.minimum(std_a, std_b), np.maximum(std_a, std_b)
    one_flat = (lo < _FLAT_STD) & (hi >= _TEXTURED_STD)
    both = lo >= _FLAT_STD
    ncc = (xa * xb).mean(axis=1) / np.maximum(std_a * std_b, 1e-6)
    bad = one_flat | (both & (ncc < _MIN_NCC))
    return float(bad.sum() / inside.sum())


# --------------------------------------------------------------------------- pair relations
#: radial frequency bins of :func:`detail_spectrum` (0 to the Nyquist frequency)
SPECTRUM_BINS = 32
#: an image is an upscale when the power just above the smaller copy's Nyquist frequency is
#: below this share of the power just below it (measured on scikit-image photos, 1.5-2.5x,
#: JPEG q80/q92 and PNG: bicubic upscales 0.02-0.065, except smooth pictures (moon, retina,
#: up to 0.11); the originals 0.06-0.6, most above 0.12). Low on purpose: taking an upscale
#: for an original costs disk space, taking an original for an upscale loses its detail.
UPSCALE_MAX_POWER = 0.055
_SPECTRUM_CROP = 512


def detail_spectrum(gray: np.ndarray) -> np.ndarray:
    """Mean power per radial frequency bin (:data:`SPECTRUM_BINS` bins from 0 to Nyquist) of a
    centre crop (at most 512 x 512, Hann window) of ``gray``: where an image's detail ends.
    An upscaled copy has (almost) no power above its source's Nyquist frequency."""
    h, w = gray.shape[:2]
    y0, x0 = max(0, (h - _SPECTRUM_CROP) // 2), max(0, (w - _SPECTRUM_CROP) // 2)
    g = gray[y0 : y0 + _SPECTRUM_CROP, x0 : x0 + _SPECTRUM_CROP].astype(np.float32)
    h, w = g.shape
    if min(h, w) < 32:
        return np.full(SPECTRUM_BINS, np.nan, np.float32)
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    power = np.abs(np.fft.rfft2((g - g.mean()) * win)) ** 2
    ky = np.fft.fftfreq(h)[:, None] * 2
    kx = np.fft.rfftfreq(w)[None, :] * 2
    idx = np.minimum((np.sqrt(kx * kx + ky * ky) * SPECTRUM_BINS).astype(np.int64), SPECTRUM_BINS).ravel()
    total = np.bincount(idx, power.ravel(), SPECTRUM_BINS + 1)[:SPECTRUM_BINS]
    count = np.bincount(idx, None, SPECTRUM_BINS + 1)[:SPECTRUM_BINS]
    return (total / np.maximum(count, 1)).astype(np.float32)


def power_above(spectrum: np.ndarray, c: float) -> float:
    """Mean power of ``spectrum`` in (1.1 c, 1.5 c) over that in (0.6 c, 0.9 c), ``c`` a
    frequency as a share of Nyquist (the smaller copy's resolution); NaN where the bands do
    not fit or the image is flat."""
    if not (0.05 < c < 0.85) or np.isnan(spectrum).any():
        return float("nan")
    k = (np.arange(SPECTRUM_BINS) + 0.5) / SPECTRUM_BINS
    above = spectrum[(k > 1.1 * c) & (k < min(1.0, 1.5 * c))]
    below = spectrum[(k > 0.6 * c) & (k < 0.9 * c)]
    if above.size == 0 or below.size == 0 or below.mean() <= 0:
        return float("nan")
    return float(above.mean() / below.mean())


def _uncovered(cover: np.ndarray) -> np.ndarray:
    """Pixels outside ``cover`` (uint8 0/255), a 1 px margin at its edge counted as covered."""
    return cv2.dilate(cover, np.ones((3, 3), np.uint8)) == 0


def _uniform_share(vals: np.ndarray, tol: int = 12) -> float:
    """Share of ``vals`` within ``tol`` grey levels of their median (1: one flat colour)."""
    if vals.size == 0:
        return 0.0
    v = vals.astype(np.int16)
    return float((np.abs(v - np.median(v)) <= tol).mean())


def _uncovered_split(own: np.ndarray, cover: np.ndarray) -> tuple[float, float]:
    """``(extra, added)``: the share of ``own`` outside ``cover`` that holds content, or
    that is one uniform colour (padding: letterbox bars, the black corners of a tilt)."""
    unc = _uncovered(cover)
    frac = float(unc.mean())
    if frac == 0:
        return 0.0, 0.0
    return (0.0, frac) if _uniform_share(own[unc], 10) >= 0.9 else (frac, 0.0)


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    nby, nbx = x.shape[0] // block, x.shape[1] // block
    return x[: nby * block, : nbx * block].reshape(nby, block, nbx, block).swapaxes(1, 2).reshape(nby * nbx, -1)


def _overlay(a_in_b: np.ndarray, gray_b: np.ndarray, cover_b: np.ndarray, block: int) -> tuple[float, float]:
    """``(added_a, added_b)`` inside the overlap (``b``'s frame): the blocks where the two
    disagree (as in :func:`overlap_disagreement`) are laid on the side whose pixels there are
    nearer one flat colour (a caption band, a sticker), if clearly so; shares of ``b``'s blocks."""
    if gray_b.shape[0] < block or gray_b.shape[1] < block:
        return 0.0, 0.0
    inside = _blocks(cover_b, block).min(axis=1) == 255
    if not inside.any():
        return 0.0, 0.0
    xa = _blocks(a_in_b, block)[inside].astype(np.float32)
    xb = _blocks(gray_b, block)[inside].astype(np.float32)
    za, zb = xa - xa.mean(axis=1, keepdims=True), xb - xb.mean(axis=1, keepdims=True)
    std_a, std_b = np.sqrt((za * za).mean(axis=1)), np.sqrt((zb * zb).mean(axis=1))
    lo, hi = np.minimum(std_a, std_b), np.maximum(std_a, std_b)
    ncc = (za * zb).mean(axis=1) / np.maximum(std_a * std_b, 1e-6)
    bad = ((lo < _FLAT_STD) & (hi >= _TEXTURED_STD)) | ((lo >= _FLAT_STD) & (ncc < _MIN_NCC))
    share = float(bad.sum()) / inside.size
    if share < 0.005:
        return 0.0, 0.0
    ua, ub = _uniform_share(xa[bad].ravel()), _uniform_share(xb[bad].ravel())
    if ub >= ua + 0.2:
        return 0.0, share
    if ua >= ub + 0.2:
        return share, 0.0
    return 0.0, 0.0


def pair_relation(
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    H: np.ndarray,
    frame_a: tuple[int, int],
    frame_b: tuple[int, int],
    block: int = 8,
) -> tuple[float, float, float, float, float]:
    """How two copies of one picture relate: ``(scale, extra_a, extra_b, added_a, added_b)``.

    Arguments as :func:`overlap_disagreement`. ``scale``: linear size of ``a``'s content in
    ``b``'s feature frame per unit of ``a``'s feature frame (``sqrt |det|`` of ``H``'s linear
    part). ``extra_x``: the share of ``x``'s picture that the other does not show and that
    holds content (``x`` shows more of the picture: the other is a crop of it, or a tilted
    copy lost its corners). ``added_x``: the share of ``x`` that is an added band: a uniform
    area the other does not show (letterbox bars, the black corners of a tilt, padding), or
    where the two disagree inside the overlap and ``x`` is the flatter (a caption band).
    """
    sa = gray_a.shape[0] / float(frame_a[0])
    sb = gray_b.shape[0] / float(frame_b[0])
    Hf = np.asarray(H, dtype=np.float64)
    Hs = np.diag([sb, sb, 1.0]) @ Hf @ np.diag([1.0 / sa, 1.0 / sa, 1.0])
    scale = float(np.sqrt(abs(np.linalg.det(Hf[:2, :2]))))
    try:
        Hinv = np.linalg.inv(Hs)
    except np.linalg.LinAlgError:
        return scale, 0.0, 0.0, 0.0, 0.0
    (ha, wa), (hb, wb) = gray_a.shape[:2], gray_b.shape[:2]
    a_in_b = cv2.warpPerspective(gray_a, Hs, (wb, hb), flags=cv2.INTER_LINEAR, borderValue=0)
    cover_b = cv2.warpPerspective(np.full((ha, wa), 255, np.uint8), Hs, (wb, hb), flags=cv2.INTER_NEAREST)
    cover_a = cv2.warpPerspective(np.full((hb, wb), 255, np.uint8), Hinv, (wa, ha), flags=cv2.INTER_NEAREST)
    extra_a, pad_a = _uncovered_split(gray_a, cover_a)
    extra_b, pad_b = _uncovered_split(gray_b, cover_b)
    over_a, over_b = _overlay(a_in_b, gray_b, cover_b, block)
    return scale, extra_a, extra_b, pad_a + over_a, pad_b + over_b
