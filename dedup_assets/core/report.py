"""The image report (``image_report.csv``) and where each image is copied.

The first seven columns keep the names and order of the system this project replaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

REPORT_NAME = "image_report.csv"
COPY_FOLDERS = ("best", "duplicates")

LEGACY_COLUMNS = (
    "Image Path",
    "Quality Score",
    "Group ID",
    "Group Size",
    "Status",
    "Avg Color Correlation",
    "Dominant Colors",
)


def destination_expr() -> pl.Expr:
    """``best/<path>`` for keepers and unique images, ``duplicates/<path>`` for the others."""
    return (
        pl.when(pl.col("status") == "Duplicate")
        .then(pl.lit("duplicates/"))
        .otherwise(pl.lit("best/"))
        + pl.col("path")
    )


def histogram_matrix(hist_bytes: Sequence[bytes | None]) -> np.ndarray:
    """Stored colour histograms (float16 bytes) as rows of a matrix; zeros where missing."""
    size = next((len(h) // 2 for h in hist_bytes if h), 1)
    out = np.zeros((len(hist_bytes), size), dtype=np.float32)
    for i, h in enumerate(hist_bytes):
        if h:
            out[i] = np.frombuffer(h, dtype=np.float16)
    return out


def build_report(best_selection: pl.DataFrame, wavelet_hashes: pl.DataFrame) -> pl.DataFrame:
    """One row per inventoried image, sorted by path."""
    quality = wavelet_hashes.select(
        "path",
        "dominant_colors",
        "width",
        "height",
        "format",
        "file_size",
        "content_hash",
        "content_md5",
        "q_resolution",
        "q_sharpness",
        "q_exposure",
        "q_noise",
        "q_compression",
    )
    joined = best_selection.join(quality, on="path", how="left").sort("path")
    return joined.select(
        pl.col("path").alias("Image Path"),
        pl.col("quality_score").round(2).alias("Quality Score"),
        pl.col("group_id").alias("Group ID"),
        pl.col("group_size").alias("Group Size"),
        pl.col("status").alias("Status"),
        pl.col("avg_color_correlation").round(4).alias("Avg Color Correlation"),
        pl.col("dominant_colors").alias("Dominant Colors"),
        pl.col("keeper_path").alias("Keeper Path"),
        pl.col("keeper_reason").alias("Keeper Reason"),
        pl.col("error_reason").alias("Error Reason"),
        pl.col("error_message").alias("Error Message"),
        pl.col("width").alias("Width"),
        pl.col("height").alias("Height"),
        pl.col("format").alias("Format"),
        pl.col("file_size").alias("File Size"),
        pl.col("content_hash").alias("Content Hash"),
        pl.col("content_md5").alias("Content MD5"),
        *[pl.col(c).round(2).alias(c) for c in ("q_resolution", "q_sharpness", "q_exposure", "q_noise", "q_compression")],
    )
