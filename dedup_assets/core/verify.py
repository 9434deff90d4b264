"""Pair verification after the colour stage: global embeddings, then local keypoints.

Both stages read only the images that are still in candidate pairs, decode each of them once
per stage in worker processes, and compare ``apply_dihedral(a, transform)`` with ``b`` so that
mirrored and rotated copies are compared the right way round.
"""

from __future__ import annotations

import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import faiss
import numpy as np

from .borders import trim_uniform_borders
from .candidates import Pair
from .decode import decode_image
from .embedding_cache import ROTATION_VIEW, EmbeddingCache
from .embeddings import Embedder
from .hashing import apply_dihedral, hamming, invert_dihedral
from .keeper import RELATION_FIELDS  # per pair, what local_inliers(..., relations=) fills
from .local_features import (
    DEFAULT_MIN_INLIERS,
    LocalFeatures,
    check_gray,
    detail_spectrum,
    extract_features,
    UPSCALE_MAX_POWER,
    feature_frame,
    match_homography,
    overlap_disagreement,
    pair_relation,
    power_above,
)
from .parallel import DEFAULT_READ_AHEAD, default_workers, map_reading, ordered_map, read_ahead_chunk
from .rotation import rotation_descriptor
from .store import ImageStore

GLOBAL_SIDE = 256
LOCAL_SIDE = 512
#: the local stage decodes at this long side (DCT scaling: in [1024, 2048), or the full size
#: below) to measure detail (``detail_spectrum``: is a larger copy an upscale?), then resizes
#: to ``LOCAL_SIDE`` for the keypoints
DETAIL_SIDE = 1024

#: Up to this many vectors discovery searches exactly (faiss ``IndexFlatIP``); above, an IVF
#: index (``IndexIVFFlat``, inner product). Measured (``bench global --faiss``, 2 threads,
#: 512-d, every vector a query, build + search): 20k flat 1.5 s / IVF 0.85 s, 50k 9.5 / 4.6 s,
#: 100k 38 / 14 s; IVF recall 1.0 of the neighbours at cosine >= 0.85 (clustered vectors
#: with planted near-copies). See the README.
FLAT_MAX = 20_000
#: IVF probes per query (of ``nlist = 4 * sqrt(n)`` lists)
IVF_NPROBE = 16


def knn_index(base: np.ndarray, flat_max: int = FLAT_MAX, nprobe: int = IVF_NPROBE):
    """A faiss inner-product index over ``base`` (n, d) float32 unit rows: exact below
    ``flat_max`` rows, IVF above (``4 sqrt(n)`` lists, trained on at most 64 vectors per
    list, ``nprobe`` lists searched per query: near-duplicates sit in the same or a
    neighbouring cell)."""
    n, d = base.shape
    if n <= flat_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = base[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = min(nprobe, nlist)
    index.add(base)
    return index


def needed_views(pairs: Sequence[Pair]) -> dict[int, set[int]]:
    """Per image index, the dihedral transforms of it that pairs compare (``a`` transformed)."""
    views: dict[int, set[int]] = {}
    for p in pairs:
        views.setdefault(p.a, set()).add(p.transform)
        views.setdefault(p.b, set()).add(0)
    return views


def _views_rgb(
    store: ImageStore, collection: str, transform, item: tuple[str, tuple[int, ...]]
) -> dict[int, np.ndarray] | str:
    """Decode one image for the global stage (in a worker): its dihedral views, each through
    the embedder's ``transform`` (CLIP: resize + centre crop to the model's input, uint8),
    and its rotation descriptor.

    With a transform, a JPEG is decoded at the smallest DCT scale whose short side still covers
    the model's input (a 2 MP photo: 1/4 scale), never at full size; without one (weight-free
    descriptor) at ``GLOBAL_SIDE`` on the long side, as before. EXIF orientation is applied by
    ``decode_image`` in both cases.
    """
    path, transforms = item
    try:
        data = store.read_bytes(collection, path)
        if transform is None:
            rgb = decode_image(data, target_side=GLOBAL_SIDE).rgb
        else:
            rgb = decode_image(
                data, target_side=GLOBAL_SIDE, exact=False, cover_short_side=transform.cover_short_side
            ).rgb
    except Exception as exc:  # noqa: BLE001 - reported per image by the caller
        return f"{type(exc).__name__}: {exc}"
    rgb = trim_uniform_borders(rgb)  # letterbox bars are not content
    views: dict = {}
    for k in transforms:
        view = apply_dihedral(rgb, k)
        views[k] = transform(view) if transform is not None else np.ascontiguousarray(view)
    views["rotation"] = rotation_descriptor(np.ascontiguousarray(rgb))
    return views


def _views_features(
    store: ImageStore, collection: str, n_features: int, item: tuple[str, tuple[int, ...]]
) -> dict[int, tuple[LocalFeatures, np.ndarray, tuple[int, int]]] | str:
    """Per view: ORB features, the small gray image of the overlap check, the feature frame."""
    path, transforms = item
    try:
        img = decode_image(store.read_bytes(collection, path), target_side=DETAIL_SIDE, exact=False)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    gray = cv2.cvtColor(img.rgb, cv2.COLOR_RGB2GRAY)
    # (native long side, decoded long side, detail spectrum): the same for every view
    detail = (max(img.width, img.height), max(gray.shape), detail_spectrum(gray))
    h, w = feature_frame(gray.shape, LOCAL_SIDE)
    if (h, w) != gray.shape and h < gray.shape[0]:
        gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)
    out = {}
    for k in transforms:
        view = np.ascontiguousarray(apply_dihedral(gray, k))
        features = extract_features(view, n_features, LOCAL_SIDE)
        out[k] = (features, check_gray(view), feature_frame(view.shape, LOCAL_SIDE), detail)
    return out


