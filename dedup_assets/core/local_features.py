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

Pure OpenCV / numpy (no Dagster).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

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
    if side and max(h, w) != side:
        scale = side / float(max(h, w))
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    keypoints, descriptors = _orb(n_features).detectAndCompute(img, None)
    if descriptors is None or not keypoints:
        return LocalFeatures.empty()
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    return LocalFeatures(points, np.ascontiguousarray(descriptors, dtype=np.uint8).reshape(-1, 32))


_MATCHER = None


def _matcher() -> "cv2.BFMatcher":
    global _MATCHER
    if _MATCHER is None:
        _MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=False)
    return _MATCHER


def match_inliers(
    a: LocalFeatures, b: LocalFeatures, ratio: float = 0.8, ransac_reproj: float = 5.0
) -> tuple[int, int]:
    """Returns ``(inliers, good_matches)`` between two feature sets.

    ``good_matches``: matches a->b that pass Lowe's ratio test (nearest
    Hamming distance < ``ratio`` x second nearest).  ``inliers``: how many of
    them agree with one homography estimated by RANSAC (reprojection error
    <= ``ransac_reproj`` px in ``b``'s resized frame).  With fewer than 4 good
    matches no homography can be fitted and ``(0, good_matches)`` is returned.

    Decide with ``inliers >= DEFAULT_MIN_INLIERS`` (40).
    """
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0, 0
    knn = _matcher().knnMatch(a.descriptors, b.descriptors, k=2)
    good = [pair[0] for pair in knn if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance]
    n_good = len(good)
    if n_good < 4:
        return 0, n_good
    src = a.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = b.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    try:
        H, mask = cv2.findHomography(src, dst, cv2.RANSAC, float(ransac_reproj), maxIters=2000, confidence=0.995)
    except cv2.error:
        return 0, n_good
    if H is None or mask is None:
        return 0, n_good
    return int(mask.sum()), n_good
