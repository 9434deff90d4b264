"""Everything Dagster loads: assets (with their checks), resources, jobs, sensors, schedule.

The embedded default reads collections from a local folder and keeps results in one DuckDB
file; both are set by environment variables (see README):

- ``DEDUP_STORE``: ``local`` (default) or ``azure``
- ``DEDUP_SOURCE_ROOT``: folder whose sub-folders are the collections (default ``data/collections``)
- ``DEDUP_OUTPUT_ROOT``: where ``<collection>_deduplicated/`` go (default ``data/output``)
- ``DEDUP_DUCKDB``: the DuckDB file (default ``data/dedup_assets.duckdb``)
- ``DEDUP_CLIP_MODEL`` / ``DEDUP_CLIP_PRETRAINED`` / ``DEDUP_CLIP_CHECKPOINT``: the CLIP model
- ``DEDUP_SHARDS``: shards per collection for stage 1 (default 16; see partitions.py)
- ``DEDUP_RESCAN_CRON``: when known collections are listed again (default hourly)
- Azure (``DEDUP_STORE=azure``): ``DEDUP_AZURE_CONTAINER``, ``DEDUP_AZURE_PREFIX``,
  ``DEDUP_AZURE_COLLECTIONS``, ``DEDUP_AZURE_OUTPUT_CONTAINER``, ``DEDUP_AZURE_OUTPUT_PREFIX``;
  the account from ``AZURE_STORAGE_CONNECTION_STRING``, or ``DEDUP_AZURE_ACCOUNT_URL`` with
  ``AZURE_STORAGE_KEY``, ``AZURE_STORAGE_SAS_TOKEN`` or else DefaultAzureCredential; limits
  ``DEDUP_AZURE_MAX_CONCURRENCY``, ``DEDUP_AZURE_MAX_MB_IN_FLIGHT``, ``DEDUP_AZURE_RETRY_TOTAL``,
  ``DEDUP_AZURE_RETRY_BACKOFF_S``, ``DEDUP_AZURE_RETRY_TIMEOUT_S``. Secrets are passed as ``EnvVar``, never as values.
"""

from __future__ import annotations

import os

from collections.abc import Mapping

from dagster import Definitions, EnvVar, in_process_executor
from dagster_azure.blob import (
    AzureBlobStorageDefaultCredential,
    AzureBlobStorageKeyCredential,
    AzureBlobStorageResource,
    AzureBlobStorageSASTokenCredential,
)

from .assets import ALL_ASSETS
from .io_manager import DedupDuckDBIOManager
from .jobs import JOBS
from .resources import (
    AzureBlobStoreResource,
    EmbedderResource,
    ImageStoreResource,
    LocalFolderStoreResource,
    OverridesResource,
)
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

def azure_store_from_env(
    env: Mapping[str, str] | None = None,
    *,
    container: str | None = None,
    prefix: str | None = None,
    collections: list[str] | None = None,
    output_container: str | None = None,
    output_prefix: str | None = None,
) -> AzureBlobStoreResource:
    """The Azure store configured by the documented environment variables.

    Which credential is used depends on which variables are set; their values (the secrets)
    reach the resource as ``EnvVar`` and are read only when the resource is used.
    """
    env = os.environ if env is None else env
    listed = [c for c in env.get("DEDUP_AZURE_COLLECTIONS", "").split(",") if c.strip()]
    common = dict(
        container=container or EnvVar("DEDUP_AZURE_CONTAINER"),
        prefix=env.get("DEDUP_AZURE_PREFIX", "") if prefix is None else prefix,
        collections=collections if collections is not None else (listed or None),
        output_container=output_container or env.get("DEDUP_AZURE_OUTPUT_CONTAINER") or None,
        output_prefix=(
            output_prefix if output_prefix is not None else env.get("DEDUP_AZURE_OUTPUT_PREFIX")
        ),
        max_concurrency=int(env.get("DEDUP_AZURE_MAX_CONCURRENCY", 16)),
        max_mb_in_flight=int(env.get("DEDUP_AZURE_MAX_MB_IN_FLIGHT", 256)),
        retry_total=int(env.get("DEDUP_AZURE_RETRY_TOTAL", 10)),
        retry_backoff_s=float(env.get("DEDUP_AZURE_RETRY_BACKOFF_S", 1.0)),
        retry_total_timeout_s=float(env.get("DEDUP_AZURE_RETRY_TIMEOUT_S", 300.0)),
    )
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        return AzureBlobStoreResource(
            connection_string=EnvVar("AZURE_STORAGE_CONNECTION_STRING"), **common
        )
    if env.get("AZURE_STORAGE_KEY"):
        credential = AzureBlobStorageKeyCredential(key=EnvVar("AZURE_STORAGE_KEY"))
    elif env.get("AZURE_STORAGE_SAS_TOKEN"):
        credential = AzureBlobStorageSASTokenCredential(token=EnvVar("AZURE_STORAGE_SAS_TOKEN"))
    else:
        credential = AzureBlobStorageDefaultCredential()
    return AzureBlobStoreResource(
        azure=AzureBlobStorageResource(
            account_url=EnvVar("DEDUP_AZURE_ACCOUNT_URL"), credential=credential
        ),
        **common,
    )


def store_from_env(env: Mapping[str, str] | None = None) -> ImageStoreResource:
    """``DEDUP_STORE``: ``local`` (the default) or ``azure``."""
    env = os.environ if env is None else env
    kind = env.get("DEDUP_STORE", "local").strip().lower()
    if kind == "azure":
        return azure_store_from_env(env)
    if kind != "local":
        raise ValueError(f"DEDUP_STORE must be 'local' or 'azure', not {kind!r}")
    return LocalFolderStoreResource(
        root=EnvVar("DEDUP_SOURCE_ROOT"), output_root=EnvVar("DEDUP_OUTPUT_ROOT")
    )


def build_resources(
    *,
    source_root: str | EnvVar | None = None,
    output_root: str | EnvVar | None = None,
    database: str | EnvVar = EnvVar("DEDUP_DUCKDB"),
    embedder: EmbedderResource | None = None,
    store: ImageStoreResource | None = None,
) -> dict:
    """The resources: ``store`` if given, else a local folder when ``source_root`` is given,
    else the store chosen by the environment (:func:`store_from_env`)."""
    if store is None:
        store = (
            LocalFolderStoreResource(root=source_root, output_root=output_root)
            if source_root is not None
            else store_from_env()
        )
    return {
        "store": store,
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