@dataclass
class StageStats:
    images_read: int = 0
    read_errors: dict[str, str] = field(default_factory=dict)
    images_embedded: int = 0  # images run through the embedder this time
    images_cached: int = 0  # images whose vectors came from the embedding cache


def _iter_views(
    fn: Callable,
    extra: tuple,
    store: ImageStore,
    collection: str,
    paths: Sequence[str],
    views: dict[int, set[int]],
    workers: int | None,
):
    """``(i, fn(store, collection, *extra, (paths[i], transforms)))`` per image, on worker
    processes that read a few files ahead of their decoding."""
    order = sorted(views)
    items = [(paths[i], tuple(sorted(views[i]))) for i in order]
    return zip(order, map_reading(fn, extra, store, collection, items, workers=workers, chunk_size=4))


def global_similarities(
    pairs: Sequence[Pair],
    paths: Sequence[str],
    store: ImageStore,
    collection: str,
    embedder: Embedder,
    *,
    hashes: np.ndarray,
    discover_from: Sequence[int] = (),
    discover_k: int = 0,
    discover_threshold: float = 1.0,
    discover_views: Sequence[int] = (0, 1),
    rotation_k: int = 0,
    rotation_threshold: float = 1.0,
    workers: int | None = None,
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
    content_keys: Sequence[str] | None = None,
    shards: Sequence[str] | None = None,
) -> GlobalResult:
    """Cosine similarity of each pair's embeddings, plus pairs discovered by embedding kNN.

    Discovery embeds every image of ``discover_from`` (uniform borders trimmed), and for each
    of its ``discover_views`` (dihedral transforms: identity and mirror by default) searches
    the ``discover_k`` nearest identity embeddings (inner product on normalised vectors, exact
    faiss search up to :data:`FLAT_MAX` images, IVF above: :func:`knn_index`), proposing
    those at or above ``discover_threshold`` that are not already paired: at most
    ``discover_k`` per image and view. Every image read also gets a rotation-invariant
    descriptor (:mod:`.rotation`); its ``rotation_k`` nearest neighbours at or above
    ``rotation_threshold`` are proposed too (copies turned by any angle). A pair whose
    image cannot be read scores NaN.

    Decoding (and the embedder's per-image ``input_transform``) runs in ``workers`` processes
    while this process runs the model on the previous batch. ``cache`` with ``content_keys``
    (one per path: the content hash): images whose vectors (every view needed, and the
    rotation descriptor) are stored are neither read nor embedded; new vectors are stored
    (float16) in the file of ``shards[i]``.
    """
    stats = StageStats()
    views = needed_views(pairs)
    if discover_k > 0:
        for i in discover_from:
            views.setdefault(int(i), set()).update(discover_views)
    emb: dict[tuple[int, int], np.ndarray] = {}
    rot: dict[int, np.ndarray] = {}
    if cache is not None and content_keys is not None:
        stored = cache.load(content_keys[i] for i in views if content_keys[i])
        for i in list(views):
            entry = stored.get(content_keys[i]) if content_keys[i] else None
            if entry is not None and ROTATION_VIEW in entry and all(k in entry for k in views[i]):
                for k in views.pop(i):
                    emb[(i, k)] = entry[k]
                rot[i] = entry[ROTATION_VIEW]
                stats.images_cached += 1
    new_images: list[int] = []
    batch_keys: list[tuple[int, int]] = []
    batch_imgs: list[np.ndarray] = []
    transform = getattr(embedder, "input_transform", None)

    def flush() -> None:
        if batch_imgs:
            if transform is not None:  # uint8 model inputs made by the workers
                vecs = embedder.embed_uint8(np.stack(batch_imgs))
            else:
                vecs = embedder.embed(batch_imgs)
            for key, v in zip(batch_keys, vecs):
                emb[key] = v.astype(np.float16)
            batch_keys.clear()
            batch_imgs.clear()

    for i, result in _iter_views(_views_rgb, (transform,), store, collection, paths, views, workers):
        stats.images_read += 1
        if isinstance(result, str):
            stats.read_errors[paths[i]] = result
            continue
        rot[i] = result.pop("rotation").astype(np.float16)  # as stored: a re-run scores the same
        new_images.append(i)
        for k, img in result.items():
            batch_keys.append((i, k))
            batch_imgs.append(img)
        if len(batch_imgs) >= max(batch_size, getattr(embedder, "batch_size", 0)):
            flush()
    flush()
    stats.images_embedded = len(new_images)
    keyed = [i for i in new_images if content_keys is not None and content_keys[i]]
    if cache is not None and keyed:
        entries: dict[str, dict[int, np.ndarray]] = {content_keys[i]: {ROTATION_VIEW: rot[i]} for i in keyed}
        fresh = set(keyed)
        for (i, k), v in emb.items():
            if i in fresh:
                entries[content_keys[i]][k] = v
        cache.save(
            entries,
            {content_keys[i]: (shards[i] if shards is not None else "all") for i in keyed},
            keep=[k for k in content_keys if k],
        )

    sims = np.full(len(pairs), np.nan, dtype=np.float32)
    for n, p in enumerate(pairs):
        ea, eb = emb.get((p.a, p.transform)), emb.get((p.b, 0))
        if ea is not None and eb is not None:
            sims[n] = float(np.dot(ea.astype(np.float32), eb.astype(np.float32)))

    found: list[Pair] = []
    if discover_k > 0:
        found += _discover(emb, pairs, discover_k, discover_threshold, discover_views, "global")
    if rotation_k > 0:
        rot_emb = {(i, 0): v for i, v in rot.items()}
        found += _discover(rot_emb, list(pairs) + found, rotation_k, rotation_threshold, (0,), "rotation")
    found = [Pair(p.a, p.b, p.source, hamming(int(hashes[p.a]), int(hashes[p.b])), p.transform) for p in found]

    def cos(table: dict, a: int, ka, b: int, kb) -> float:
        ea, eb = table.get((a, ka) if ka is not None else a), table.get((b, kb) if kb is not None else b)
        if ea is None or eb is None:
            return float("nan")
        return float(np.dot(ea.astype(np.float32), eb.astype(np.float32)))

    return GlobalResult(
        similarity=sims,
        rotation_similarity=np.array([cos(rot, p.a, None, p.b, None) for p in pairs], np.float32),
        found=found,
        found_similarity=np.array([cos(emb, p.a, p.transform, p.b, 0) for p in found], np.float32),
        found_rotation_similarity=np.array([cos(rot, p.a, None, p.b, None) for p in found], np.float32),
        stats=stats,
    )


