"""Compiled (numba) pixel kernels of stage 1, where OpenCV/numpy pay more in call overhead or
in a generic code path than in the arithmetic.

At stage 1's scale (a ~430 x 290 reduced decode, a 256 px work image, a ~70 px colour copy)
each OpenCV or numpy call costs a few microseconds of dispatch and many are paid per image;
one compiled loop does the same work in one call. Measured on 2 MP decodes (432 x 288, one
core): ``cv2.resize(INTER_AREA)`` to 256 x 171 ~250 us vs ``area_resize_gray`` ~80 us; the
hash grid ~100 vs ~25 us; the JPEG marker scan (numpy) ~120 vs ~50-65 us; the colour
signature ~250 vs ~130 us; stage 1 as a whole 0.66-0.69 -> 0.83-0.85 of the decode rate (``dedup-assets
bench stage1``).

- :func:`area_resize_gray`: area-average resize of a ``uint8`` gray image by a factor in
  ``[1, 2]`` (what ``cv2.INTER_AREA`` computes; results may differ from OpenCV's by one
  level where the exact mean ends in .5 or float rounding differs);
- :func:`reduce_rgb`: integer-factor area reduction of an ``H x W x 3`` image (rounded mean);
- :func:`hash_grid64`: the exact integer 64 x 64 area grid of the wavelet hash;
- :func:`dihedral_hashes`: the 8 dihedral 64-bit hashes of that grid (8 x 8 block sums
  against their median);
- :func:`structure_stats`: the histograms, thresholds and masked means of the quality
  measures, in one pass;
- :func:`color_stats`: joint 4x4x4 histogram, per-bin colour sums and channel spread;
- :func:`jpeg_markers`: positions and codes of every ``FF xx`` (``xx`` not ``00``/``FF``);
- :func:`hamming_knn2`: the two nearest ORB descriptors by Hamming distance (the keypoint
  stage's matcher).

Kernels are compiled on first use and cached (``cache=True``, like ``hash_search``): a fresh
install compiles them once (seconds), each new worker process then loads them from the cache.
"""

from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

__all__ = [
    "area_resize_gray",
    "area_taps",
    "color_stats",
    "dihedral_hashes",
    "grid_taps",
    "hamming_knn2",
    "hash_grid64",
    "jpeg_markers",
    "reduce_rgb",
    "structure_stats",
]

_JIT = {"cache": True, "nogil": True}


# --------------------------------------------------------------------------- area resize


@lru_cache(maxsize=512)
def area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start, weights)`` of an area resize ``n_in -> n_out`` with ``n_in / n_out`` in
    ``[1, 2]``: output ``o`` is ``sum(weights[o, k] * x[start[o] + k] for k in 0..2)``, the
    overlap of ``[o * s, (o + 1) * s]`` with each source pixel divided by ``s = n_in / n_out``."""
    if not (n_out <= n_in <= 2 * n_out) or n_in < 3:
        raise ValueError(f"area_taps needs n_out <= n_in <= 2 * n_out and n_in >= 3, got {n_in} -> {n_out}")
    s = n_in / n_out
    start = np.empty(n_out, np.int32)
    weights = np.zeros((n_out, 3), np.float32)
    for o in range(n_out):
        lo, hi = o * s, (o + 1) * s
        first = min(int(np.floor(lo)), n_in - 3)
        start[o] = first
        for i in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            weights[o, i - first] = (min(hi, i + 1) - max(lo, i)) / s
    start.setflags(write=False)
    weights.setflags(write=False)
    return start, weights


@njit(**_JIT)
def _area3(src, ry, wy, rx, wx):
    h, w = src.shape
    oh, ow = ry.shape[0], rx.shape[0]
    out = np.empty((oh, ow), np.uint8)
    row = np.empty(w, np.float32)
    for oy in range(oh):
        a, b, c = src[ry[oy]], src[ry[oy] + 1], src[ry[oy] + 2]
        w0, w1, w2 = wy[oy, 0], wy[oy, 1], wy[oy, 2]
        for x in range(w):  # vertical pass first: contiguous rows, vectorised
            row[x] = w0 * a[x] + w1 * b[x] + w2 * c[x]
        for ox in range(ow):
            k = rx[ox]
            v = wx[ox, 0] * row[k] + wx[ox, 1] * row[k + 1] + wx[ox, 2] * row[k + 2]
            out[oy, ox] = min(255, np.int32(v + np.float32(0.5)))
    return out


def area_resize_gray(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average resize of a 2-D ``uint8`` image to ``width x height``, each axis reduced
    by a factor in ``[1, 2]`` (``ValueError`` otherwise)."""
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"area_resize_gray needs a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    h, w = gray.shape
    ry, wy = area_taps(h, height)
    rx, wx = area_taps(w, width)
    return _area3(np.ascontiguousarray(gray), ry, wy, rx, wx)


