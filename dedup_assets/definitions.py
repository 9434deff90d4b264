"""Everything Dagster loads: assets (with their checks), resources, jobs, sensors, schedule.

The embedded default reads collections from a local folder and keeps results in one DuckDB
file; both are set by environment variables (see README):

- ``DEDUP_SOURCE_ROOT``: folder whose sub-folders are the collections (default ``data/collections``)
- ``DEDUP_OUTPUT_ROOT``: where ``<collection>_deduplicated/`` go (default ``data/output``)
- ``DEDUP_DUCKDB``: the DuckDB file (default ``data/dedup_assets.duckdb``)
- ``DEDUP_CLIP_MODEL`` / ``DEDUP_CLIP_PRETRAINED`` / ``DEDUP_CLIP_CHECKPOINT``: the CLIP model
- ``DEDUP_SHARDS``: shards per collection for stage 1 (default 16; see partitions.py)
- ``DEDUP_RESCAN_CRON``: when known collections are listed again (default hourly)
"""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from .assets import ALL_ASSETS
from .io_manager import DedupDuckDBIOManager
from .jobs import JOBS
from .resources import EmbedderResource, LocalFolderStoreResource, OverridesResource
from .sensors import collection_discovery_sensor, dedup_progress_sensor, inventory_rescan_schedule

DEFAULTS = {
    "DEDUP_SOURCE_ROOT": "data/collections",
    "DEDUP_OUTPUT_ROOT": "data/output",
    "DEDUP_DUCKDB": "data/dedup_assets.duckdb",
    "DEDUP_CLIP_MODEL": "ViT-B-32",
    "DEDUP_CLIP_PRETRAINED": "openai",
}
for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)

def build_resources(
    *,
    source_root: str | EnvVar = EnvVar("DEDUP_SOURCE_ROOT"),
    output_root: str | EnvVar = EnvVar("DEDUP_OUTPUT_ROOT"),
    database: str | EnvVar = EnvVar("DEDUP_DUCKDB"),
    embedder: EmbedderResource | None = None,
) -> dict:
    """The resources of the embedded default; tests and the CLI pass their own paths."""
    return {
        "store": LocalFolderStoreResource(root=source_root, output_root=output_root),
        "io_manager": DedupDuckDBIOManager(database=database, schema="dedup"),
        "overrides": OverridesResource(database=database, schema_name="dedup"),
        "embedder": embedder
        or EmbedderResource(
            model_name=EnvVar("DEDUP_CLIP_MODEL"),
            pretrained=EnvVar("DEDUP_CLIP_PRETRAINED"),
            checkpoint_path=os.environ.get("DEDUP_CLIP_CHECKPOINT") or None,
        ),
    }


defs = Definitions(
    assets=ALL_ASSETS,
    jobs=JOBS,
    sensors=[collection_discovery_sensor, dedup_progress_sensor],
    schedules=[inventory_rescan_schedule],
    resources=build_resources(),
    executor=in_process_executor,
)