@dataclass
class GlobalResult:
    similarity: np.ndarray  # per input pair, main embedder
    rotation_similarity: np.ndarray  # per input pair, rotation-invariant descriptor
    found: list[Pair]  # discovered pairs (source "global" or "rotation")
    found_similarity: np.ndarray
    found_rotation_similarity: np.ndarray
    stats: StageStats


def _discover(
    emb: dict[tuple[int, int], np.ndarray],
    pairs: Sequence[Pair],
    k: int,
    threshold: float,
    query_views: Sequence[int],
    source: str,
) -> list[Pair]:
    """New pairs among the ``k`` nearest identity embeddings of each image's query views."""
    base = sorted(i for (i, t) in emb if t == 0)
    if len(base) < 2:
        return []
    index = knn_index(np.ascontiguousarray(np.stack([emb[(i, 0)] for i in base]), dtype=np.float32))
    known = {(p.a, p.b) for p in pairs}
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for view in query_views:
        queries = [i for i in base if (i, view) in emb]
        if not queries:
            continue
        mat = np.stack([emb[(i, view)] for i in queries]).astype(np.float32)
        d, nn = index.search(mat, min(len(base), k + 1))
        for qi, i in enumerate(queries):
            for s, j in zip(d[qi], nn[qi]):
                if j < 0 or s < threshold or base[j] == i:
                    continue
                j = base[j]
                # view(image i) ≈ image j
                key, t = ((i, j), view) if i < j else ((j, i), invert_dihedral(view))
                if key in known:
                    continue
                if key not in best or s > best[key][0]:
                    best[key] = (float(s), t)
    return [Pair(a, b, source, -1, t) for (a, b), (_, t) in sorted(best.items())]


