"""The code location loads, with the whole graph, its partitions, job and sensor."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context, materialize
from dagster._core.instance.ref import InstanceRef
from PIL import Image

from dedup_assets import bench
from dedup_assets.assets import ALL_ASSETS, blob_inventory
from dedup_assets.cli import main
from dedup_assets.core.store import collection_slug
from dedup_assets.definitions import azure_store_from_env, build_resources, defs
from dedup_assets.resources import LocalFolderStoreResource
from dedup_assets.sensors import collection_discovery_sensor

REPO = Path(__file__).resolve().parents[1]
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


# Sphinx markup that reaches people as raw text: the UI renders descriptions as Markdown
# (single backticks are code there), argparse prints help as it is
SPHINX_MARKUP = re.compile(r":(?:mod|func|class|meth|attr|obj|exc|data):`|``")
# Markdown takes <word ...> for an HTML tag and shows nothing: `<collection>` must be in backticks
HTML_LOOKALIKE = re.compile(r"<[A-Za-z][\w-]*(?:\s[^<>`]*)?>")


def _ui_descriptions() -> tuple[dict[str, str], dict[str, str]]:
    """Every description the Dagster UI shows for this code location: rendered as Markdown
    (assets, checks, jobs, sensors, schedules, resources) and as plain text (config fields)."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    markdown, plain = {}, {}
    for key in graph.get_all_asset_keys():
        markdown[f"asset {key.to_user_string()}"] = graph.get(key).description
    for asset_def in ALL_ASSETS:
        for spec in asset_def.check_specs:
            markdown[f"check {spec.name}"] = spec.description
        schema = asset_def.op.config_schema
        fields = getattr(schema.as_field().config_type, "fields", {}) if schema else {}
        for name, field in fields.items():
            plain[f"config {asset_def.key.to_user_string()}.{name}"] = field.description
    for job in repo.get_all_jobs():
        markdown[f"job {job.name}"] = job.description
    for sensor in repo.sensor_defs:
        markdown[f"sensor {sensor.name}"] = sensor.description
    for schedule in repo.schedule_defs:
        markdown[f"schedule {schedule.name}"] = schedule.description
    azure = azure_store_from_env({"AZURE_STORAGE_CONNECTION_STRING": "x", "DEDUP_AZURE_CONTAINER": "c"})
    for name, resource in {**defs.resources, "azure store": azure}.items():
        definition = resource.get_resource_definition()
        markdown[f"resource {name}"] = definition.description
        for field_name, field in definition.config_schema.as_field().config_type.fields.items():
            plain[f"resource {name}.{field_name}"] = field.description
    return {k: v for k, v in markdown.items() if v}, {k: v for k, v in plain.items() if v}


def _cli_help(capsys) -> dict[str, str]:
    """The `--help` of `dedup-assets`, of each command and of each benchmark."""
    texts = {}
    commands = [[], ["run"], ["demo"], ["sample"], ["backfill"], ["bench"]]
    commands += [["bench", name] for name in bench.available()]
    for argv in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        assert exit_.value.code == 0
        texts[" ".join(["dedup-assets", *argv, "--help"])] = capsys.readouterr().out
    return texts


def test_descriptions_and_help_show_no_sphinx_markup_nor_swallowed_tags(capsys):
    markdown, plain = _ui_descriptions()
    cli = _cli_help(capsys)
    assert "asset review_gallery" in markdown and "resource store.root" in plain and len(cli) > 6
    assert "`<collection>_deduplicated/best/`" in markdown["asset deduplicated_files"]
    everything = {**markdown, **plain, **cli}
    assert {k: SPHINX_MARKUP.findall(v) for k, v in everything.items() if SPHINX_MARKUP.search(v)} == {}
    # outside `code`, Markdown eats <word> as a tag ("…in _deduplicated/gallery/")
    outside_code = {k: re.sub(r"`[^`]*`", "", v) for k, v in markdown.items()}
    assert {k: HTML_LOOKALIKE.findall(v) for k, v in outside_code.items() if HTML_LOOKALIKE.search(v)} == {}


def test_library_warnings_reach_the_event_log_once(tmp_path):
    """The repo's dagster.yaml hands the `dedup_assets` loggers to Dagster: what the image code
    warns about (here a symlink loop in the listing) is in the run's event log, once."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "src" / "photos" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "src" / "photos" / "a.png")
    (tmp_path / "src" / "photos" / "sub" / "loop").symlink_to("..")
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    instance.add_dynamic_partitions("collections", ["photos"])
    resources = build_resources(
        source_root=str(tmp_path / "src"), output_root=str(tmp_path / "out"),
        database=str(tmp_path / "results.duckdb"),
    )
    result = materialize([blob_inventory], partition_key="photos", resources=resources, instance=instance)
    assert result.success
    warnings = [
        e.user_message for e in instance.all_logs(result.run_id)
        if e.level == logging.WARNING and "sub/loop" in e.user_message
    ]
    assert len(warnings) == 1 and "a loop" in warnings[0]
