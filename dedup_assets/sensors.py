"""Automation: collections and new blobs are processed without a person.

- ``collection_discovery_sensor`` lists the store's top level, adds a ``collections``
  partition for every new collection and requests its first inventory.
- ``inventory_rescan_schedule`` re-lists every known collection (hourly by default), so new,
  changed or deleted blobs reach ``blob_inventory`` and its per-shard fingerprints.
- ``dedup_progress_sensor`` reads only the Dagster instance (see :mod:`dedup_assets.state`):
  it requests stage 1 for every shard whose inventory changed (only those shards), then the
  collection-level stages once no shard is stale. Run keys include the shard fingerprint
  or the latest shard materialisation, so nothing is requested twice.

Neither the progress sensor nor the rescan requests anything for a *busy* collection (a run
of it queued or running, or a backfill of it in progress; :func:`.state.busy_collections`):
that work is left to finish, and the next tick sees what it changed. So a backfill from the
UI or ``dedup-assets backfill`` runs each job once per partition, with no automation run
beside it, and automation alone starts one chain per new collection: its inventory, stage 1
for each shard, then ``dedup_job``.
"""

import os

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from .core.store import collection_slug
from .jobs import dedup_job, inventory_job, stage1_job
from .partitions import collections_partitions, shard_partition_key
from .resources import ImageStoreResource
from .state import busy_collections, collection_states

#: ``DEDUP_AUTOMATION=off`` starts the sensors and the schedule stopped (turn them on in the UI).
_ON = os.environ.get("DEDUP_AUTOMATION", "on").lower() not in ("off", "0", "false", "no")
SENSOR_STATUS = DefaultSensorStatus.RUNNING if _ON else DefaultSensorStatus.STOPPED
SCHEDULE_STATUS = DefaultScheduleStatus.RUNNING if _ON else DefaultScheduleStatus.STOPPED


@sensor(
    minimum_interval_seconds=60,
    default_status=SENSOR_STATUS,
    job=inventory_job,
)
def collection_discovery_sensor(
    context: SensorEvaluationContext, store: ImageStoreResource
) -> SensorResult:
    """Adds a `collections` partition for every new top-level folder/prefix of the store and
    requests its inventory."""
    known = set(context.instance.get_dynamic_partitions(collections_partitions.name))
    new = sorted({collection_slug(c) for c in store.get_store().list_collections()} - known)
    if new:
        context.log.info(f"new collections: {new}")
    return SensorResult(
        run_requests=[RunRequest(partition_key=c, run_key=f"inventory:{c}") for c in new],
        dynamic_partitions_requests=[collections_partitions.build_add_request(new)] if new else [],
    )


@schedule(
    cron_schedule=os.environ.get("DEDUP_RESCAN_CRON", "0 * * * *"),
    job=inventory_job,
    default_status=SCHEDULE_STATUS,
)
def inventory_rescan_schedule(context: ScheduleEvaluationContext):
    """Re-lists every known collection so new or changed blobs are found."""
    collections = context.instance.get_dynamic_partitions(collections_partitions.name)
    if not collections:
        return SkipReason("no collections yet")
    busy = busy_collections(context.instance, list(collections))
    for c, why in busy.items():
        context.log.info(f"{c} not listed again now: {why}")
    stamp = context.scheduled_execution_time.isoformat()
    requests = [
        RunRequest(partition_key=c, run_key=f"rescan:{c}:{stamp}")
        for c in collections
        if c not in busy
    ]
    return requests or SkipReason(f"every collection is busy: {_reasons(busy)}")


@sensor(
    minimum_interval_seconds=30,
    default_status=SENSOR_STATUS,
    jobs=[stage1_job, dedup_job],
)
def dedup_progress_sensor(context: SensorEvaluationContext):
    """Requests stage 1 for stale shards, then the collection-level stages, for every
    collection that is not busy."""
    collections = list(context.instance.get_dynamic_partitions(collections_partitions.name))
    busy = busy_collections(context.instance, collections)
    for c, why in busy.items():
        context.log.info(f"{c}: nothing requested while {why}")
    requests = []
    for c, state in collection_states(context.instance, collections).items():
        if not state.inventoried or c in busy:
            continue
        for s in state.stale_shards:
            requests.append(
                RunRequest(
                    job_name=stage1_job.name,
                    partition_key=shard_partition_key(c, s),
                    run_key=f"stage1:{c}|{s}:{state.shard_fingerprints.get(s)}",
                )
            )
        if state.needs_collection_run:
            requests.append(
                RunRequest(
                    job_name=dedup_job.name,
                    partition_key=c,
                    run_key=f"collection:{c}:{state.last_shard_storage_id}",
                )
            )
    if not requests:
        return SkipReason(
            "every collection is up to date" + (f" or busy: {_reasons(busy)}" if busy else "")
        )
    return requests


def _reasons(busy: dict[str, str]) -> str:
    return "; ".join(f"{c} ({why})" for c, why in sorted(busy.items()))
