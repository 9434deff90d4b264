"""Asset checks on ``best_selection``: the promises the report and the copies rely on.

They run in the same step as ``best_selection`` and are *blocking*: when one fails, the
copies (``deduplicated_files``) and ``image_report`` are not made for that collection. Each
check is a pure function of frames, returning the problems it found (empty when it passes).
"""

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec

EXAMPLES = 10


def every_image_once(inventory: pl.DataFrame, selection: pl.DataFrame) -> dict:
    """Every inventoried path appears exactly once in the selection, and nothing else."""
    counts = selection.group_by("path").len()
    expected = set(inventory["path"].to_list())
    present = set(counts["path"].to_list())
    return {
        k: v
        for k, v in {
            "missing": sorted(expected - present)[:EXAMPLES],
            "not_inventoried": sorted(present - expected)[:EXAMPLES],
            "duplicated": sorted(counts.filter(pl.col("len") > 1)["path"].to_list())[:EXAMPLES],
        }.items()
        if v
    }


def one_keeper_per_group(selection: pl.DataFrame) -> dict:
    """Each group has exactly one keeper (``Best``, or ``Unique`` alone), which is a member."""
    grouped = selection.filter(pl.col("group_id").is_not_null())
    stats = grouped.group_by("group_id").agg(
        n=pl.len(),
        size=pl.col("group_size").first(),
        sizes=pl.col("group_size").n_unique(),
        keepers=pl.col("status").is_in(["Best", "Unique"]).sum(),
        keeper_paths=pl.col("keeper_path").n_unique(),
        keeper_is_member=(pl.col("path") == pl.col("keeper_path").first()).any(),
        unique=(pl.col("status") == "Unique").sum(),
    )
    bad = stats.filter(
        (pl.col("keepers") != 1)
        | (pl.col("keeper_paths") != 1)
        | (pl.col("sizes") != 1)
        | (pl.col("size") != pl.col("n"))
        | ((pl.col("unique") > 0) & (pl.col("n") != 1))
        | ~pl.col("keeper_is_member")
    )
    errors_grouped = selection.filter(
        (pl.col("status") == "Error") & pl.col("group_id").is_not_null()
    )
    out = {}
    if bad.height:
        out["bad_groups"] = sorted(bad["group_id"].to_list())[:EXAMPLES]
    if errors_grouped.height:
        out["unreadable_in_group"] = sorted(errors_grouped["path"].to_list())[:EXAMPLES]
    return out


def single_collection(collection: str, inventory: pl.DataFrame, selection: pl.DataFrame) -> dict:
    """Every row and every group member belongs to this collection's inventory."""
    foreign_rows = selection.filter(pl.col("collection") != collection)
    known = inventory.select("path").unique()
    foreign_members = selection.filter(pl.col("group_id").is_not_null()).join(
        known, on="path", how="anti"
    )
    foreign_keepers = (
        selection.filter(pl.col("keeper_path").is_not_null())
        .select(pl.col("keeper_path").alias("path"))
        .join(known, on="path", how="anti")
        .rename({"path": "keeper_path"})
    )
    return {
        k: v
        for k, v in {
            "rows_of_other_collections": foreign_rows.height,
            "groups_with_foreign_members": sorted(
                set(foreign_members["group_id"].to_list())
            )[:EXAMPLES],
            "foreign_keepers": sorted(set(foreign_keepers["keeper_path"].to_list()))[:EXAMPLES],
        }.items()
        if v
    }


CHECKS = {
    "every_image_once": "Every inventoried image appears exactly once in best_selection.",
    "one_keeper_per_group": "Each group has exactly one keeper, a member of the group.",
    "no_group_mixes_collections": "No group holds images of another collection.",
}


def check_specs(asset) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(name, asset=asset, description=text, blocking=True)
        for name, text in CHECKS.items()
    ]


def selection_check_results(
    collection: str, inventory: pl.DataFrame, selection: pl.DataFrame
) -> list[AssetCheckResult]:
    problems = {
        "every_image_once": every_image_once(inventory, selection),
        "one_keeper_per_group": one_keeper_per_group(selection),
        "no_group_mixes_collections": single_collection(collection, inventory, selection),
    }
    return [
        AssetCheckResult(
            check_name=name,
            passed=not found,
            severity=AssetCheckSeverity.ERROR,
            metadata={"problems": found or {}, "rows": selection.height},
        )
        for name, found in problems.items()
    ]
