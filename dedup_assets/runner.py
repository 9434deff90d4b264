"""Materialise one collection in-process, resuming from what the instance says is done.

Three kinds of Dagster run: the inventory; stage 1 for each shard not already analysed with
an unchanged inventory (:mod:`dedup_assets.state`), so a killed run resumes where it stopped;
then the collection-level stages. Used by ``dedup-assets run`` and by the tests.
"""

from collections.abc import Callable

from dagster import DagsterInstance, materialize

from .assets import ALL_ASSETS, blob_inventory, wavelet_hashes
from .partitions import N_SHARDS, collections_partitions, shard_partition_key
from .state import collection_states


class CollectionRun:
    """The Dagster results of one collection: inventory, stale shards, later stages."""

    def __init__(self) -> None:
        self.results: list = []
        self.shards, self.resumed = N_SHARDS, 0
        self.finished = False

    @property
    def success(self) -> bool:
        return self.finished and all(r.success for r in self.results)

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.results]

    @property
    def all_events(self) -> list:
        return [e for r in self.results for e in r.all_events]

    @property
    def work_seconds(self) -> float:
        """Seconds the stages spent on the images (the ``seconds`` each materialisation
        records), without Dagster's start-up and bookkeeping between and around them."""
        return sum(
            e.materialization.metadata["seconds"].value
            for r in self.results
            for e in r.get_asset_materialization_events()
            if "seconds" in e.materialization.metadata
        )

    def asset_materializations_for_node(self, name: str) -> list:
        return [
            m
            for r in self.results
            if name in {n.name for n in r.job_def.nodes}
            for m in r.asset_materializations_for_node(name)
        ]


def materialize_collection(
    instance: DagsterInstance,
    key: str,
    resources: dict,
    *,
    op_config: dict | None = None,
    verbose: bool = False,
    say: Callable[[str], None] = lambda message: None,
    assets: list | None = None,
) -> CollectionRun:
    """Materialise every asset of collection ``key`` (added as a partition if new)."""
    assets = assets or ALL_ASSETS
    op_config = op_config or {}
    if not instance.has_dynamic_partition(collections_partitions.name, key):
        instance.add_dynamic_partitions(collections_partitions.name, [key])

    def run(selection, partition_key):
        names = {a.key.path[-1] for a in selection}
        config = {
            "ops": {op: {"config": c} for op, c in op_config.items() if op in names},
            "loggers": {"console": {"config": {"log_level": "INFO" if verbose else "WARNING"}}},
        }
        return materialize(
            assets,
            selection=selection,
            partition_key=partition_key,
            resources=resources,
            instance=instance,
            run_config=config,
            raise_on_error=False,
        )

    out = CollectionRun()
    first = run([blob_inventory], key)
    out.results.append(first)
    if not first.success:
        return out
    stale = collection_states(instance, [key])[key].stale_shards
    out.resumed = N_SHARDS - len(stale)
    if out.resumed:
        say(f"stage 1: {out.resumed} of {N_SHARDS} shards already analysed, skipped")
    for n, shard in enumerate(stale, out.resumed + 1):
        result = run([wavelet_hashes], shard_partition_key(key, shard))
        out.results.append(result)
        if not result.success:
            return out
        say(f"stage 1: shard {shard} analysed ({n}/{N_SHARDS})")
    later = [a for a in assets if a.key not in (blob_inventory.key, wavelet_hashes.key)]
    out.results.append(run(later, key))
    out.finished = True
    return out
