"""The whole asset graph, materialised on a generated collection (no network, no ../shared)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance

from dedup_assets.assets import ALL_ASSETS
from dedup_assets.cli import main, report_path
from dedup_assets.core.report import LEGACY_COLUMNS
from dedup_assets.core.sample import make_sample_collection
from dedup_assets.definitions import build_resources
from dedup_assets.runner import materialize_collection

COLLECTION = "sample-photos"


def _read_report(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames[: len(LEGACY_COLUMNS)]) == LEGACY_COLUMNS
        return list(reader)


def _groups(rows: list[dict]) -> set[frozenset[str]]:
    by_group: dict[str, set[str]] = {}
    for r in rows:
        if r["Status"] in ("Best", "Duplicate"):
            by_group.setdefault(r["Group ID"], set()).add(r["Image Path"])
    return {frozenset(g) for g in by_group.values()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("src")
    truth = make_sample_collection(root / COLLECTION)
    return root / COLLECTION, truth


@pytest.fixture(scope="module")
def pipeline_run(sample, tmp_path_factory):
    """Materialise the full graph once with Dagster's materialize() into a temp instance."""
    source, truth = sample
    out = tmp_path_factory.mktemp("out")
    instance = DagsterInstance.ephemeral()
    resources = build_resources(
        source_root=str(source.parent), output_root=str(out), database=str(out / "dedup_assets.duckdb")
    )

    def run():
        result = materialize_collection(instance, COLLECTION, resources)
        assert result.success
        return result

    return run, out, truth, source


def test_full_graph_groups_keepers_report_and_copies(pipeline_run):
    run, out, truth, source = pipeline_run
    result = run()
    report = out / f"{COLLECTION}_deduplicated" / "image_report.csv"
    rows = _read_report(report)

    # every image of the folder exactly once; the .txt and ground_truth.json are not images
    files = sorted(
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.is_file() and p.suffix not in (".txt", ".json")
    )
    assert sorted(r["Image Path"] for r in rows) == files

    by_path = {r["Image Path"]: r for r in rows}
    assert {p for p, r in by_path.items() if r["Status"] == "Error"} == set(truth["unreadable"])
    assert by_path["broken/empty.png"]["Error Reason"] == "empty"
    assert by_path["broken/truncated.jpg"]["Error Reason"] == "truncated"

    assert _groups(rows) == {frozenset(g) for g in truth["groups"]}
    grouped = set().union(*truth["groups"])
    for path, r in by_path.items():
        if path not in grouped and r["Status"] != "Error":
            assert r["Status"] == "Unique" and r["Group Size"] == "1"

    # one keeper per group, the best-scored member, never a degraded copy
    for group in truth["groups"]:
        members = [by_path[p] for p in group]
        keepers = [m for m in members if m["Status"] == "Best"]
        assert len(keepers) == 1
        assert float(keepers[0]["Quality Score"]) == max(float(m["Quality Score"]) for m in members)
        assert all(m["Keeper Path"] == keepers[0]["Image Path"] for m in members)
        assert all(int(m["Group Size"]) == len(group) for m in members)
    astro_keeper = next(by_path[p] for p in truth["groups"][0] if by_path[p]["Status"] == "Best")
    assert astro_keeper["Image Path"] not in ("edits/astronaut_q30.jpg", "edits/astronaut_small.png")

    # copies: keepers and unique images in best/, the others in duplicates/, bytes unchanged
    dedup = out / f"{COLLECTION}_deduplicated"
    for path, r in by_path.items():
        best, dup = dedup / "best" / path, dedup / "duplicates" / path
        if r["Status"] in ("Best", "Unique"):
            assert best.read_bytes() == (source / path).read_bytes() and not dup.exists()
        elif r["Status"] == "Duplicate":
            assert dup.read_bytes() == (source / path).read_bytes() and not best.exists()
        else:
            assert not best.exists() and not dup.exists()

    copies = result.asset_materializations_for_node("deduplicated_files")[0].metadata
    assert copies["copied"].value == sum(r["Status"] != "Error" for r in rows)

    # every stage is in DuckDB, one table per asset, with this partition's rows
    con = duckdb.connect(str(out / "dedup_assets.duckdb"), read_only=True)
    try:
        for asset in ALL_ASSETS:
            n = con.execute(
                f"select count(*) from dedup.{asset.key.path[-1]} where collection = ?", [COLLECTION]
            ).fetchone()[0]
            assert n > 0, asset.key
        pairs = con.execute(
            "select source, count(*) from dedup.local_groups where local_kept group by source"
        ).fetchall()
        assert dict(pairs).get("exact") == 2
    finally:
        con.close()

    # the global stage says which model it used: here no CLIP weights exist
    meta = result.asset_materializations_for_node("global_groups")[0].metadata
    assert meta["embedder_kind"].value == "descriptor"
    assert "ViT-B-32" in meta["embedder_fallback_reason"].value


def test_rerun_is_idempotent(pipeline_run):
    run, out, truth, _ = pipeline_run
    report = out / f"{COLLECTION}_deduplicated" / "image_report.csv"
    if not report.exists():
        run()
    before = report.read_text()
    result = run()
    assert report.read_text() == before
    meta = result.asset_materializations_for_node("deduplicated_files")[0].metadata
    assert meta["copied"].value == 0 and meta["stale_removed"].value == 0
    con = duckdb.connect(str(out / "dedup_assets.duckdb"), read_only=True)
    try:
        n = con.execute("select count(*) from dedup.best_selection").fetchone()[0]
    finally:
        con.close()
    assert n == len(_read_report(report))  # partition replaced, not appended


def test_cli_run(sample, tmp_path, capsys):
    source, truth = sample
    out = tmp_path / "out"
    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"groups:     {len(truth['groups'])} groups" in printed
    assert "errors:     2" in printed
    assert str(report_path(source, out)) in printed
    assert (out / ".dedup_state" / "dedup_assets.duckdb").exists()
    copies = next(line for line in printed.splitlines() if line.startswith("copies:"))
    assert " 0 already present" in copies and " 0 copied" not in copies
    # the same command again resumes from the instance under OUT and copies nothing twice
    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    again = capsys.readouterr().out
    assert "copies:     0 copied" in again
    assert printed.split("groups:")[1].split("copies:")[0] == again.split("groups:")[1].split("copies:")[0]


def test_cli_refuses_output_inside_source(sample):
    source, _ = sample
    with pytest.raises(SystemExit, match="inside the source"):
        main(["run", str(source), "--output", str(source / "out")])


def test_ground_truth_is_written(sample):
    source, truth = sample
    assert json.loads((source / "ground_truth.json").read_text()) == truth
