"""Uniform borders (letterbox / pillarbox bars, padding) trimmed before global comparison.

A letterboxed copy differs from its original mostly by its bars; global descriptors of a
fixed-size thumbnail see them as content. Rows and columns at each edge whose pixels are all
close to that edge's colour are cut, as long as at least ``min_keep`` of the side remains.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 14  # max |pixel - border colour| (0-255, per channel) for 98 % of a line


def _run(lines: np.ndarray, colour: np.ndarray, tol: int) -> int:
    """How many leading lines (axis 0 of ``lines``: (n, m, 3)) stay within ``tol`` of colour.

    Checks the lines in growing blocks (1, 4, 16, ...), so an image without a border (the
    usual case) costs one line per side instead of half the image.
    """
    n = len(lines) // 2
    colour = colour.astype(np.int16)
    start, block = 0, 1
    while start < n:
        end = min(n, start + block)
        dev = np.abs(lines[start:end].astype(np.int16) - colour).max(axis=2)  # (k, m)
        ok = (dev <= tol).mean(axis=1) >= 0.98
        bad = np.flatnonzero(~ok)
        if bad.size:
            return start + int(bad[0])
        start, block = end, block * 4
    return n


def border_box(rgb: np.ndarray, tol: int = TOLERANCE, min_keep: float = 0.5) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows/columns to keep: ``rgb[top:bottom, left:right]``."""
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return 0, h, 0, w
    top = _run(rgb, np.median(rgb[0], axis=0), tol)
    bottom = _run(rgb[::-1], np.median(rgb[-1], axis=0), tol)
    left = _run(rgb.transpose(1, 0, 2), np.median(rgb[:, 0], axis=0), tol)
    right = _run(rgb.transpose(1, 0, 2)[::-1], np.median(rgb[:, -1], axis=0), tol)
    if top + bottom > h * (1 - min_keep):
        top = bottom = 0
    if left + right > w * (1 - min_keep):
        left = right = 0
    return top, h - bottom, left, w - right


def trim_uniform_borders(rgb: np.ndarray, tol: int = TOLERANCE, min_keep: float = 0.5) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) without its uniform edge bands (a view; unchanged if none)."""
    t, b, left, r = border_box(rgb, tol, min_keep)
    return rgb[t:b, left:r]
