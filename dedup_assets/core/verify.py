"""Pair verification after the colour stage: global embeddings, then local keypoints.

Both stages read only the images that are still in candidate pairs, decode each of them once
per stage in worker processes, and compare ``apply_dihedral(a, transform)`` with ``b`` so that
mirrored and rotated copies are compared the right way round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import faiss
import numpy as np

from .candidates import Pair
from .decode import decode_image
from .embeddings import Embedder
from .hashing import apply_dihedral, hamming
from .local_features import LocalFeatures, extract_features, match_inliers
from .parallel import ordered_map
from .store import ImageStore

GLOBAL_SIDE = 256
LOCAL_SIDE = 512


def needed_views(pairs: Sequence[Pair]) -> dict[int, set[int]]:
    """Per image index, the dihedral transforms of it that pairs compare (``a`` transformed)."""
    views: dict[int, set[int]] = {}
    for p in pairs:
        views.setdefault(p.a, set()).add(p.transform)
        views.setdefault(p.b, set()).add(0)
    return views


def _views_rgb(
    store: ImageStore, collection: str, item: tuple[str, tuple[int, ...]]
) -> dict[int, np.ndarray] | str:
    path, transforms = item
    try:
        rgb = decode_image(store.read_bytes(collection, path), target_side=GLOBAL_SIDE).rgb
    except Exception as exc:  # noqa: BLE001 - reported per image by the caller
        return f"{type(exc).__name__}: {exc}"
    return {k: np.ascontiguousarray(apply_dihedral(rgb, k)) for k in transforms}


def _views_features(
    store: ImageStore, collection: str, n_features: int, item: tuple[str, tuple[int, ...]]
) -> dict[int, LocalFeatures] | str:
    path, transforms = item
    try:
        rgb = decode_image(store.read_bytes(collection, path), target_side=LOCAL_SIDE).rgb
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return {
        k: extract_features(np.ascontiguousarray(apply_dihedral(gray, k)), n_features, LOCAL_SIDE)
        for k in transforms
    }


@dataclass
class StageStats:
    images_read: int = 0
    read_errors: dict[str, str] = field(default_factory=dict)


def _iter_views(
    fn: Callable, paths: Sequence[str], views: dict[int, set[int]], workers: int | None
):
    order = sorted(views)
    items = [(paths[i], tuple(sorted(views[i]))) for i in order]
    return zip(order, ordered_map(fn, items, workers=workers, chunk_size=4))


def global_similarities(
    pairs: Sequence[Pair],
    paths: Sequence[str],
    store: ImageStore,
    collection: str,
    embedder: Embedder,
    *,
    hashes: np.ndarray,
    discover_k: int = 0,
    discover_threshold: float = 1.0,
    workers: int | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, list[Pair], np.ndarray, StageStats]:
    """Cosine similarity of each pair's embeddings, plus pairs discovered by embedding kNN.

    Returns ``(similarity per input pair, discovered pairs, their similarity, stats)``.
    Discovery searches the ``discover_k`` nearest neighbours (inner product on normalised
    vectors) among the images read here and proposes those above ``discover_threshold``
    that are not already paired. A pair whose image cannot be read scores NaN.
    """
    stats = StageStats()
    views = needed_views(pairs)
    emb: dict[tuple[int, int], np.ndarray] = {}
    batch_keys: list[tuple[int, int]] = []
    batch_imgs: list[np.ndarray] = []

    def flush() -> None:
        if batch_imgs:
            vecs = embedder.embed(batch_imgs)
            for key, v in zip(batch_keys, vecs):
                emb[key] = v.astype(np.float16)
            batch_keys.clear()
            batch_imgs.clear()

    fn = functools.partial(_views_rgb, store, collection)
    for i, result in _iter_views(fn, paths, views, workers):
        stats.images_read += 1
        if isinstance(result, str):
            stats.read_errors[paths[i]] = result
            continue
        for k, img in result.items():
            batch_keys.append((i, k))
            batch_imgs.append(img)
        if len(batch_imgs) >= batch_size:
            flush()
    flush()

    sims = np.full(len(pairs), np.nan, dtype=np.float32)
    for n, p in enumerate(pairs):
        ea, eb = emb.get((p.a, p.transform)), emb.get((p.b, 0))
        if ea is not None and eb is not None:
            sims[n] = float(np.dot(ea.astype(np.float32), eb.astype(np.float32)))

    found: list[Pair] = []
    found_sims: list[float] = []
    base = sorted(i for (i, k) in emb if k == 0)
    if discover_k > 0 and len(base) > 1:
        mat = np.stack([emb[(i, 0)] for i in base]).astype(np.float32)
        index = faiss.IndexFlatIP(mat.shape[1])
        index.add(mat)
        d, nn = index.search(mat, min(len(base), discover_k + 1))
        known = {(p.a, p.b) for p in pairs}
        for qi, i in enumerate(base):
            for s, j in zip(d[qi], nn[qi]):
                if j < 0 or s < discover_threshold:
                    continue
                a, b = sorted((i, base[j]))
                if a == b or (a, b) in known:
                    continue
                known.add((a, b))
                found.append(Pair(a, b, "global", hamming(int(hashes[a]), int(hashes[b])), 0))
                found_sims.append(float(s))
    return sims, found, np.asarray(found_sims, dtype=np.float32), stats


def local_inliers(
    pairs: Sequence[Pair],
    paths: Sequence[str],
    store: ImageStore,
    collection: str,
    *,
    n_features: int = 1000,
    workers: int | None = None,
) -> tuple[np.ndarray, StageStats]:
    """RANSAC inlier count of ORB matches for each pair (-1 where an image could not be read)."""
    stats = StageStats()
    views = needed_views(pairs)
    feats: dict[tuple[int, int], LocalFeatures] = {}
    fn = functools.partial(_views_features, store, collection, n_features)
    for i, result in _iter_views(fn, paths, views, workers):
        stats.images_read += 1
        if isinstance(result, str):
            stats.read_errors[paths[i]] = result
            continue
        for k, f in result.items():
            feats[(i, k)] = f
    out = np.full(len(pairs), -1, dtype=np.int32)
    for n, p in enumerate(pairs):
        fa, fb = feats.get((p.a, p.transform)), feats.get((p.b, 0))
        if fa is not None and fb is not None:
            out[n] = match_inliers(fa, fb)[0]
    return out, stats
