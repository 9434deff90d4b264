"""The code location loads, with the whole graph, its partitions, job and sensor."""

from __future__ import annotations

from dagster import DagsterInstance, build_sensor_context

from dedup_assets.core.store import collection_slug
from dedup_assets.definitions import defs
from dedup_assets.resources import LocalFolderStoreResource
from dedup_assets.sensors import collection_discovery_sensor

STAGES = [
    "blob_inventory",
    "wavelet_hashes",
    "color_groups",
    "global_groups",
    "local_groups",
    "best_selection",
    "deduplicated_files",
    "image_report",
    "review_gallery",
]


def test_definitions_load():
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == set(STAGES)
    graph = repo.asset_graph
    for key in graph.get_all_asset_keys():
        partitions = graph.get(key).partitions_def
        assert partitions is not None and partitions.name == "collections"
    assert defs.resolve_job_def("dedup_job") is not None
    assert defs.resolve_sensor_def("collection_discovery_sensor") is not None


def test_discovery_sensor_adds_collection_partitions(tmp_path):
    for name in ("holiday 2024", "scans", "scans_deduplicated"):
        (tmp_path / name).mkdir()
    instance = DagsterInstance.ephemeral()
    store = LocalFolderStoreResource(root=str(tmp_path))
    result = collection_discovery_sensor(build_sensor_context(instance=instance), store=store)
    [request] = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == sorted(
        [collection_slug("holiday 2024"), "scans"]
    )
    instance.add_dynamic_partitions("collections", list(request.partition_keys))
    again = collection_discovery_sensor(build_sensor_context(instance=instance), store=store)
    assert not again.dynamic_partitions_requests
