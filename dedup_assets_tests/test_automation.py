"""Automation without a person: sensors and the rescan schedule, evaluated against a real
instance, and the runs they request executed as the daemon would (the jobs of `defs`)."""

from __future__ import annotations

import datetime
import time

import duckdb
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)
from dagster._core.instance.ref import InstanceRef
from PIL import ImageOps

from dedup_assets.assets import ALL_ASSETS
from dedup_assets.core.sample import _jpeg, load_photo
from dedup_assets.core.shards import shard_of
from dedup_assets.definitions import build_resources
from dedup_assets.jobs import JOBS
from dedup_assets.partitions import N_SHARDS
from dedup_assets.resources import LocalFolderStoreResource
from dedup_assets.sensors import (
    collection_discovery_sensor,
    dedup_progress_sensor,
    inventory_rescan_schedule,
)


def _execute(defs: Definitions, instance: DagsterInstance, requests) -> None:
    for request in requests:
        job = defs.resolve_job_def(request.job_name or "inventory_job")
        result = job.execute_in_process(
            partition_key=request.partition_key, instance=instance, raise_on_error=False
        )
        assert result.success, request


def _progress(instance):
    result = dedup_progress_sensor(build_sensor_context(instance=instance))
    return [] if isinstance(result, SkipReason) else list(result)


def test_new_collections_and_new_blobs_are_processed_without_a_person(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    (root / "alpha").mkdir(parents=True)
    astro = load_photo("astronaut")
    (root / "alpha" / "astronaut.jpg").write_bytes(_jpeg(astro))
    (root / "alpha" / "astronaut_q40.jpg").write_bytes(_jpeg(astro, quality=40))
    (root / "alpha" / "camera.jpg").write_bytes(_jpeg(load_photo("camera")))
    db = out / "results.duckdb"
    resources = build_resources(source_root=str(root), output_root=str(out), database=str(db))
    defs = Definitions(assets=ALL_ASSETS, jobs=JOBS, resources=resources)
    # an on-disk instance in tmp_path (kept for the session): schedule contexts need its ref
    home = tmp_path / "dagster"
    home.mkdir()
    _scenario(root, out, db, defs, DagsterInstance.from_ref(InstanceRef.from_dir(str(home))))


def _scenario(root, out, db, defs, instance):
    astro = load_photo("astronaut")
    store = LocalFolderStoreResource(root=str(root), output_root=str(out))

    # a new folder: the discovery sensor adds its partition and requests its inventory
    found = collection_discovery_sensor(build_sensor_context(instance=instance), store=store)
    assert [r.partition_key for r in found.run_requests] == ["alpha"]
    instance.add_dynamic_partitions("collections", ["alpha"])
    _execute(defs, instance, found.run_requests)

    # every shard is stale: stage 1 is requested for each, nothing else yet
    requests = _progress(instance)
    assert sorted(r.partition_key for r in requests) == sorted(
        f"alpha|s{i:03d}" for i in range(N_SHARDS)
    )
    assert {r.job_name for r in requests} == {"stage1_job"}
    _execute(defs, instance, requests)

    # then the collection-level stages, once
    [collection_run] = _progress(instance)
    assert (collection_run.job_name, collection_run.partition_key) == ("dedup_job", "alpha")
    _execute(defs, instance, [collection_run])
    assert _progress(instance) == []

    # a new blob in a known collection: the hourly rescan lists it, one shard is re-analysed
    (root / "alpha" / "astronaut_mirror.jpg").write_bytes(_jpeg(ImageOps.mirror(astro), quality=50))
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime.datetime(2026, 1, 1, 3)
    )
    rescan = inventory_rescan_schedule(context)
    assert [r.partition_key for r in rescan] == ["alpha"]
    _execute(defs, instance, rescan)
    [shard_run] = _progress(instance)
    assert shard_run.partition_key == f"alpha|{shard_of('astronaut_mirror.jpg', N_SHARDS)}"
    _execute(defs, instance, [shard_run])
    [collection_run] = _progress(instance)
    assert collection_run.job_name == "dedup_job"
    _execute(defs, instance, [collection_run])
    assert _progress(instance) == []

    con = duckdb.connect(str(db), read_only=True)
    statuses = dict(con.execute("select path, status from dedup.best_selection").fetchall())
    con.close()
    assert statuses == {
        "astronaut.jpg": "Best",
        "astronaut_q40.jpg": "Duplicate",
        "astronaut_mirror.jpg": "Duplicate",
        "camera.jpg": "Unique",
    }

    # a rescan that finds nothing new requests nothing more
    _execute(defs, instance, inventory_rescan_schedule(context))
    assert _progress(instance) == []


