"""What is done and what is stale, read from the Dagster instance only (never from DuckDB).

A shard of a collection is *stale* when it was never analysed, when the fingerprint of its
inventory (paths, sizes, etags; recorded by ``blob_inventory`` per shard) differs from the one
``wavelet_hashes`` recorded when it analysed the shard, or when it was analysed by another
version of the stage-1 row (``analyse.ROW_VERSION``, recorded as ``stage1_version``). A
collection's later stages are *stale* when some shard was analysed after its last
``image_report``. The CLI uses this to resume after a crash; the automation sensor uses it to
request exactly the missing runs.

A collection is *busy* (:func:`busy_collections`) while a run of one of its partitions is
queued or running, whoever launched it, or while a backfill that targets it is in progress:
the automation requests nothing for a busy collection, since that work will change what is
stale. Backfills are read with ``DagsterInstance.get_backfills`` (the most recent ones, their
status compared by value: Dagster exports no public type for them). A tick reads this
before its requests are launched: a backfill launched in between can still overlap that one
tick's requests.
"""

from dataclasses import dataclass, field

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    MultiPartitionKey,
    RunsFilter,
)

from .core.analyse import ROW_VERSION
from .partitions import SHARD_KEYS, shard_partition_key

INVENTORY = AssetKey("blob_inventory")
STAGE1 = AssetKey("wavelet_hashes")
LAST = AssetKey("image_report")


def _latest(instance: DagsterInstance, key: AssetKey, partitions: set[str] | None = None) -> dict:
    """partition key -> latest materialisation record."""
    ids = instance.get_latest_storage_id_by_partition(
        key, DagsterEventType.ASSET_MATERIALIZATION, partitions
    )
    if not ids:
        return {}
    out = {}
    storage_ids = sorted(ids.values())
    for i in range(0, len(storage_ids), 1000):
        chunk = storage_ids[i : i + 1000]
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
        )
        out.update({r.partition_key: r for r in result.records})
    return out


def _meta(record, name: str):
    value = record.asset_materialization.metadata.get(name)
    return getattr(value, "value", value)


@dataclass
class CollectionState:
    collection: str
    inventoried: bool = False
    images: int = 0
    stale_shards: list[str] = field(default_factory=list)
    shard_fingerprints: dict[str, str] = field(default_factory=dict)
    shard_images: dict[str, int] = field(default_factory=dict)
    last_shard_storage_id: int = 0
    report_storage_id: int = 0

    @property
    def needs_collection_run(self) -> bool:
        return (
            self.inventoried
            and not self.stale_shards
            and self.report_storage_id < self.last_shard_storage_id
        )


def collection_states(instance: DagsterInstance, collections: list[str]) -> dict[str, CollectionState]:
    """The state of each collection partition."""
    wanted = set(collections)
    inventories = _latest(instance, INVENTORY, wanted)
    shard_keys = {str(shard_partition_key(c, s)) for c in inventories for s in SHARD_KEYS}
    shards = _latest(instance, STAGE1, shard_keys) if shard_keys else {}
    reports = _latest(instance, LAST, wanted)
    states = {}
    for c in collections:
        state = states[c] = CollectionState(c)
        inventory = inventories.get(c)
        if inventory is None:
            continue
        state.inventoried = True
        state.images = int(_meta(inventory, "images") or 0)
        fingerprints = _meta(inventory, "shard_fingerprints") or {}
        state.shard_fingerprints = dict(fingerprints)
        state.shard_images = dict(_meta(inventory, "shard_images") or {})
        for s in SHARD_KEYS:
            record = shards.get(str(shard_partition_key(c, s)))
            if record is None or fingerprints.get(s) is None:
                state.stale_shards.append(s)
                continue
            if (
                _meta(record, "inventory_fingerprint") != fingerprints[s]
                or _meta(record, "stage1_version") != ROW_VERSION
            ):
                state.stale_shards.append(s)
            state.last_shard_storage_id = max(state.last_shard_storage_id, record.storage_id)
        if c in reports:
            state.report_storage_id = reports[c].storage_id
    return states


#: Runs that will still do work: queued, starting, running (or suspended), being cancelled.
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.SUSPENDED,
    DagsterRunStatus.CANCELING,
]
#: Backfills that may still launch runs, or are cancelling theirs.
#: backfill statuses (``BulkActionStatus`` values) whose runs may still be launched or running
BACKFILL_IN_PROGRESS = frozenset({"REQUESTED", "CANCELING", "FAILING"})
#: backfills read per tick, newest first: one in progress is among the recent ones
RECENT_BACKFILLS = 200


def _collection_of(partition_key: str) -> str:
    """The collection of a ``collections`` or ``collection_shards`` partition key."""
    if isinstance(partition_key, MultiPartitionKey):
        return partition_key.keys_by_dimension["collection"]
    return partition_key.split("|", 1)[0]  # "holidays|s007": dimensions in name order


def busy_collections(instance: DagsterInstance, collections: list[str]) -> dict[str, str]:
    """collection -> why it is busy (a run in flight, a backfill in progress), for the
    collections of ``collections`` that are."""
    wanted = set(collections)
    busy: dict[str, str] = {}
    for backfill in instance.get_backfills(limit=RECENT_BACKFILLS):
        if backfill.status.value not in BACKFILL_IN_PROGRESS:
            continue
        why = f"backfill {backfill.backfill_id} is in progress"
        if backfill.partition_names is not None:  # a job backfill
            targeted = {_collection_of(k) for k in backfill.partition_names}
        elif backfill.asset_backfill_data is not None:  # an asset backfill (UI, CLI)
            targeted = {
                _collection_of(p.partition_key)
                for p in backfill.asset_backfill_data.target_subset.iterate_asset_partitions()
                if p.partition_key is not None
            }
        else:  # stored in a form this reader does not know: assume it targets everything
            targeted = wanted
        for c in sorted(targeted & wanted):
            busy.setdefault(c, why)
    for run in instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT)):
        partition = run.tags.get("dagster/partition")
        if partition is None:
            continue
        c = run.tags.get("dagster/partition/collection") or _collection_of(partition)
        if c in wanted:
            status = run.status.value.lower()
            busy.setdefault(c, f"{run.job_name} run {run.run_id[:8]} for {partition} is {status}")
    return busy