# --------------------------------------------------------------------------- integer reduction


@njit(**_JIT)
def _reduce3(src, k, oh, ow, y0, x0):
    # src: H x (W * 3), C-contiguous
    out = np.empty((oh, ow * 3), np.uint8)
    n = ow * k * 3
    acc = np.empty(n, np.uint16)  # k <= 16: k * k * 255 fits
    area = k * k
    half = area // 2
    c0 = x0 * 3
    for oy in range(oh):
        acc[:] = 0
        for dy in range(k):
            row = src[y0 + oy * k + dy, c0 : c0 + n]
            for i in range(n):
                acc[i] += row[i]
        for ox in range(ow):
            b = ox * k * 3
            for ch in range(3):
                t = np.int32(0)
                for dx in range(k):
                    t += acc[b + dx * 3 + ch]
                out[oy, ox * 3 + ch] = (t + half) // area
    return out


def reduce_rgb(rgb: np.ndarray, k: int) -> np.ndarray:
    """Mean of each ``k x k`` block of an ``H x W x 3`` ``uint8`` image (rounded), the image
    first centre-cropped to a multiple of ``k``."""
    if not 1 <= k <= 16 or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"reduce_rgb needs an H x W x 3 uint8 image and 1 <= k <= 16, got {rgb.shape}, k={k}")
    h, w = rgb.shape[:2]
    k = int(k)
    oh, ow = h // k, w // k
    flat = np.ascontiguousarray(rgb).reshape(h, w * 3)
    return _reduce3(flat, k, oh, ow, (h - oh * k) // 2, (w - ow * k) // 2).reshape(oh, ow, 3)


# --------------------------------------------------------------------------- wavelet hash


@lru_cache(maxsize=512)
def grid_taps(n: int, grid: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(start, count, weights)``: integer area weights of ``n -> grid`` cells, in units of
    ``1 / grid`` source pixel (cell ``i`` spans ``[i * n, (i + 1) * n]``, pixel ``j`` spans
    ``[grid * j, grid * (j + 1)]``)."""
    start = np.empty(grid, np.int64)
    count = np.empty(grid, np.int64)
    taps = n // grid + 2
    weights = np.zeros((grid, taps), np.int64)
    for i in range(grid):
        lo, hi = i * n, (i + 1) * n
        j0, j1 = lo // grid, -(-hi // grid)
        start[i], count[i] = j0, j1 - j0
        for j in range(j0, j1):
            weights[i, j - j0] = min(hi, grid * (j + 1)) - max(lo, grid * j)
    for a in (start, count, weights):
        a.setflags(write=False)
    return start, count, weights


@njit(**_JIT)
def _grid(src, ry, cy, wy, rx, cx, wx):
    h, w = src.shape
    g = ry.shape[0]
    out = np.empty((g, g), np.int64)
    row = np.empty(w, np.int64)
    for oy in range(g):
        row[:] = 0
        for k in range(cy[oy]):
            wk = wy[oy, k]
            line = src[ry[oy] + k]
            for x in range(w):
                row[x] += wk * line[x]
        for ox in range(g):
            t = 0
            for k in range(cx[ox]):
                t += wx[ox, k] * row[rx[ox] + k]
            out[oy, ox] = t
    return out


def hash_grid64(gray: np.ndarray) -> np.ndarray:
    """The 64 x 64 integer area grid of a 2-D ``uint8`` image: cell ``(i, j)`` is the area
    weighted sum of the pixels it covers, times ``H * W`` (exact: ``int64``)."""
    if gray.dtype != np.uint8 or gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"hash_grid64 needs a non-empty 2-D uint8 image, got {gray.dtype} {gray.shape}")
    h, w = gray.shape
    return _grid(np.ascontiguousarray(gray), *grid_taps(h), *grid_taps(w))


@njit(**_JIT)
def _dihedral_hashes(grid, table):
    blocks = np.zeros(64, np.int64)
    for y in range(64):
        for x in range(64):
            blocks[(y >> 3) * 8 + (x >> 3)] += grid[y, x]
    s = np.sort(blocks)
    twice_median = s[31] + s[32]
    out = np.empty(8, np.uint64)
    for k in range(8):
        h = np.uint64(0)
        for i in range(64):
            h = (h << np.uint64(1)) | np.uint64(2 * blocks[table[k, i]] > twice_median)
        out[k] = h
    return out


def dihedral_hashes(grid: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The 8 hashes (``uint64``) of a 64 x 64 integer grid: its 8 x 8 block sums compared
    with their median; bit ``i`` (MSB first) of hash ``k`` is block ``table[k, i]`` (row-major)
    (``table[k]``: where dihedral transform ``k`` takes each block from)."""
    if grid.shape != (64, 64) or table.shape != (8, 64):
        raise ValueError(f"dihedral_hashes needs a 64 x 64 grid and an 8 x 64 table, got {grid.shape}, {table.shape}")
    return _dihedral_hashes(np.ascontiguousarray(grid, dtype=np.int64), np.ascontiguousarray(table, dtype=np.int64))


# --------------------------------------------------------------------------- quality


@njit(**_JIT)
def _percentile_bin(hist, q):
    """``np.searchsorted(np.cumsum(hist) / hist.sum(), q)`` (the same float arithmetic)."""
    total = 0.0
    for v in hist:
        total += v
    total = max(total, 1.0)
    c = 0.0
    for b in range(hist.shape[0]):
        c += hist[b]
        if c / total >= q:
            return b
    return hist.shape[0]


@njit(**_JIT)
def _structure_stats(gray, den, mag, flat_rank, edge_rank, p_lo, p_hi):
    h, w = gray.shape
    mag_hist = np.zeros(2041, np.int64)
    den_hist = np.zeros(256, np.int64)
    gray_hist = np.zeros(256, np.int64)
    for y in range(h):
        for x in range(w):
            mag_hist[mag[y, x]] += 1
            den_hist[den[y, x]] += 1
            gray_hist[gray[y, x]] += 1
    # exact order statistics of mag: the first bins whose cumulative count reaches the ranks
    t_flat, t_edge = -1, -1
    c = 0
    for b in range(2041):
        c += mag_hist[b]
        if t_flat < 0 and c >= flat_rank:
            t_flat = b
        if c >= edge_rank:
            t_edge = b
            break
    p5 = _percentile_bin(den_hist.astype(np.float64), p_lo)
    p95 = _percentile_bin(den_hist.astype(np.float64), p_hi)
    # sharpness: mean |Laplacian| (4-neighbour, reflect-101 border) of den on the edges
    lap_sum, lap_n = 0, 0
    for y in range(h):
        yu = y - 1 if y > 0 else 1
        yd = y + 1 if y < h - 1 else h - 2
        for x in range(w):
            if mag[y, x] >= t_edge:
                xl = x - 1 if x > 0 else 1
                xr = x + 1 if x < w - 1 else w - 2
                v = (np.int64(den[yu, x]) + den[yd, x] + den[y, xl] + den[y, xr]) - 4 * np.int64(den[y, x])
                lap_sum += abs(v)
                lap_n += 1
    # noise: mean |Immerkaer response| of gray over the flat interior pixels
    resp_sum, resp_n = 0, 0
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            if mag[y, x] <= t_flat:
                v = (
                    np.int64(gray[y - 1, x - 1]) + gray[y - 1, x + 1] + gray[y + 1, x - 1] + gray[y + 1, x + 1]
                    - 2 * (np.int64(gray[y - 1, x]) + gray[y + 1, x] + gray[y, x - 1] + gray[y, x + 1])
                    + 4 * np.int64(gray[y, x])
                )
                resp_sum += abs(v)
                resp_n += 1
    return gray_hist, p5, p95, lap_sum, lap_n, resp_sum, resp_n


def structure_stats(
    gray: np.ndarray, den: np.ndarray, mag: np.ndarray, flat_rank: int, edge_rank: int, p_lo: float, p_hi: float
) -> tuple[np.ndarray, int, int, int, int, int, int]:
    """One pass over the work image for the quality measures (all ``H x W``, ``H, W >= 3``;
    ``gray``/``den`` ``uint8``, ``mag`` ``int16`` in ``0..2040``):
    ``(gray_hist, p_lo bin of den, p_hi bin of den, sum and count of |Laplacian(den)|
    where mag >= the edge threshold, sum and count of |Immerkaer(gray)| over the interior
    where mag <= the flat threshold)``. The thresholds are mag's order statistics of rank
    ``flat_rank``/``edge_rank`` (1-based: the smallest value with that many at or below)."""
    if not (gray.dtype == den.dtype == np.uint8 and mag.dtype == np.int16 and gray.shape == den.shape == mag.shape):
        raise ValueError("structure_stats needs uint8 gray/den and int16 mag of one shape")
    if min(gray.shape) < 3:
        raise ValueError(f"structure_stats needs at least 3 x 3 pixels, got {gray.shape}")
    return _structure_stats(gray, den, mag, int(flat_rank), int(edge_rank), float(p_lo), float(p_hi))


# --------------------------------------------------------------------------- colour


@njit(**_JIT)
def _color_stats(small, gray_level):
    h, w, _ = small.shape
    counts = np.zeros(64, np.int64)
    sums = np.zeros((64, 3), np.int64)
    spread_sum = 0
    spread_high = 0
    for y in range(h):
        for x in range(w):
            r, g, b = np.int64(small[y, x, 0]), np.int64(small[y, x, 1]), np.int64(small[y, x, 2])
            i = ((r >> 6) << 4) | ((g >> 6) << 2) | (b >> 6)
            counts[i] += 1
            sums[i, 0] += r
            sums[i, 1] += g
            sums[i, 2] += b
            spread = max(r, g, b) - min(r, g, b)
            spread_sum += spread
            if spread > gray_level:
                spread_high += 1
    return counts, sums, spread_sum, spread_high


def color_stats(small: np.ndarray, gray_level: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(counts, sums, spread_sum, spread_above)`` of an ``H x W x 3`` ``uint8`` image: the
    joint histogram over ``(r >> 6, g >> 6, b >> 6)`` (bin ``r * 16 + g * 4 + b``), the RGB
    sums of each bin, the sum of ``max(R,G,B) - min(R,G,B)`` and how many pixels exceed
    ``gray_level``."""
    if small.dtype != np.uint8 or small.ndim != 3 or small.shape[2] != 3:
        raise ValueError(f"color_stats needs an H x W x 3 uint8 image, got {small.dtype} {small.shape}")
    return _color_stats(np.ascontiguousarray(small), int(gray_level))


# --------------------------------------------------------------------------- JPEG markers

_FF = np.uint64(0xFFFFFFFFFFFFFFFF)
_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)
_ZERO = np.uint64(0)


@intrinsic
def _cttz(typingctx, x):
    """LLVM ``cttz`` on a uint64: index of the lowest set bit."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, False))

    return sig, codegen


@njit(**_JIT)
def _scan_markers(buf, pos, code):
    """Count the markers of ``buf``; store them too while ``pos``/``code`` have room."""
    n = buf.shape[0]
    words = n // 8
    wv = buf[: words * 8].view(np.uint64)
    m = 0
    for wi in range(words + 1):
        if wi < words:
            t = wv[wi] ^ _FF  # each FF byte becomes 00; z flags (at least) those bytes
            z = (t - _ONES) & ~t & _HIGHS
        else:  # the last n % 8 bytes, one by one
            z = _ZERO
            for j in range(n - words * 8):
                z |= np.uint64(0x80) << np.uint64(8 * j)
        while z != _ZERO:
            i = wi * 8 + np.int64(_cttz(z) >> np.uint64(3))
            z &= z - np.uint64(1)
            if i < n - 1 and buf[i] == 0xFF and buf[i + 1] != 0x00 and buf[i + 1] != 0xFF:
                if m < pos.shape[0]:
                    pos[m] = i
                    code[m] = buf[i + 1]
                m += 1
    return m


def jpeg_markers(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, codes)`` of every ``FF xx`` in ``data`` with ``xx`` not ``00`` or ``FF``
    (the marker candidates of a JPEG stream), in order."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if sys.byteorder != "little":  # the word scan assumes little-endian byte order
        ff = np.flatnonzero(buf[:-1] == 0xFF)
        nxt = buf[ff + 1]
        real = (nxt != 0x00) & (nxt != 0xFF)
        return ff[real].astype(np.int64), nxt[real]
    pos, code = np.empty(256, np.int64), np.empty(256, np.uint8)
    m = _scan_markers(buf, pos, code)
    if m > pos.shape[0]:
        pos, code = np.empty(m, np.int64), np.empty(m, np.uint8)
        _scan_markers(buf, pos, code)
    return pos[:m], code[:m]


# --------------------------------------------------------------------------- keypoint matching


@intrinsic
def popcount(typingctx, x):
    """LLVM ``ctpop`` on a uint64 (``popcnt``; ``vpopcntq`` when vectorised on AVX-512)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@njit(**_JIT)
def _knn2(a, bt):
    n, m = a.shape[0], bt.shape[1]
    best = np.empty(n, np.int32)
    d1 = np.empty(n, np.int32)
    d2 = np.empty(n, np.int32)
    dist = np.empty(m, np.int32)
    for i in range(n):
        a0, a1, a2, a3 = a[i, 0], a[i, 1], a[i, 2], a[i, 3]
        for j in range(m):  # vectorised: popcount of xor over 4 words, m at once
            dist[j] = np.int32(
                popcount(a0 ^ bt[0, j]) + popcount(a1 ^ bt[1, j]) + popcount(a2 ^ bt[2, j]) + popcount(a3 ^ bt[3, j])
            )
        x1, x2, k = np.int32(1 << 30), np.int32(1 << 30), -1
        for j in range(m):
            d = dist[j]
            if d < x2:
                if d < x1:
                    x2, x1, k = x1, d, j
                else:
                    x2 = d
        best[i], d1[i], d2[i] = k, x1, x2
    return best, d1, d2


def hamming_knn2(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two nearest rows of ``b`` to each row of ``a`` by Hamming distance (256-bit ORB
    descriptors, ``(n, 32)`` and ``(m, 32)`` uint8, ``m >= 2``): ``(index of the nearest,
    its distance, the second nearest distance)`` per row of ``a``; what
    ``cv2.BFMatcher(NORM_HAMMING).knnMatch(a, b, k=2)`` gives (the first of tied nearest
    rows; a tie means equal first and second distances). ~9x faster than OpenCV's matcher
    here (hardware popcount on 4 words, vectorised over ``b``; 1,000 x 1,000: 0.7 vs 6.4 ms)."""
    a = np.ascontiguousarray(a, dtype=np.uint8).reshape(-1, 32)
    b = np.ascontiguousarray(b, dtype=np.uint8).reshape(-1, 32)
    if b.shape[0] < 2:
        raise ValueError(f"hamming_knn2 needs at least 2 rows in b, got {b.shape[0]}")
    return _knn2(a.view(np.uint64), np.ascontiguousarray(b.view(np.uint64).T))
