"""64-bit wavelet perceptual hash, exactly equivariant under the 8 dihedral transforms.

Algorithm (``wavelet_hash``)
----------------------------
1. Area-resize the 2-D gray image to 64x64 (the same area-averaging as
   ``cv2.resize(..., interpolation=cv2.INTER_AREA)`` when downscaling).  The
   area weights are integers (overlaps measured in units of 1/64 source pixel)
   and the products/sums are integer-valued float64 (all below 2**53, hence
   exact in any summation order), so the 64x64 result is *exactly* transformed
   when the input is flipped/rotated/transposed - no floating-point drift.
   The 64x64 values are the area means multiplied by the constant ``H*W``
   (the weight total), which does not change the hash.  Exactness holds while
   ``max_value * H * W * 64 < 2**53`` (8-bit input: up to ~20000 x 20000 px).
   Float input is first quantised to a 1/256 grid (``rint(x * 256)``).
2. The level-3 haar approximation ``cA`` of ``pywt.wavedec2(x, "haar", level=3)``
   is the 8x8 grid of 8x8-block sums / 8; the exact integer block sums are computed
   directly (``reshape(8, 8, 8, 8).sum``), so ties behave identically for every
   transform (and no wavelet library call is paid per image).
3. ``bits = cA > median(cA)``; bit ``i`` (row-major position ``i`` of the 8x8
   grid) is stored MSB first: ``hash = sum(bit[i] << (63 - i))``, an unsigned
   64-bit Python int.  Use ``to_signed64`` for BIGINT storage.

Dihedral transforms (``DIHEDRAL_NAMES[k]`` / ``apply_dihedral(img, k)``), on
the first two axes of an ``H x W [x C]`` array (row 0 = top):

====  ===========  ====================================  ======================
k     name         numpy                                 Pillow equivalent
====  ===========  ====================================  ======================
0     identity     ``img``                               -
1     flip_lr      ``img[:, ::-1]``                      FLIP_LEFT_RIGHT
2     rot90        ``np.rot90(img, 1)`` (counter-clockw.) ROTATE_90
3     rot180       ``img[::-1, ::-1]``                   ROTATE_180
4     rot270       ``np.rot90(img, -1)`` (clockwise)     ROTATE_270
5     flip_ud      ``img[::-1]``                         FLIP_TOP_BOTTOM
6     transpose    ``img.swapaxes(0, 1)`` (main diag.)   TRANSPOSE
7     transverse   ``img[::-1, ::-1].swapaxes(0, 1)``    TRANSVERSE
                   (anti-diagonal; = rot90(flip_lr)...)
====  ===========  ====================================  ======================

(``transpose == np.rot90(np.fliplr(img), 1)`` and
``transverse == np.rot90(np.fliplr(img), -1)``.)  All reflections and rot180
are their own inverse; rot90 and rot270 are each other's inverse.

``hash_variants(gray)[k] == wavelet_hash(apply_dihedral(gray, k))`` exactly,
computed with one resize and one wavelet transform by permuting the 8x8 bit
matrix.  Meaning: if image ``B`` is ``transform_k(A)``, then
``wavelet_hash(B) ~= hash_variants(A)[k]``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .kernels import dihedral_hashes, hash_grid64

__all__ = [
    "DIHEDRAL_NAMES",
    "HASH_BITS",
    "apply_dihedral",
    "invert_dihedral",
    "compose_dihedral",
    "wavelet_hash",
    "hash_variants",
    "hamming",
    "to_signed64",
    "from_signed64",
]

DIHEDRAL_NAMES = ("identity", "flip_lr", "rot90", "rot180", "rot270", "flip_ud", "transpose", "transverse")
HASH_BITS = 64
_GRID = 64  # working resolution
_MASK64 = (1 << 64) - 1
_INVERSE = (0, 1, 4, 3, 2, 5, 6, 7)


def apply_dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform ``k`` (index into ``DIHEDRAL_NAMES``) to axes 0 and 1.

    Returns a view where possible (not necessarily contiguous).
    """
    if k == 0:
        return img
    if k == 1:
        return img[:, ::-1]
    if k == 2:
        return np.rot90(img, 1)
    if k == 3:
        return img[::-1, ::-1]
    if k == 4:
        return np.rot90(img, -1)
    if k == 5:
        return img[::-1]
    if k == 6:
        return img.swapaxes(0, 1)
    if k == 7:
        return img[::-1, ::-1].swapaxes(0, 1)
    raise ValueError(f"dihedral index must be in 0..7, got {k!r}")


