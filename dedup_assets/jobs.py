"""Jobs: one per partitioning of the graph (Dagster jobs cannot mix partitions definitions).

A whole collection is ``inventory_job`` → ``stage1_job`` for each shard → ``dedup_job``;
the sensors chain them, and an asset backfill from the UI (or ``dedup-assets backfill``)
does all three for the collections picked.
"""

from dagster import define_asset_job

inventory_job = define_asset_job(
    "inventory_job",
    selection=["blob_inventory"],
    description="List a collection: one row per image, with its shard.",
)
stage1_job = define_asset_job(
    "stage1_job",
    selection=["wavelet_hashes"],
    description="Stage 1 (the one full read) for one shard of a collection.",
)
dedup_job = define_asset_job(
    "dedup_job",
    selection=[
        "color_groups",
        "global_groups",
        "local_groups",
        "best_selection",
        "deduplicated_files",
        "image_report",
        "review_gallery",
    ],
    description="Everything after stage 1 for one collection: pairs, groups, keepers, copies, report.",
)
JOBS = [inventory_job, stage1_job, dedup_job]
