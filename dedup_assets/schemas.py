"""The columns and types of every table the assets write: one home for each table's schema.

The IO manager creates each table from its schema here (never from the first frame it is
given: an empty frame has no types, and a table created from one poisons every later write)
and casts each frame to it before writing. Assets build their frames with the same schemas,
and Dagster shows them as each asset's column schema.
"""

from __future__ import annotations

import polars as pl
from dagster import TableColumn, TableSchema

#: One row of a store's listing, without the partition columns.
LISTING: dict[str, pl.DataType] = {
    "path": pl.String,
    "size": pl.Int64,
    "etag": pl.String,
    "last_modified": pl.Float64,
    "content_md5": pl.String,
    "shard": pl.String,
}
INVENTORY: dict[str, pl.DataType] = {"collection": pl.String, "prefix": pl.String, **LISTING}

#: One row of stage 1 (``analyse`` returns these keys), without the partition columns.
STAGE1_ROW: dict[str, pl.DataType] = {
    "path": pl.String,
    "status": pl.String,
    "error_reason": pl.String,
    "error_message": pl.String,
    "content_hash": pl.String,
    "file_size": pl.Int64,
    "format": pl.String,
    "mode": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    "has_alpha": pl.Boolean,
    "whash": pl.Int64,
    "hash_variants": pl.List(pl.Int64),
    "quality_score": pl.Float64,
    "q_resolution": pl.Float64,
    "q_sharpness": pl.Float64,
    "q_exposure": pl.Float64,
    "q_noise": pl.Float64,
    "q_compression": pl.Float64,
    "color_hist": pl.Binary,
    "color_thumb": pl.Binary,
    "dominant_colors": pl.String,
    "is_gray": pl.Boolean,
}

STAGE1: dict[str, pl.DataType] = {
    "collection": pl.String,
    "shard": pl.String,
    **STAGE1_ROW,
    "content_md5": pl.String,
}

#: A candidate pair as the hash stage finds it; each later stage adds its own columns.
PAIR: dict[str, pl.DataType] = {
    "collection": pl.String,
    "path_a": pl.String,
    "path_b": pl.String,
    "source": pl.String,
    "hamming": pl.Int32,
    "transform": pl.Int8,
    "color_similarity": pl.Float32,
}
COLOR_PAIRS = {**PAIR, "color_kept": pl.Boolean}
GLOBAL_PAIRS = {
    **PAIR,
    "global_similarity": pl.Float32,
    "rotation_similarity": pl.Float32,
    "global_kept": pl.Boolean,
    "embedder": pl.String,
}
LOCAL_PAIRS = {
    **GLOBAL_PAIRS,
    "inliers": pl.Int32,
    "overlap_disagreement": pl.Float32,
    "local_kept": pl.Boolean,
    # how the two copies relate (``verify.pair_relations``; null where not measured)
    "scale": pl.Float32,
    "extra_a": pl.Float32,
    "extra_b": pl.Float32,
    "added_a": pl.Float32,
    "added_b": pl.Float32,
    "upscale_a": pl.Boolean,
    "upscale_b": pl.Boolean,
}

SELECTION: dict[str, pl.DataType] = {
    "collection": pl.String,
    "path": pl.String,
    "status": pl.String,
    "group_id": pl.String,
    "group_size": pl.Int32,
    "keeper_path": pl.String,
    "keeper_reason": pl.String,
    "quality_score": pl.Float64,
    "avg_color_correlation": pl.Float64,
    "error_reason": pl.String,
    "error_message": pl.String,
}

COPIES: dict[str, pl.DataType] = {
    "collection": pl.String,
    "path": pl.String,
    "status": pl.String,
    "dest": pl.String,
    "action": pl.String,
}

REPORT: dict[str, pl.DataType] = {
    "collection": pl.String,
    "Image Path": pl.String,
    "Quality Score": pl.Float64,
    "Group ID": pl.String,
    "Group Size": pl.Int32,
    "Status": pl.String,
    "Avg Color Correlation": pl.Float64,
    "Dominant Colors": pl.String,
    "Keeper Path": pl.String,
    "Keeper Reason": pl.String,
    "Error Reason": pl.String,
    "Error Message": pl.String,
    "Width": pl.Int64,
    "Height": pl.Int64,
    "Format": pl.String,
    "File Size": pl.Int64,
    "Content Hash": pl.String,
    "Content MD5": pl.String,
    "q_resolution": pl.Float64,
    "q_sharpness": pl.Float64,
    "q_exposure": pl.Float64,
    "q_noise": pl.Float64,
    "q_compression": pl.Float64,
}

GALLERY: dict[str, pl.DataType] = {
    "collection": pl.String,
    "group_id": pl.String,
    "rank": pl.UInt32,
    "page": pl.Int32,
    "group_size": pl.UInt32,
    "weakest_margin": pl.Float64,
    "borderline": pl.Boolean,
    "keeper_path": pl.String,
}

#: table (= asset name) -> its columns, in order
TABLES: dict[str, dict[str, pl.DataType]] = {
    "blob_inventory": INVENTORY,
    "wavelet_hashes": STAGE1,
    "color_groups": COLOR_PAIRS,
    "global_groups": GLOBAL_PAIRS,
    "local_groups": LOCAL_PAIRS,
    "best_selection": SELECTION,
    "deduplicated_files": COPIES,
    "image_report": REPORT,
    "review_gallery": GALLERY,
}


class SchemaMismatch(ValueError):
    """A frame does not have the columns of its table."""


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(table: str, frame: pl.DataFrame, schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """``frame`` with exactly the columns of ``table``, in order, cast to their types.

    Columns of an empty or all-null frame carry no type (polars ``Null``): they are cast too.
    A missing or extra column is a programming error, raised with both column lists."""
    schema = schema or TABLES[table]
    missing = [c for c in schema if c not in frame.columns]
    extra = [c for c in frame.columns if c not in schema]
    if missing or extra:
        raise SchemaMismatch(f"{table}: columns missing {missing}, unexpected {extra}")
    return frame.select(pl.col(c).cast(t) for c, t in schema.items())


def column_schema(table: str) -> TableSchema:
    """Dagster's column schema of ``table`` (shown in the UI as the asset's columns)."""
    return TableSchema(columns=[TableColumn(c, str(t)) for c, t in TABLES[table].items()])
