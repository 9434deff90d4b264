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
        if key.to_user_string() == "wavelet_hashes":
            dims = {d.name: d.partitions_def for d in partitions.partitions_defs}
            assert dims["collection"].name == "collections"
            assert dims["shard"].get_partition_keys()[0] == "s000"
        else:
            assert partitions is not None and partitions.name == "collections"
    for job in ("inventory_job", "stage1_job", "dedup_job"):
        assert defs.resolve_job_def(job) is not None
    assert defs.resolve_sensor_def("collection_discovery_sensor") is not None
    assert defs.resolve_sensor_def("dedup_progress_sensor") is not None
    assert defs.resolve_schedule_def("inventory_rescan_schedule") is not None
    checks = {k.name for k in graph.asset_check_keys}
    assert checks == {"every_image_once", "one_keeper_per_group", "no_group_mixes_collections"}


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
    assert sorted(r.partition_key for r in result.run_requests) == sorted(request.partition_keys)
    instance.add_dynamic_partitions("collections", list(request.partition_keys))
    again = collection_discovery_sensor(build_sensor_context(instance=instance), store=store)
    assert not again.dynamic_partitions_requests
