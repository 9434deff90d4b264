"""The asset graph, one partition per collection.

blob_inventory → wavelet_hashes (per shard) → color_groups → global_groups → local_groups →
best_selection (+ blocking checks) → deduplicated_files + image_report.

Each function here is wiring: it loads its inputs, calls :mod:`dedup_assets.core`, and turns
the result into a polars frame stored in DuckDB by the IO manager. Every table has a
``collection`` column holding the collection's partition key; ``wavelet_hashes`` also has
``shard``. Collection-level assets read all shards of their collection.
"""


import functools
import io
from typing import Any

import numpy as np
import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    Backoff,
    Config,
    Failure,
    Jitter,
    MetadataValue,
    MultiPartitionKey,
    Output,
    ResourceParam,
    RetryPolicy,
    asset,
)
from pydantic import Field

from . import schemas
from .checks import check_specs, selection_check_results
from .core import gallery, report
from .core.overrides import apply_overrides
from .core.analyse import ROW_VERSION
from .core.candidates import Pair, colour_scores, exact_pairs, hash_neighbour_pairs
from .core.color import ColorSignature
from .core.grouping import mean_correlation_in_groups, select_keepers
from .core.keeper import RELATION_FIELDS, KeeperPreference, group_keeper_rule
from .core.parallel import default_workers
from .core.shards import fingerprint, shard_of
from .core.store import ConfigurationError
from .core.stage1 import DEFAULT_READ_AHEAD, analyse_collection
from .core.local_features import DEFAULT_MAX_DISAGREEMENT, DEFAULT_MIN_INLIERS
from .core.verify import DEFAULT_MAX_VIEWS, global_similarities, local_inliers
from .core.embedding_cache import EmbeddingCache
from .io_manager import MATCH_DOWNSTREAM
from .metrics import Progress, Timer
from .partitions import (
    N_SHARDS,
    SHARD_KEYS,
    by_collection,
    collection_shards_partitions,
    collections_partitions,
    shard_partition_key,
)
from .resources import EmbedderResource, ImageStoreResource, OverridesResource