def invert_dihedral(k: int) -> int:
    """Index ``j`` such that ``apply_dihedral(apply_dihedral(x, k), j) == x``."""
    return _INVERSE[k]


@lru_cache(maxsize=None)
def _compose_table() -> tuple[tuple[int, ...], ...]:
    probe = np.arange(6).reshape(2, 3)
    outs = [apply_dihedral(probe, k) for k in range(8)]
    table = []
    for a in range(8):
        row = []
        for b in range(8):
            r = apply_dihedral(apply_dihedral(probe, a), b)
            row.append(next(k for k in range(8) if outs[k].shape == r.shape and np.array_equal(outs[k], r)))
        table.append(tuple(row))
    return tuple(table)


def compose_dihedral(first: int, then: int) -> int:
    """Index of the transform 'apply ``first``, then ``then``'."""
    return _compose_table()[first][then]


@lru_cache(maxsize=256)
def _area_weights(n: int) -> np.ndarray:
    """(64, n) integer area weights: overlap of dest cell i ([i*n, (i+1)*n]) with
    source pixel j ([64j, 64(j+1)]), both in units of 1/64 source pixel."""
    i = np.arange(_GRID, dtype=np.int64)[:, None]
    j = np.arange(n, dtype=np.int64)[None, :]
    lo = np.maximum(i * n, j * _GRID)
    hi = np.minimum((i + 1) * n, (j + 1) * _GRID)
    w = np.clip(hi - lo, 0, None).astype(np.float64)
    w.setflags(write=False)
    return w


def _grid64(gray: np.ndarray) -> np.ndarray:
    g = np.asarray(gray)
    if g.ndim == 3 and g.shape[2] == 1:
        g = g[..., 0]
    if g.ndim != 2 or g.shape[0] < 1 or g.shape[1] < 1:
        raise ValueError(f"expected a non-empty 2-D gray image, got shape {g.shape}")
    if g.dtype == np.uint8 or np.issubdtype(g.dtype, np.integer):
        gf = g.astype(np.float64)
    else:
        # float input: quantise to a fixed 1/256 grid so that products stay exact
        gf = np.rint(np.nan_to_num(g.astype(np.float64), nan=0.0) * 256.0)
    h, w = gf.shape
    wr = _area_weights(h)
    wc = _area_weights(w)
    # Integer-valued float64 products/sums < 2**53 -> exact regardless of order.
    if h >= w:
        return wr @ (gf @ wc.T)
    return (wr @ gf) @ wc.T


@lru_cache(maxsize=1)
def _dihedral_table() -> np.ndarray:
    """``table[k, i]``: the 8 x 8 cell that bit ``i`` of variant ``k`` reads."""
    cells = np.arange(64).reshape(8, 8)
    table = np.stack([np.ascontiguousarray(apply_dihedral(cells, k)).ravel() for k in range(8)])
    table.setflags(write=False)
    return table


def _integer_grid(gray: np.ndarray) -> np.ndarray:
    """The exact 64 x 64 grid as ``int64`` (compiled for ``uint8``; float input: step 1)."""
    g = np.asarray(gray)
    if g.dtype == np.uint8 and g.ndim == 2 and g.size:
        return hash_grid64(g)
    return _grid64(g).astype(np.int64)  # integer-valued, below 2**53: exact


def wavelet_hash(gray: np.ndarray) -> int:
    """64-bit wavelet (haar, level 3 of a 64x64 area-resize) hash, unsigned int."""
    return hash_variants(gray)[0]


def hash_variants(gray: np.ndarray) -> list[int]:
    """``[wavelet_hash(apply_dihedral(gray, k)) for k in range(8)]``, computed once."""
    return dihedral_hashes(_integer_grid(gray), _dihedral_table()).tolist()


def hamming(a: int, b: int) -> int:
    """Hamming distance between two 64-bit hashes (signed or unsigned ints)."""
    return ((int(a) ^ int(b)) & _MASK64).bit_count()


def to_signed64(h: int) -> int:
    """Unsigned 64-bit -> two's-complement signed int64 (for BIGINT columns)."""
    h = int(h) & _MASK64
    return h - (1 << 64) if h >= (1 << 63) else h


def from_signed64(h: int) -> int:
    """Signed int64 (as stored) -> unsigned 64-bit Python int."""
    return int(h) & _MASK64
