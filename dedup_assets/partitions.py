"""Partitions: collections (dynamic), and shards of a collection for the per-image stage.

- ``collections``: one dynamic partition per collection (a folder or blob prefix), added by
  the discovery sensor or the CLI. Keys are safe slugs
  (:func:`dedup_assets.core.store.collection_slug`); the real prefix is resolved from the
  store and recorded in the ``prefix`` column of ``blob_inventory``.
- ``collection_shards``: collection × shard (``s000`` …), for ``wavelet_hashes`` only, so a
  3M-image collection is many resumable runs. Keys look like ``holidays|s007``. The number
  of shards is ``DEDUP_SHARDS`` (default 16), read when the code location loads; keep
  collections × shards far below 100k.
"""

import os
import warnings

from dagster import (
    BetaWarning,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    StaticPartitionsDefinition,
)

from .core.shards import shard_keys

N_SHARDS = int(os.environ.get("DEDUP_SHARDS") or 16)
SHARD_KEYS = shard_keys(N_SHARDS)

collections_partitions = DynamicPartitionsDefinition(name="collections")
shard_partitions = StaticPartitionsDefinition(SHARD_KEYS)
collection_shards_partitions = MultiPartitionsDefinition(
    {"collection": collections_partitions, "shard": shard_partitions}
)

#: collection ↔ all shards of that collection (both directions).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)
    by_collection = MultiToSingleDimensionPartitionMapping(partition_dimension_name="collection")


def shard_partition_key(collection: str, shard: str) -> MultiPartitionKey:
    return MultiPartitionKey({"collection": collection, "shard": shard})
