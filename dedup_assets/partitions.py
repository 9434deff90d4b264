"""Partitions: one dynamic partition per collection (a folder or blob prefix).

Partition keys are safe slugs (:func:`dedup_assets.core.store.collection_slug`); the real
prefix is resolved from the store and recorded in the ``blob_inventory`` table.
"""

from dagster import DynamicPartitionsDefinition

collections_partitions = DynamicPartitionsDefinition(name="collections")
