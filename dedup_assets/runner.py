"""Materialise one collection in-process, resuming from what the instance says is done.

Three kinds of Dagster run: the inventory; stage 1 for the shards not already analysed with
an unchanged inventory (:mod:`dedup_assets.state`), so a killed run resumes where it stopped;
then the collection-level stages. Used by ``dedup-assets run`` and by the tests.

Stage 1 runs consecutive stale shards together, as one Dagster run over a range of shard
partitions, while they hold at most ``DEDUP_STAGE1_RUN_IMAGES`` images (default 5,000; a
larger shard runs alone): a small collection pays for one run, not one per shard, and a
large one still resumes shard by shard. Each shard of such a run is recorded as its own
materialisation, with its own inventory fingerprint.
"""

import os
from collections.abc import Callable, Mapping

from dagster import DagsterInstance, materialize

from .assets import ALL_ASSETS, blob_inventory, wavelet_hashes
from .partitions import N_SHARDS, SHARD_KEYS, collections_partitions, shard_partition_key
from .state import collection_states

#: Images one stage-1 run may cover when it takes several shards (0: one run per shard).
STAGE1_RUN_IMAGES = int(os.environ.get("DEDUP_STAGE1_RUN_IMAGES") or 5000)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def stage1_batches(stale: list[str], shard_images: Mapping[str, int], limit: int) -> list[list[str]]:
    """The stale shards as runs: neighbours in shard order (a run is a partition range) are
    joined while together they hold at most ``limit`` images; ``limit`` 0: one per shard."""
    order = {s: i for i, s in enumerate(SHARD_KEYS)}
    batches: list[list[str]] = []
    images = 0
    for shard in sorted(stale, key=order.__getitem__):
        n = int(shard_images.get(shard) or 0)
        last = batches[-1] if batches else None
        if (
            last is not None
            and limit > 0
            and order[shard] == order[last[-1]] + 1
            and images + n <= limit
        ):
            last.append(shard)
            images += n
        else:
            batches.append([shard])
            images = n
    return batches


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

    def run(selection, partition_key=None, tags=None):
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
            tags=tags,
        )

    out = CollectionRun()
    first = run([blob_inventory], key)
    out.results.append(first)
    if not first.success:
        return out
    state = collection_states(instance, [key])[key]
    stale = state.stale_shards
    out.resumed = n = N_SHARDS - len(stale)
    if out.resumed:
        say(f"stage 1: {out.resumed} of {N_SHARDS} shards already analysed, skipped")
    for batch in stage1_batches(stale, state.shard_images, STAGE1_RUN_IMAGES):
        first_key, last_key = shard_partition_key(key, batch[0]), shard_partition_key(key, batch[-1])
        if len(batch) == 1:
            result = run([wavelet_hashes], first_key)
        else:
            result = run(
                [wavelet_hashes],
                tags={RANGE_START_TAG: str(first_key), RANGE_END_TAG: str(last_key)},
            )
        out.results.append(result)
        if not result.success:
            return out
        n += len(batch)
        what = f"shard {batch[0]}" if len(batch) == 1 else f"shards {batch[0]}-{batch[-1]}"
        say(f"stage 1: {what} analysed ({n}/{N_SHARDS})")
    later = [a for a in assets if a.key not in (blob_inventory.key, wavelet_hashes.key)]
    if later:
        out.results.append(run(later, key))
    out.finished = True
    return out
