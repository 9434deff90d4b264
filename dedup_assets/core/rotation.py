"""A rotation- and mirror-invariant global descriptor, to discover rotated copies.

The weight-free descriptor and the hash compare images on a fixed grid, so a copy turned by
an arbitrary angle (say 30 degrees, black corners) looks unrelated to them. This descriptor
samples the largest centred disc in polar coordinates (``cv2.warpPolar``): the magnitudes of
the angular Fourier harmonics of each ring do not change when the image turns about its
centre or is mirrored, and the disc stays inside the content of a copy rotated on its own
canvas. It is weak at telling similar layouts apart, so it only proposes pairs (few
neighbours, high similarity); the keypoint stage decides.
"""

from __future__ import annotations

import cv2
import numpy as np

RADII = 16
ANGLES = 64
HARMONICS = 8
SIDE = 128
DIM = RADII * HARMONICS + RADII


def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    n = np.linalg.norm(x)
    return x / n if n > 1e-9 else np.zeros_like(x)


def rotation_descriptor(rgb: np.ndarray) -> np.ndarray:
    """(DIM,) float32 unit vector from an (H, W, 3) uint8 image."""
    h, w = rgb.shape[:2]
    scale = SIDE / max(1, min(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    h, w = img.shape[:2]
    gray = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
    polar = cv2.warpPolar(gray, (RADII, ANGLES), ((w - 1) / 2, (h - 1) / 2), min(h, w) / 2, cv2.WARP_POLAR_LINEAR)
    spectrum = np.abs(np.fft.rfft(polar, axis=0))[1 : HARMONICS + 1]  # (harmonics, radii)
    spectrum = np.sqrt(spectrum / (spectrum.sum() + 1e-9))
    v = np.concatenate([_unit(spectrum.ravel()), 0.7 * _unit(polar.mean(axis=0))])
    n = np.linalg.norm(v)
    return (v / n if n > 1e-9 else np.eye(1, DIM, 0)[0]).astype(np.float32)