#: Assets that call the image store (Azure or a folder) retry transient failures; they are
#: also :func:`fail_fast`, so that a configuration error is not retried.
STORE_RETRY = RetryPolicy(
    max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


def fail_fast(fn):
    """The asset fails at once, without STORE_RETRY's retries, on a :class:`ConfigurationError`
    (a setting or a permission to fix): a ``Failure(allow_retries=False)`` whose description
    is the error's one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigurationError as exc:
            raise Failure(
                description=str(exc), metadata={"error": "configuration"}, allow_retries=False
            ) from None

    return wrapper


PARTITIONED = dict(
    partitions_def=collections_partitions,
    metadata={"partition_expr": "collection"},
    group_name="dedup",
)
#: Collection-level stages hold a whole collection in memory: dagster.yaml caps how many
#: run at once across runs (pool limit).
COLLECTION_LEVEL = dict(**PARTITIONED, pool="dedup_collection")
SHARDED = dict(
    partitions_def=collection_shards_partitions,
    metadata={"partition_expr": {"collection": "collection", "shard": "shard"}},
    group_name="dedup",
)
#: A collection-level asset reads every shard of its collection.
ALL_SHARDS = AssetIn(partition_mapping=by_collection)

PAIR_KEY = ["path_a", "path_b"]
STAGE1_MODELS = "haar-wavelet-64 (+8 variants), quality v1, colour signature"


def collection_key(context: AssetExecutionContext) -> str:
    """The collection partition key of this run (collection-level or shard partition)."""
    key = context.partition_key
    if isinstance(key, MultiPartitionKey):
        return key.keys_by_dimension["collection"]
    return key


def _inventory_size(wavelet_hashes: pl.DataFrame) -> int:
    return wavelet_hashes.height


# --------------------------------------------------------------------------- inventory


INVENTORY_BATCH = 20_000


@asset(**PARTITIONED, retry_policy=STORE_RETRY)
@fail_fast
def blob_inventory(context: AssetExecutionContext, store: ImageStoreResource) -> pl.DataFrame:
    """One row per image file of the collection (recognised by extension or content), with
    the shard that analyses it; per-shard fingerprints go to the metadata.

    The listing streams page by page into columnar batches: never all blobs as Python objects.
    """
    timer = Timer(context)
    prefix = store.resolve_collection(context.partition_key)
    image_store = store.get_store()
    frames, rows = [], []
    for b in image_store.iter_blobs(prefix):
        rows.append(
            (b.path, b.size, b.etag, b.last_modified, b.content_md5, shard_of(b.path, N_SHARDS))
        )
        if len(rows) >= INVENTORY_BATCH:
            frames.append(pl.DataFrame(rows, schema=schemas.LISTING, orient="row"))
            rows = []
            context.log.info(f"inventory: {sum(f.height for f in frames)} images so far")
    frames.append(pl.DataFrame(rows, schema=schemas.LISTING, orient="row"))
    frame = pl.concat(frames, rechunk=True).with_columns(
        collection=pl.lit(context.partition_key), prefix=pl.lit(prefix)
    )
    shards = {
        k: frame.filter(pl.col("shard") == k).select("path", "size", "etag") for k in SHARD_KEYS
    }
    timer.done(
        frame.height,
        images_read=0,
        collection_images=frame.height,
        models="none",
        prefix=prefix,
        store=image_store.describe(),
        shards=N_SHARDS,
        shard_images=MetadataValue.json({k: v.height for k, v in shards.items()}),
        shard_fingerprints=MetadataValue.json(
            {k: fingerprint(v.iter_rows()) for k, v in shards.items()}
        ),
    )
    return frame.select("collection", "prefix", *schemas.LISTING)


# --------------------------------------------------------------------------- stage 1


class HashingConfig(Config):
    workers: int = Field(default=0, description="Worker processes (0: one per core).")
    target_side: int = Field(
        default=256,
        description=(
            "Long side (px) of the reduced decode (integer factors: 1-2x this). "
            "Keep >= 256 so quality is measured at its fixed 256 px scale."
        ),
    )
    max_pixels: int = Field(
        default=150_000_000, description="Images declaring more pixels are refused (bombs)."
    )
    read_ahead: int | None = Field(
        default=None,
        description=(
            "Reads in flight per worker while it decodes (hides store latency: raise it for "
            "a remote store with high latency; 1 reads then decodes). Default: the store's "
            f"({DEFAULT_READ_AHEAD} for Azure, 1 for a local folder; raise it for a network mount)."
        ),
    )


@asset(
    **SHARDED,
    retry_policy=STORE_RETRY,
    ins={
        "blob_inventory": AssetIn(
            partition_mapping=by_collection, metadata={MATCH_DOWNSTREAM: "shard"}
        )
    },
)
@fail_fast
def wavelet_hashes(
    context: AssetExecutionContext,
    config: HashingConfig,
    store: ImageStoreResource,
    blob_inventory: pl.DataFrame,
) -> pl.DataFrame:
    """The one full read of every image of one shard (or of a range of shards of one
    collection, analysed together on one worker pool): hashes, quality, colour signature,
    decode status. Memory is bounded by the run's shards: rows become frames in chunks.
    Each shard is recorded with its own images, errors and inventory fingerprint."""
    timer = Timer(context)
    collection, shards = _stage1_shards(context)
    prefix = store.resolve_collection(collection)
    # a run of one shard reads only its rows; a range reads the collection's and keeps its own
    inventory = blob_inventory.filter(pl.col("shard").is_in(shards)).sort("path")
    paths = inventory["path"].to_list()
    workers = config.workers or default_workers()
    label = shards[0] if len(shards) == 1 else f"{shards[0]}-{shards[-1]}"
    progress = Progress(context, f"stage 1 {collection} {label}", len(paths))
    chunks, rows = [], []
    for n, row in enumerate(
        analyse_collection(
            store.get_store(),
            prefix,
            paths,
            workers=workers,
            target_side=config.target_side,
            max_pixels=config.max_pixels,
            read_ahead=config.read_ahead,
        ),
        1,
    ):
        rows.append({k: row.get(k) for k in schemas.STAGE1_ROW})
        if len(rows) >= 2000:
            chunks.append(pl.DataFrame(rows, schema=schemas.STAGE1_ROW))
            rows = []
        progress.update(n)
    chunks.append(pl.DataFrame(rows, schema=schemas.STAGE1_ROW))
    frame = (
        pl.concat(chunks)
        # the store's MD5 and the image's shard
        .join(inventory.select("path", "content_md5", "shard"), on="path", how="left")
        .with_columns(collection=pl.lit(collection))
    )
    errors = frame.filter(pl.col("status") != "ok")
    seconds = timer.done(
        frame.height,
        images_read=len(paths),
        collection_images=len(paths),
        models=STAGE1_MODELS,
        workers=workers,
        errors=errors.height,
        shards_in_run=len(shards),
        stage1_version=ROW_VERSION,
    )
    for shard in shards:  # state.py compares each shard's fingerprint with its inventory's
        mine = inventory.filter(pl.col("shard") == shard)
        errs = errors.filter(pl.col("shard") == shard)
        share = mine.height / len(paths) if paths else 1 / len(shards)
        context.add_asset_metadata(
            {
                "images": mine.height,
                "images_read": mine.height,
                "collection_images": mine.height,
                # the shard's share of the run's time, so that summing over shards adds up
                "seconds": round(seconds * share, 3),
                "errors": errs.height,
                "inventory_fingerprint": fingerprint(mine.select("path", "size", "etag").iter_rows()),
                "error_reasons": MetadataValue.json(
                    dict(errs.group_by("error_reason").len().iter_rows()) if errs.height else {}
                ),
            },
            partition_key=shard_partition_key(collection, shard),
        )
    return frame.select("collection", "shard", *schemas.STAGE1_ROW, "content_md5")


def _stage1_shards(context: AssetExecutionContext) -> tuple[str, list[str]]:
    """The collection and the shards (in key order) of a stage-1 run: one shard partition,
    or a range of them (``dedup-assets run`` joins the shards of a small collection)."""
    keys = [
        collection_shards_partitions.get_partition_key_from_str(str(k))
        for k in context.partition_keys
    ]
    collections = {k.keys_by_dimension["collection"] for k in keys}
    if len(collections) != 1:
        raise Failure(
            f"a stage-1 run analyses shards of one collection, not of {sorted(collections)}"
        )
    return collections.pop(), sorted(k.keys_by_dimension["shard"] for k in keys)


# --------------------------------------------------------------------------- pairs


class CandidateConfig(Config):
    hash_radius: int = Field(
        default=10, description="Max Hamming distance between 64-bit wavelet hashes."
    )
    max_neighbours: int = Field(
        default=16, description="Hash neighbours searched per image and per variant."
    )
    min_color_similarity: float = Field(
        default=0.6, description="Pairs below this colour similarity are dropped..."
    )
    recolour_hamming: int = Field(
        default=4,
        description=(
            "...unless their hashes lie within this many bits: the hash reads luminance "
            "structure only, so recoloured copies (hue shift, sepia, saturation) keep it; such "
            "pairs go on to the embedding and keypoint checks whatever their colour (-1: off)."
        ),
    )


def _ok_images(wavelet_hashes: pl.DataFrame) -> pl.DataFrame:
    images = wavelet_hashes.filter(pl.col("status") == "ok").sort("path")
    if "content_hash" not in images.columns or images["content_hash"].null_count():
        raise Failure(  # rows written by a version before content_hash (its column is null)
            "wavelet_hashes partitions of this collection were written by an older version of "
            "dedup_assets (no content_hash): materialise wavelet_hashes again for them"
        )
    return images


def _signatures(images: pl.DataFrame) -> list[ColorSignature]:
    return [
        ColorSignature.from_bytes(h, t, d, g)
        for h, t, d, g in images.select(
            "color_hist", "color_thumb", "dominant_colors", "is_gray"
        ).iter_rows()
    ]


def _pairs_frame(collection: str, paths: list[str], pairs: list[Pair], **scores) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "collection": [collection] * len(pairs),
            "path_a": [paths[p.a] for p in pairs],
            "path_b": [paths[p.b] for p in pairs],
            "source": [p.source for p in pairs],
            "hamming": [p.hamming for p in pairs],
            "transform": [p.transform for p in pairs],
            **scores,
        },
        schema_overrides={c: t for c, t in schemas.PAIR.items() if c != "color_similarity"},
    )


def _pairs_from_frame(frame: pl.DataFrame, index: dict[str, int]) -> list[Pair]:
    return [
        Pair(index[a], index[b], s, h, t)
        for a, b, s, h, t in frame.select(
            "path_a", "path_b", "source", "hamming", "transform"
        ).iter_rows()
    ]


@asset(**COLLECTION_LEVEL, ins={"wavelet_hashes": ALL_SHARDS})
def color_groups(
    context: AssetExecutionContext, config: CandidateConfig, wavelet_hashes: pl.DataFrame
) -> pl.DataFrame:
    """Candidate pairs (exact copies, hash neighbours incl. mirror/rotation) checked by colour."""
    timer = Timer(context)
    images = _ok_images(wavelet_hashes)
    paths = images["path"].to_list()
    exact, rep = exact_pairs(images["content_hash"].to_list())
    variants = np.array(images["hash_variants"].to_list(), dtype=np.int64).reshape(-1, 8)
    near = hash_neighbour_pairs(
        variants,
        np.flatnonzero(rep == np.arange(len(paths))),
        radius=config.hash_radius,
        max_neighbours=config.max_neighbours,
    )
    pairs = exact + near
    colour = colour_scores(pairs, _signatures(images))
    frame = _pairs_frame(
        context.partition_key,
        paths,
        pairs,
        color_similarity=colour,
        color_kept=colour >= config.min_color_similarity,
    ).with_columns(
        color_kept=pl.col("color_kept") | (pl.col("hamming") <= config.recolour_hamming)
    ).sort(PAIR_KEY)
    timer.done(
        images.height,
        images_read=0,
        collection_images=_inventory_size(wavelet_hashes),
        models="multi-index hashing (exact Hamming search, core.hash_search), colour signature",
        exact_pairs=len(exact),
        hash_pairs=len(near),
        kept_pairs=int(frame["color_kept"].sum()),
        threshold=config.min_color_similarity,
    )
    return frame


class GlobalConfig(Config):
    min_clip_similarity: float = Field(
        default=0.85, description="Cosine similarity needed between CLIP embeddings."
    )
    min_descriptor_similarity: float = Field(
        default=0.50,
        description=(
            "Cosine similarity needed with the weight-free descriptor (no CLIP weights); low on "
            "purpose: the keypoint stage decides, this only bounds its work."
        ),
    )
    discover_neighbours: int = Field(
        default=8,
        description=(
            "Embedding neighbours searched per image (and per mirror view) to discover pairs "
            "the hash missed (crops, captions, letterboxes); 0: off. Discovery embeds every "
            "readable image. Discovered pairs need the same similarity as the others."
        ),
    )
    discover_mirror: bool = Field(
        default=True, description="Also search with each image's mirror view."
    )
    rotation_neighbours: int = Field(
        default=4,
        description=(
            "Neighbours searched per image with the rotation-invariant descriptor, to discover "
            "copies turned by any angle (0: off). Such pairs go on to the keypoint check."
        ),
    )
    min_rotation_similarity: float = Field(
        default=0.93, description="Rotation-descriptor similarity needed for such a pair."
    )
    workers: int = Field(default=0, description="Decode processes (0: one per core).")
    reuse_embeddings: bool = Field(
        default=True,
        description=(
            "Keep embeddings (float16 Parquet beside the DuckDB file, <stem>_embeddings/) and "
            "reuse them for images whose content hash and model are unchanged."
        ),
    )


@asset(**COLLECTION_LEVEL, retry_policy=STORE_RETRY, ins={"wavelet_hashes": ALL_SHARDS})
@fail_fast
def global_groups(
    context: AssetExecutionContext,
    config: GlobalConfig,
    store: ImageStoreResource,
    embedder: EmbedderResource,
    io_manager: ResourceParam[Any],
    wavelet_hashes: pl.DataFrame,
    color_groups: pl.DataFrame,
) -> pl.DataFrame:
    """Pairs confirmed (and new ones discovered) by global image embeddings."""
    timer = Timer(context)
    model = embedder.get_embedder()
    info = model.info  # a fallback is logged once, by load_embedder (dagster.yaml: python_logs)
    threshold = (
        config.min_clip_similarity if info.kind == "clip" else config.min_descriptor_similarity
    )
    images = _ok_images(wavelet_hashes)
    paths = images["path"].to_list()
    index = {p: i for i, p in enumerate(paths)}
    kept = color_groups.filter(pl.col("color_kept"))
    exact = kept.filter(pl.col("source") == "exact")
    todo = _pairs_from_frame(kept.filter(pl.col("source") != "exact"), index)
    collection = store.resolve_collection(context.partition_key)
    # beside the DuckDB file (another IO manager, or a database that is no file: no cache)
    cache_root = getattr(io_manager, "embeddings_dir", None) if config.reuse_embeddings else None
    cache = EmbeddingCache(cache_root, info.cache_key(), collection) if cache_root is not None else None
    content_keys = images["content_hash"].to_list()  # None (no key): not cached
    res = global_similarities(
        todo,
        paths,
        store.get_store(),
        collection,
        model,
        hashes=images["whash"].to_numpy(),
        discover_from=range(len(paths)),
        discover_k=config.discover_neighbours,
        discover_threshold=threshold,
        discover_views=(0, 1) if config.discover_mirror else (0,),
        rotation_k=config.rotation_neighbours,
        rotation_threshold=config.min_rotation_similarity,
        workers=config.workers or default_workers(),
        cache=cache,
        content_keys=content_keys,
        shards=[shard_of(p, N_SHARDS) for p in paths],
    )
    # byte-identical pairs are already joined: a discovery of the same pair is not a new one
    exact_keys = set(exact.select(*PAIR_KEY).iter_rows())
    new = np.array([(paths[p.a], paths[p.b]) not in exact_keys for p in res.found], dtype=bool)
    res.found = [p for p, keep in zip(res.found, new) if keep]
    res.found_similarity = res.found_similarity[new] if new.size else res.found_similarity
    res.found_rotation_similarity = (
        res.found_rotation_similarity[new] if new.size else res.found_rotation_similarity
    )
    stats, found = res.stats, res.found
    for path, err in stats.read_errors.items():
        context.log.warning(f"global stage could not read {path!r}: {err}")
    found_colour = colour_scores(found, _signatures(images)) if found else np.zeros(0, np.float32)
    checked = pl.concat(
        [
            _pairs_frame(
                context.partition_key,
                paths,
                todo,
                color_similarity=kept.filter(pl.col("source") != "exact")["color_similarity"],
                global_similarity=res.similarity,
                rotation_similarity=res.rotation_similarity,
            ),
            _pairs_frame(
                context.partition_key,
                paths,
                found,
                color_similarity=found_colour,
                global_similarity=res.found_similarity,
                rotation_similarity=res.found_rotation_similarity,
            ),
        ],
        how="vertical_relaxed",
    )
    checked = checked.with_columns(
        global_kept=(pl.col("global_similarity") >= threshold)
        | (
            (pl.col("source") == "rotation")
            & (pl.col("rotation_similarity") >= config.min_rotation_similarity)
        )
    )
    frame = pl.concat(
        [
            exact.select(*checked.columns[:7]).with_columns(
                global_similarity=pl.lit(1.0, pl.Float32),
                rotation_similarity=pl.lit(1.0, pl.Float32),
                global_kept=pl.lit(True),
            ),
            checked,
        ],
        how="vertical_relaxed",
    ).with_columns(embedder=pl.lit(f"{info.kind}:{info.model}:{info.weights}"))
    frame = frame.sort(PAIR_KEY)
    timer.done(
        stats.images_read,
        images_read=stats.images_read,
        images_embedded=stats.images_embedded,
        images_reused=stats.images_cached,
        embedding_cache=str(cache.dir) if cache is not None else "off",
        collection_images=_inventory_size(wavelet_hashes),
        models=f"{info.kind}:{info.model}:{info.weights}",
        pairs_checked=len(todo),
        pairs_discovered=sum(p.source == "global" for p in found),
        pairs_discovered_rotation=sum(p.source == "rotation" for p in found),
        kept_pairs=int(frame["global_kept"].sum()),
        embedder_kind=info.kind,
        embedder_model=info.model,
        embedder_weights=info.weights,
        embedder_device=info.device,
        embedder_precision=info.precision,
        embedder_precision_cosine=info.precision_cosine if info.precision_cosine is not None else 1.0,
        embedder_fallback_reason=info.fallback_reason or "",
        threshold=threshold,
    )
    return frame


class LocalConfig(Config):
    min_inliers: int = Field(
        default=DEFAULT_MIN_INLIERS,
        description="RANSAC inliers of ORB matches needed to confirm a pair.",
    )
    max_disagreement: float = Field(
        default=DEFAULT_MAX_DISAGREEMENT,
        description=(
            "Pairs whose overlap (one image mapped onto the other by the RANSAC homography) "
            "disagrees on more than this fraction of blocks are two pictures sharing an object "
            "(a cut-out on another background), not copies: dropped. 1.0 turns the check off."
        ),
    )
    n_features: int = Field(default=1000, description="ORB keypoints per image.")
    max_views: int = Field(
        default=DEFAULT_MAX_VIEWS,
        description=(
            "Image views (~90 KB each) held in memory at once; images whose views were "
            "evicted are read again (see downloads_per_image)."
        ),
    )
    workers: int = Field(default=0, description="Processes (0: one per core).")


@asset(**COLLECTION_LEVEL, retry_policy=STORE_RETRY, ins={"wavelet_hashes": ALL_SHARDS})
@fail_fast
def local_groups(
    context: AssetExecutionContext,
    config: LocalConfig,
    store: ImageStoreResource,
    wavelet_hashes: pl.DataFrame,
    global_groups: pl.DataFrame,
) -> pl.DataFrame:
    """Pairs confirmed by keypoint matching with geometric (RANSAC) verification."""
    timer = Timer(context)
    paths = _ok_images(wavelet_hashes)["path"].to_list()
    index = {p: i for i, p in enumerate(paths)}
    kept = global_groups.filter(pl.col("global_kept"))
    exact = kept.filter(pl.col("source") == "exact")
    todo_frame = kept.filter(pl.col("source") != "exact")
    todo_pairs = _pairs_from_frame(todo_frame, index)
    relations = np.full((len(todo_pairs), len(RELATION_FIELDS)), np.nan)
    inliers, disagreement, stats = local_inliers(
        todo_pairs,
        paths,
        store.get_store(),
        store.resolve_collection(context.partition_key),
        n_features=config.n_features,
        workers=config.workers or default_workers(),
        max_views=config.max_views,
        min_inliers=config.min_inliers,
        relations=relations,
    )
    consistent = ~(disagreement > config.max_disagreement)  # NaN (not checked): consistent
    for path, err in stats.read_errors.items():
        context.log.warning(f"local stage could not read {path!r}: {err}")
    frame = pl.concat(
        [
            exact.with_columns(
                inliers=pl.lit(None, pl.Int32),
                overlap_disagreement=pl.lit(None, pl.Float32),
                local_kept=pl.lit(True),
                **{f: pl.lit(None, schemas.LOCAL_PAIRS[f]) for f in RELATION_FIELDS},
            ),
            todo_frame.with_columns(
                inliers=pl.Series(inliers, dtype=pl.Int32),
                overlap_disagreement=pl.Series(disagreement, dtype=pl.Float32, nan_to_null=True),
                local_kept=pl.Series((inliers >= config.min_inliers) & consistent),
                **{
                    f: pl.Series(relations[:, n], dtype=pl.Float64, nan_to_null=True).cast(schemas.LOCAL_PAIRS[f])
                    for n, f in enumerate(RELATION_FIELDS)
                },
            ),
        ],
        how="vertical_relaxed",
    ).sort(PAIR_KEY)
    timer.done(
        stats.images_read,
        images_read=stats.images_read,
        collection_images=_inventory_size(wavelet_hashes),
        models=f"ORB ({config.n_features} keypoints) + RANSAC homography",
        pairs_checked=todo_frame.height,
        kept_pairs=int(frame["local_kept"].sum()),
        dropped_inconsistent_overlap=int(((inliers >= config.min_inliers) & ~consistent).sum()),
        threshold=config.min_inliers,
        max_disagreement=config.max_disagreement,
    )
    return frame


# --------------------------------------------------------------------------- selection


class SelectionConfig(Config):
    prefer_folders: list[str] = Field(
        default=[],
        description="Between copies equal in content, keep one under these folders first "
        "(path prefixes, e.g. ['originals']; earlier first).",
    )
    prefer_oldest: bool = Field(
        default=True,
        description="Between copies equal in content, keep the oldest (modification time) next.",
    )


@asset(
    **COLLECTION_LEVEL,
    ins={"wavelet_hashes": ALL_SHARDS},
    check_specs=check_specs("best_selection"),
)
def best_selection(
    context: AssetExecutionContext,
    config: SelectionConfig,
    overrides: OverridesResource,
    blob_inventory: pl.DataFrame,
    wavelet_hashes: pl.DataFrame,
    local_groups: pl.DataFrame,
):
    """Final group, status (Best/Duplicate/Unique/Error) and keeper of every inventoried image.

    Analyst overrides (`dedup.overrides`) are applied here: `same_picture` adds an edge,
    `not_duplicate` keeps two images out of one group. Group ids hash the collection key and
    the group's first path, so they never repeat across collections. Blocking checks (see
    `dedup_assets.checks`) stop the copies and the report when the selection breaks a
    promise."""
    timer = Timer(context)
    images = (
        blob_inventory.select("path", "size", "last_modified")
        .join(wavelet_hashes.drop("collection", "shard"), on="path", how="left")
        .sort("path")
        .with_columns(
            status=pl.col("status").fill_null("error"),
            error_reason=pl.col("error_reason").fill_null(
                pl.when(pl.col("status").is_null()).then(pl.lit("not_analysed"))
            ),
        )
    )
    paths = images["path"].to_list()
    verified = local_groups.filter(pl.col("local_kept"))
    grouping = apply_overrides(paths, verified, overrides.load(context.partition_key))
    ok = (images["status"] == "ok").to_list()
    sel = select_keepers(
        paths,
        ok,
        images["quality_score"].fill_null(0.0).to_list(),
        (images["width"].fill_null(0) * images["height"].fill_null(0)).to_list(),
        images["size"].to_list(),
        grouping.edges,
        grouping.cannot_link,
        namespace=context.partition_key,
        keeper_rule=group_keeper_rule(
            images.select("path", "is_gray", "q_compression", "format", "last_modified"),
            verified,
            KeeperPreference(tuple(config.prefer_folders), config.prefer_oldest),
        ),
    )
    hists = report.histogram_matrix(images["color_hist"].to_list())
    frame = pl.DataFrame(
        {
            "collection": [context.partition_key] * len(paths),
            "path": paths,
            "status": sel.status,
            "group_id": sel.group_id,
            "group_size": sel.group_size,
            "keeper_path": sel.keeper,
            "keeper_reason": sel.reason,
            "quality_score": images["quality_score"],
            "avg_color_correlation": mean_correlation_in_groups(hists, sel.group_id),
            "error_reason": images["error_reason"],
            "error_message": images["error_message"],
        },
        schema_overrides={"group_size": pl.Int32},
    ).with_columns(pl.col("avg_color_correlation").fill_nan(None))
    frame = schemas.conform("best_selection", frame)  # typed even when the collection is empty
    counts = dict(frame.group_by("status").len().iter_rows())
    timer.done(
        frame.height,
        images_read=0,
        collection_images=blob_inventory.height,
        models="none",
        groups=frame.filter(pl.col("group_size") > 1)["group_id"].n_unique(),
        **{f"status_{k.lower()}": counts.get(k, 0) for k in ("Best", "Duplicate", "Unique", "Error")},
        overrides=MetadataValue.json(
            {**grouping.stats, "edges_refused_by_not_duplicate": sel.refused_edges}
        ),
    )
    yield Output(frame)
    yield from selection_check_results(context.partition_key, blob_inventory, frame)


# --------------------------------------------------------------------------- outputs


@asset(**COLLECTION_LEVEL, retry_policy=STORE_RETRY, ins={"wavelet_hashes": ALL_SHARDS})
@fail_fast
def deduplicated_files(
    context: AssetExecutionContext,
    store: ImageStoreResource,
    wavelet_hashes: pl.DataFrame,
    best_selection: pl.DataFrame,
) -> pl.DataFrame:
    """Copies into `<collection>_deduplicated/best/` (keepers and uniques) and `…/duplicates/`."""
    timer = Timer(context)
    image_store = store.get_store()
    prefix = store.resolve_collection(context.partition_key)
    todo = (
        best_selection.filter(pl.col("status") != "Error")
        .join(wavelet_hashes.select("path", "content_hash", "content_md5"), on="path")
        .with_columns(dest=report.destination_expr())
        .sort("path")
    )
    progress = Progress(context, f"copies {context.partition_key}", todo.height)
    actions = []
    for action in image_store.copy_many(
        prefix, todo.select("path", "dest", "content_hash", "content_md5").iter_rows()
    ):
        actions.append(action)
        progress.update(len(actions))
    expected = set(todo["dest"].to_list())
    stale = [
        f
        for folder in report.COPY_FOLDERS
        for f in image_store.list_outputs(prefix, folder)
        if f not in expected
    ]
    for f in stale:
        image_store.delete_output(prefix, f)
    frame = todo.select("collection", "path", "status", "dest").with_columns(
        action=pl.Series(actions, dtype=pl.String)
    )
    timer.done(
        frame.height,
        images_read=actions.count("copied"),
        collection_images=best_selection.height,
        models="none",
        copied=actions.count("copied"),
        skipped_identical=actions.count("skipped"),
        stale_removed=len(stale),
        output=image_store.output_location(prefix),
    )
    return frame


@asset(**COLLECTION_LEVEL, retry_policy=STORE_RETRY, ins={"wavelet_hashes": ALL_SHARDS})
@fail_fast
def image_report(
    context: AssetExecutionContext,
    store: ImageStoreResource,
    wavelet_hashes: pl.DataFrame,
    best_selection: pl.DataFrame,
) -> pl.DataFrame:
    """image_report.csv next to the copies: one row per inventoried image."""
    timer = Timer(context)
    image_store = store.get_store()
    prefix = store.resolve_collection(context.partition_key)
    frame = report.build_report(best_selection, wavelet_hashes)
    buf = io.BytesIO()
    frame.write_csv(buf)
    location = image_store.write_output(prefix, report.REPORT_NAME, buf.getvalue())
    timer.done(
        frame.height,
        images_read=0,
        collection_images=frame.height,
        models="none",
        report=MetadataValue.path(location),
    )
    return frame.with_columns(collection=pl.lit(context.partition_key)).select(
        "collection", *frame.columns
    )


# --------------------------------------------------------------------------- review


class GalleryConfig(Config):
    groups_per_page: int = Field(default=50, description="Groups per gallery page at most.")
    images_per_page: int = Field(default=400, description="Thumbnails per gallery page at most.")
    borderline_margin: float = Field(
        default=0.15, description="Groups whose weakest pair margin is below this are flagged."
    )
    thumb_side: int = Field(default=160, description="Long side of the thumbnails (px).")
    workers: int = Field(default=0, description="Thumbnail processes (0: one per core).")


def _stage_thresholds(context: AssetExecutionContext, pairs: pl.DataFrame) -> gallery.Thresholds:
    """The thresholds the pair stages last ran with for this partition (defaults otherwise)."""
    clip = pairs.height > 0 and "embedder" in pairs.columns and str(pairs["embedder"][0]).startswith("clip")
    defaults = {
        "color_groups": CandidateConfig().min_color_similarity,
        "global_groups": (
            GlobalConfig().min_clip_similarity if clip else GlobalConfig().min_descriptor_similarity
        ),
        "local_groups": LocalConfig().min_inliers,
    }
    meta = {}
    for name in defaults:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(name), asset_partitions=[context.partition_key]),
            limit=1,
        ).records
        meta[name] = records[0].asset_materialization.metadata if records else {}

    def value(name: str, key: str, default: float) -> float:
        return float(meta[name][key].value) if key in meta[name] else default

    return gallery.Thresholds(
        *(value(name, "threshold", default) for name, default in defaults.items()),
        value("local_groups", "max_disagreement", LocalConfig().max_disagreement),
    )


@asset(
    **COLLECTION_LEVEL,
    retry_policy=STORE_RETRY,
    ins={
        "wavelet_hashes": AssetIn(
            partition_mapping=by_collection, metadata={"columns": list(gallery.IMAGE_COLUMNS)}
        )
    },
    deps=["deduplicated_files"],
)
@fail_fast
def review_gallery(
    context: AssetExecutionContext,
    config: GalleryConfig,
    store: ImageStoreResource,
    overrides: OverridesResource,
    wavelet_hashes: pl.DataFrame,
    local_groups: pl.DataFrame,
    best_selection: pl.DataFrame,
) -> pl.DataFrame:
    """Static HTML gallery of the duplicate groups in `<collection>_deduplicated/gallery/`."""
    timer = Timer(context)
    image_store = store.get_store()
    prefix = store.resolve_collection(context.partition_key)
    thresholds = _stage_thresholds(context, local_groups)
    options = gallery.GalleryOptions(
        groups_per_page=config.groups_per_page,
        images_per_page=config.images_per_page,
        borderline_margin=config.borderline_margin,
        thumb_side=config.thumb_side,
        workers=config.workers or default_workers(),
        title=prefix,
    )
    data = gallery.prepare(
        best_selection,
        wavelet_hashes,
        local_groups,
        overrides.load(context.partition_key),
        thresholds,
        options,
    )
    result = gallery.write_gallery(
        image_store, prefix, data, thresholds=thresholds, options=options, log=context.log.info
    )
    preview = gallery.preview_markdown(
        data, result.index, lambda path: gallery.tiny_data_uri(image_store, prefix, path)
    )
    link = (
        MetadataValue.url(result.index)
        if result.index.startswith(("http://", "https://"))
        else MetadataValue.path(result.index)
    )
    timer.done(
        data.members.height,
        images_read=result.thumbnails_made + len(result.thumbnails_failed),
        collection_images=best_selection.height,
        models="none",
        gallery=link,
        preview=MetadataValue.md(preview),
        groups=data.totals["groups"],
        borderline_groups=data.totals["borderline_groups"],
        pages=result.pages,
        largest_file_bytes=result.largest_file[1],
        thumbnails_made=result.thumbnails_made,
        thumbnails_reused=result.thumbnails_cached,
        thumbnails_failed=len(result.thumbnails_failed),
    )
    return result.groups.select(
        pl.lit(context.partition_key).alias("collection"),
        "group_id",
        "rank",
        "page",
        "group_size",
        "weakest_margin",
        "borderline",
        "keeper_path",
    )


ALL_ASSETS = [
    blob_inventory,
    wavelet_hashes,
    color_groups,
    global_groups,
    local_groups,
    best_selection,
    deduplicated_files,
    image_report,
    review_gallery,
]