def test_nothing_is_requested_for_a_collection_a_run_or_a_backfill_is_working_on(tmp_path):
    """A queued run of one shard, or a backfill in progress, makes its collection busy: the
    progress sensor and the rescan request nothing for it (the other collection goes on);
    once that work has ended, the collection's missing runs are requested."""
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    from dedup_assets.partitions import collection_shards_partitions
    from dedup_assets.state import busy_collections

    root, out = tmp_path / "src", tmp_path / "out"
    for name in ("alpha", "beta"):
        (root / name).mkdir(parents=True)
        (root / name / "camera.jpg").write_bytes(_jpeg(load_photo("camera")))
    resources = build_resources(
        source_root=str(root), output_root=str(out), database=str(out / "results.duckdb")
    )
    defs = Definitions(assets=ALL_ASSETS, jobs=JOBS, resources=resources)
    home = tmp_path / "dagster"
    home.mkdir()
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    instance.add_dynamic_partitions("collections", ["alpha", "beta"])
    _execute(defs, instance, [RunRequest(partition_key=c) for c in ("alpha", "beta")])
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime.datetime(2026, 1, 1, 3)
    )

    def requested():
        by_collection = {}
        for r in _progress(instance):
            by_collection.setdefault(r.partition_key.split("|")[0], []).append(r.job_name)
        return by_collection

    # a stage-1 run of alpha is running (launched by a person, say)
    queued = instance.create_run_for_job(
        defs.resolve_job_def("stage1_job"),
        status=DagsterRunStatus.STARTED,
        tags=collection_shards_partitions.get_tags_for_partition_key("alpha|s001"),
    )
    assert busy_collections(instance, ["alpha", "beta"]) == {
        "alpha": f"stage1_job run {queued.run_id[:8]} for alpha|s001 is started"
    }
    assert requested() == {"beta": ["stage1_job"] * N_SHARDS}
    assert [r.partition_key for r in inventory_rescan_schedule(context)] == ["beta"]

    # it ends: every stale shard of alpha is requested
    instance.report_run_canceled(queued)
    assert busy_collections(instance, ["alpha", "beta"]) == {}
    assert requested() == {c: ["stage1_job"] * N_SHARDS for c in ("alpha", "beta")}

    # a backfill of beta (the whole graph, as the UI and `dedup-assets backfill` launch it)
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id="bf-beta",
        asset_graph=defs.resolve_asset_graph(),
        partition_names=["beta"],
        asset_selection=[a.key for a in ALL_ASSETS],
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    assert busy_collections(instance, ["alpha", "beta"]) == {
        "beta": "backfill bf-beta is in progress"
    }
    assert requested() == {"alpha": ["stage1_job"] * N_SHARDS}
    assert [r.partition_key for r in inventory_rescan_schedule(context)] == ["alpha"]
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id="bf-both",
            asset_graph=defs.resolve_asset_graph(),
            partition_names=["alpha", "beta"],
            asset_selection=[a.key for a in ALL_ASSETS],
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=None,
        )
    )
    skipped = dedup_progress_sensor(build_sensor_context(instance=instance))
    assert isinstance(skipped, SkipReason) and "bf-both" in skipped.skip_message
    assert isinstance(inventory_rescan_schedule(context), SkipReason)

    # both backfills end: the sensor takes over what is stale
    for b in instance.get_backfills():
        instance.update_backfill(b.with_status(BulkActionStatus.COMPLETED_FAILED))
    assert requested() == {c: ["stage1_job"] * N_SHARDS for c in ("alpha", "beta")}
