"""Discover collections in the image store and add them as partitions."""


from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, sensor

from .core.store import collection_slug
from .partitions import collections_partitions
from .resources import ImageStoreResource


@sensor(minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def collection_discovery_sensor(
    context: SensorEvaluationContext, store: ImageStoreResource
) -> SensorResult:
    """Adds a `collections` partition for every new top-level folder/prefix of the store."""
    known = set(context.instance.get_dynamic_partitions(collections_partitions.name))
    new = sorted({collection_slug(c) for c in store.get_store().list_collections()} - known)
    if new:
        context.log.info(f"new collections: {new}")
    return SensorResult(
        dynamic_partitions_requests=[collections_partitions.build_add_request(new)] if new else []
    )