#: views (features + overlap-check image, ~90 KB each) the local stage keeps in memory at once
DEFAULT_MAX_VIEWS = 20_000


def locality_order(pairs: Sequence[Pair]) -> list[int]:
    """Indices of ``pairs`` in an order that keeps each image's pairs close together:
    images ranked by a breadth-first walk of each connected component (components in order
    of their smallest image), pairs sorted by the later rank of their two images."""
    adj: dict[int, list[int]] = {}
    for p in pairs:
        adj.setdefault(p.a, []).append(p.b)
        adj.setdefault(p.b, []).append(p.a)
    rank: dict[int, int] = {}
    for start in sorted(adj):
        if start in rank:
            continue
        rank[start] = len(rank)
        queue = deque([start])
        while queue:
            for j in sorted(adj[queue.popleft()]):
                if j not in rank:
                    rank[j] = len(rank)
                    queue.append(j)
    return sorted(
        range(len(pairs)),
        key=lambda n: (max(rank[pairs[n].a], rank[pairs[n].b]), min(rank[pairs[n].a], rank[pairs[n].b]), n),
    )


def local_chunks(pairs: Sequence[Pair], workers: int, per_worker: int = 1) -> list[list[int]]:
    """:func:`locality_order` cut into chunks of pair indices for ``workers`` processes: one
    chunk for one worker; else about ``per_worker`` chunks per worker, each made of whole
    connected components of the pair graph where they fit, so that an image's pairs and
    therefore its view stay in one chunk (a component larger than a chunk is cut in locality
    order: the images with pairs on both sides of a cut are read in two chunks).

    One chunk per worker by default: more chunks balance the load better but read more
    (``bench pipeline``, 1,000 images, 4,154 pairs in one large component over 929 images,
    2 workers: 967 reads with 1 chunk per worker, 1,139 with 2, 1,363 with 4)."""
    order = locality_order(pairs)
    if workers <= 1 or len(order) < 2:
        return [order] if order else []
    target = -(-len(order) // (workers * per_worker))
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:
        parent[find(p.a)] = find(p.b)
    size: dict[int, int] = {}
    for p in pairs:
        size[find(p.a)] = size.get(find(p.a), 0) + 1
    chunks: list[list[int]] = [[]]
    previous = None
    for n in order:  # a component's pairs are contiguous in locality order
        component = find(pairs[n].a)
        if component != previous:  # a component starts: in this chunk if it fits
            cut = len(chunks[-1]) + size[component] > target
        else:  # a component larger than a chunk is cut
            cut = len(chunks[-1]) >= target
        if cut and chunks[-1]:
            chunks.append([])
        chunks[-1].append(n)
        previous = component
    return chunks


def _verify_chunk(
    store: ImageStore,
    collection: str,
    n_features: int,
    max_views: int,
    min_inliers: int,
    chunk: tuple[dict[int, str], list[tuple[int, int, int]]],
) -> tuple[list[int], list[float], int, dict[str, str], list[tuple | None]]:
    """Verify one chunk of pairs (in a worker): ``chunk`` is ``({image: path}, [(a, b,
    transform)])`` in locality order. Views are built as the pairs need them and kept in a
    least-recently-used cache of ``max_views`` views: pairs are taken in batches needing at
    most half of it, each batch's missing images read ahead (:func:`read_ahead_chunk`).
    Returns per pair the inliers (-1: an image unreadable) and overlap disagreement (NaN: no
    homography), then the images read, the read errors and each pair's
    :func:`pair_relations` (None: no homography)."""
    paths, todo = chunk
    out = [-1] * len(todo)
    disagree = [float("nan")] * len(todo)
    relations: list[tuple | None] = [None] * len(todo)
    errors: dict[str, str] = {}
    reads = 0
    cache: OrderedDict[tuple[int, int], tuple] = OrderedDict()
    budget = max(2, max_views // 2)
    read_ahead = getattr(store, "read_ahead", DEFAULT_READ_AHEAD)

    def run(batch: list[int]) -> None:
        nonlocal reads
        needed = needed_views([Pair(todo[n][0], todo[n][1], "", -1, todo[n][2]) for n in batch])
        missing = [
            (i, tuple(sorted(missing)))
            for i, ks in sorted(needed.items())
            if paths[i] not in errors and (missing := {k for k in ks if (i, k) not in cache})
        ]
        items = [(paths[i], ks) for i, ks in missing]
        results = read_ahead_chunk(_views_features, (n_features,), store, collection, read_ahead, items)
        for (i, _), result in zip(missing, results):
            reads += 1
            if isinstance(result, str):
                errors[paths[i]] = result
                continue
            for k, view in result.items():
                cache[(i, k)] = view
        for i, ks in needed.items():  # used now: most recent
            for k in ks:
                if (i, k) in cache:
                    cache.move_to_end((i, k))
        for n in batch:
            a, b, transform = todo[n]
            va, vb = cache.get((a, transform)), cache.get((b, 0))
            if va is None or vb is None:
                continue
            inliers, _, H = match_homography(va[0], vb[0], min_inliers=min_inliers)
            out[n] = inliers
            if H is not None:
                disagree[n] = overlap_disagreement(va[1], vb[1], H, va[2], vb[2])
                relations[n] = pair_relations(va, vb, H)
        while len(cache) > max(max_views, budget):
            cache.popitem(last=False)

    batch: list[int] = []
    batch_views: set[tuple[int, int]] = set()
    for n, (a, b, transform) in enumerate(todo):
        new = {(a, transform), (b, 0)} - batch_views
        if batch and len(batch_views) + len(new) > budget:
            run(batch)
            batch, batch_views = [], set()
            new = {(a, transform), (b, 0)}
        batch.append(n)
        batch_views |= new
    if batch:
        run(batch)
    return out, disagree, reads, errors, relations


def pair_relations(va: tuple, vb: tuple, H: np.ndarray) -> tuple[float, ...]:
    """:data:`RELATION_FIELDS` of a pair from its two views (``_views_features``) and ``H``.

    ``scale``: native pixels of ``b`` per native pixel of ``a`` (> 1: ``b`` is larger).
    ``upscale_x`` (1.0 / 0.0; NaN when it cannot be told): the larger image holds no detail
    finer than the smaller one's scale (:func:`~.local_features.power_above` below
    :data:`~.local_features.UPSCALE_MAX_POWER`).
    """
    if not 0.05 < float(np.sqrt(abs(np.linalg.det(np.asarray(H, np.float64)[:2, :2])))) < 20:
        return (float("nan"),) * len(RELATION_FIELDS)  # a degenerate homography tells nothing
    scale_f, extra_a, extra_b, added_a, added_b = pair_relation(va[1], vb[1], H, va[2], vb[2])
    (la, da, pa), (lb, db, pb) = va[3], vb[3]
    scale = scale_f * lb / la  # feature frames have the same long side
    up = [float("nan"), float("nan")]
    if scale >= 1.2 or scale <= 1 / 1.2:
        big, (lg, dg, pg), s = (1, (lb, db, pb), scale) if scale > 1 else (0, (la, da, pa), 1 / scale)
        # the smaller one's resolution in the larger one's decode, as a share of its Nyquist
        r = power_above(pg, lg / (s * dg))
        if not np.isnan(r):
            up[big] = float(r < UPSCALE_MAX_POWER)
    return (scale, extra_a, extra_b, added_a, added_b, up[0], up[1])


def local_inliers(
    pairs: Sequence[Pair],
    paths: Sequence[str],
    store: ImageStore,
    collection: str,
    *,
    n_features: int = 1000,
    workers: int | None = None,
    max_views: int = DEFAULT_MAX_VIEWS,
    min_inliers: int = DEFAULT_MIN_INLIERS,
    relations: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, StageStats]:
    """RANSAC inlier count of ORB matches for each pair (-1 where an image could not be
    read) and the overlap disagreement of the pair (``local_features.overlap_disagreement``;
    NaN where no homography was found). A pair with fewer ratio-test matches than
    ``min_inliers`` (the caller's threshold) cannot reach it: no homography is fitted, its
    inliers are 0 (:func:`.local_features.match_homography`). ``relations``, a
    ``(len(pairs), 7)`` float array, is filled with :func:`pair_relations` (columns
    :data:`RELATION_FIELDS`) where given and a homography was found.

    The pairs run on ``workers`` processes in chunks of whole connected components
    (:func:`local_chunks`), each worker reading and describing the images of its chunk once
    (:func:`_verify_chunk`); the answers do not depend on the number of workers. Memory is
    bounded by ``max_views`` views in all whatever the number of pairs (each worker keeps
    ``max_views / workers``, 1.5 x while a batch loads); a view evicted and needed again, or
    needed by two chunks, is read again (``stats.images_read`` counts every read, so
    downloads per image show it).
    """
    workers = workers or default_workers()
    stats = StageStats()
    out = np.full(len(pairs), -1, dtype=np.int32)
    disagree = np.full(len(pairs), np.nan, dtype=np.float32)
    chunks = local_chunks(pairs, workers)
    if not chunks:
        return out, disagree, stats

    def payload(chunk: list[int]) -> tuple[dict[int, str], list[tuple[int, int, int]]]:
        todo = [(pairs[n].a, pairs[n].b, pairs[n].transform) for n in chunk]
        return {i: paths[i] for a, b, _ in todo for i in (a, b)}, todo

    job = functools.partial(
        _verify_chunk,
        store,
        collection,
        n_features,
        max(2, max_views // min(workers, len(chunks))),
        min_inliers,
    )
    results = ordered_map(job, map(payload, chunks), workers=min(workers, len(chunks)), chunk_size=1)
    for chunk, (inliers, disagreement, reads, errors, rel) in zip(chunks, results):
        out[chunk] = inliers
        disagree[chunk] = disagreement
        if relations is not None:
            for n, r in zip(chunk, rel):
                if r is not None:
                    relations[n] = r
        stats.images_read += reads
        stats.read_errors.update(errors)
    return out, disagree, stats
