"""The whole asset graph, materialised on a generated collection (no network, no ../shared)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance

from dedup_assets.assets import ALL_ASSETS
from dedup_assets.cli import _summary, main, report_path
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

    def run(expect_success: bool = True):
        result = materialize_collection(instance, COLLECTION, resources)
        assert result.success == expect_success
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

    # one keeper per group: the original (or a copy equal in content), never an edited copy,
    # and every member says why it is or is not the keeper
    for group, original, same in zip(truth["groups"], truth["originals"], truth["equivalent"]):
        members = [by_path[p] for p in group]
        keepers = [m for m in members if m["Status"] == "Best"]
        assert len(keepers) == 1
        assert keepers[0]["Image Path"] in [original, *same], (keepers[0], original)
        assert all(m["Keeper Path"] == keepers[0]["Image Path"] for m in members)
        assert all(int(m["Group Size"]) == len(group) for m in members)
        assert all(m["Keeper Reason"] for m in members)
    assert by_path["originals/coffee.jpg"]["Status"] == "Best"
    assert "crop" in by_path["originals/coffee.jpg"]["Keeper Reason"]
    assert by_path["edits/astronaut_gray.jpg"]["Keeper Reason"] == "greyscale; another copy is in colour"
    assert by_path["edits/coffee_crop.jpg"]["Keeper Reason"] == "a crop of another copy"

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
    # unchanged images: their embeddings are reused, the model runs on none of them
    meta = result.asset_materializations_for_node("global_groups")[0].metadata
    assert meta["images_embedded"].value == 0 and meta["images_reused"].value > 0
    assert "_embeddings" in meta["embedding_cache"].value
    con = duckdb.connect(str(out / "dedup_assets.duckdb"), read_only=True)
    try:
        n = con.execute("select count(*) from dedup.best_selection").fetchone()[0]
    finally:
        con.close()
    assert n == len(_read_report(report))  # partition replaced, not appended


def test_cli_run(sample, tmp_path, capsys, caplog):
    source, truth = sample
    out = tmp_path / "out"
    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # no CLIP weights here: said once on the terminal (by load_embedder, through the CLI's
    # warning handler), not again by global_groups
    fallback = "weight-free descriptor"
    assert captured.err.count(fallback) == 1, captured.err
    assert sum(fallback in r.getMessage() for r in caplog.records) == 1
    # the rate is over the stages' own time, which the time line separates from start-up
    images = re.search(r"^images: +(\d+) \(([\d.]+) images/s of image work\)$", printed, re.M)
    took = re.search(r"^time: +([\d.]+) s \(([\d.]+) s of image work, the rest start-up\)$", printed, re.M)
    assert images and took and 0 < float(took[2]) < float(took[1])
    assert float(images[2]) == pytest.approx(int(images[1]) / float(took[2]), rel=0.1)
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


def test_cli_summary_counts_agree_and_say_what_the_rate_is_over():
    rows = [
        {"Status": "Best", "Group ID": "g1"}, {"Status": "Duplicate", "Group ID": "g1"},
        {"Status": "Unique", "Group ID": "g2"}, {"Status": "Error", "Group ID": ""},
    ]
    text = _summary(rows, 8.0, "2 copied", "r.csv", "16 (0 already analysed)", work_seconds=0.5)
    assert "images:     4 (8.0 images/s of image work)" in text
    assert "groups:     1 group of duplicates" in text
    assert "time:       8.0 s (0.5 s of image work, the rest start-up)" in text


def test_cli_refuses_output_inside_source(sample):
    source, _ = sample
    with pytest.raises(SystemExit, match="inside the source"):
        main(["run", str(source), "--output", str(source / "out")])


def test_ground_truth_is_written(sample):
    source, truth = sample
    assert json.loads((source / "ground_truth.json").read_text()) == truth


# ----------------------------------------------------------------- analysts, checks, crashes

TABLE_KEYS = {
    "blob_inventory": ["collection", "path"],
    "wavelet_hashes": ["collection", "path"],
    "color_groups": ["collection", "path_a", "path_b", "source"],
    "global_groups": ["collection", "path_a", "path_b", "source"],
    "local_groups": ["collection", "path_a", "path_b", "source"],
    "best_selection": ["collection", "path"],
    "deduplicated_files": ["collection", "path"],
    "image_report": ["collection", '"Image Path"'],
}


def _ensure_run(pipeline_run) -> Path:
    run, out, _, _ = pipeline_run
    report = out / f"{COLLECTION}_deduplicated" / "image_report.csv"
    if not report.exists():
        run()
    return report


def readme_queries() -> dict[str, str]:
    """The analyst queries of README.md (`-- name: …` blocks of its SQL examples)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    queries: dict[str, str] = {}
    for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S):
        parts = re.split(r"^-- name: (\w+)\n", block, flags=re.M)
        for name, sql in zip(parts[1::2], parts[2::2]):
            queries[name] = sql.strip()
    return queries


def test_readme_analyst_queries_on_the_published_snapshot(pipeline_run, tmp_path, capsys):
    from dedup_assets.io_manager import open_analyst

    report = _ensure_run(pipeline_run)
    _, out, truth, source = pipeline_run
    rows = _read_report(report)
    queries = readme_queries()
    assert set(queries) == {"largest_groups", "space_saved", "keeper_quality", "joining_pairs", "errors"}
    # the analyst files work wherever they are moved to
    moved = tmp_path / "moved"
    shutil.copytree(out / "dedup_assets_analyst", moved / "dedup_assets_analyst")
    shutil.copy(out / "dedup_assets_analyst.duckdb", moved)
    # the pipeline's own file is held open for writing, as during a run: analysts are not blocked
    writer = duckdb.connect(str(out / "dedup_assets.duckdb"))
    analyst = open_analyst(moved / "dedup_assets_analyst.duckdb")
    try:
        result = {name: analyst.execute(sql).fetchall() for name, sql in queries.items()}
    finally:
        analyst.close()
        writer.close()
    # the same through the DuckDB command line the bootstrap installs (README), run in the
    # folder, and through `dedup-assets sql`
    duckdb_cli = Path(sys.executable).parent / "duckdb"
    sql = queries["largest_groups"]
    cli = subprocess.run(
        [str(duckdb_cli), "-readonly", "-csv", "-noheader", "dedup_assets_analyst.duckdb", "-c", sql],
        cwd=moved, capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert [line.split(",")[:3] for line in cli.stdout.splitlines()] == [
        [c, g, str(n)] for c, g, n, _ in result["largest_groups"]
    ]
    assert main(["sql", str(moved), sql, "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == cli.stdout.splitlines()
    assert result["largest_groups"][0][2] == max(len(g) for g in truth["groups"])
    assert len(result["largest_groups"]) == len(truth["groups"])
    duplicates = [r for r in rows if r["Status"] == "Duplicate"]
    [(collection, n, saved, _)] = result["space_saved"]
    assert (collection, n) == (COLLECTION, len(duplicates))
    assert saved == sum(int(r["File Size"]) for r in duplicates)
    keepers = {r["Image Path"] for r in rows if r["Status"] == "Best"}
    assert {r[2] for r in result["keeper_quality"]} == keepers
    group_of = {p: i for i, g in enumerate(truth["groups"]) for p in g}
    assert result["joining_pairs"] and all(
        group_of.get(a) is not None and group_of.get(a) == group_of.get(b)
        for _, a, b, *_ in result["joining_pairs"]
    )
    assert sorted(r[1] for r in result["errors"]) == sorted(truth["unreadable"])


def test_failing_check_blocks_copies_and_report(pipeline_run):
    from dedup_assets.io_manager import locked_connection

    report = _ensure_run(pipeline_run)
    run, out, _, _ = pipeline_run
    db = str(out / "dedup_assets.duckdb")
    before = report.stat().st_mtime_ns
    # corrupt the results: one image analysed twice (as stale rows of another shard would be)
    with locked_connection(db) as (con, _):
        path, shard = con.execute(
            "select path, shard from dedup.wavelet_hashes where status = 'ok' order by path limit 1"
        ).fetchone()
        other = "s000" if shard != "s000" else "s001"
        con.execute(
            "insert into dedup.wavelet_hashes select * replace (? as shard)"
            " from dedup.wavelet_hashes where path = ?",
            [other, path],
        )
    bad = run(expect_success=False)  # same instance: no shard is stale, the bad row stays
    evaluations = {e.check_name: e for e in bad.results[-1].get_asset_check_evaluations()}
    assert not evaluations["every_image_once"].passed
    assert path in evaluations["every_image_once"].metadata["problems"].value["duplicated"]
    assert bad.asset_materializations_for_node("image_report") == []
    assert bad.asset_materializations_for_node("deduplicated_files") == []
    assert report.stat().st_mtime_ns == before  # the report was not rewritten
    with locked_connection(db) as (con, _):
        con.execute("delete from dedup.wavelet_hashes where path = ? and shard = ?", [path, other])
    assert run().success


def test_shards_analysed_by_another_stage1_version_are_analysed_again(pipeline_run, monkeypatch):
    import dedup_assets.state as state
    from dedup_assets.partitions import N_SHARDS

    report = _ensure_run(pipeline_run)
    run = pipeline_run[0]
    before = report.read_text()
    assert run().resumed == N_SHARDS  # nothing changed: every shard is current
    monkeypatch.setattr(state, "ROW_VERSION", state.ROW_VERSION + 1)  # as after an upgrade
    assert run().resumed == 0  # every shard analysed again
    assert report.read_text() == before


def test_rows_of_an_older_version_without_content_hash_fail_clearly(pipeline_run):
    """An older version's stage-1 rows have no content hash (the column added to the table is
    null for them): the pairing stage stops with what to do, instead of taking them all for
    byte-identical files."""
    from dedup_assets.io_manager import locked_connection

    _ensure_run(pipeline_run)
    run, out, _, _ = pipeline_run
    db = str(out / "dedup_assets.duckdb")
    with locked_connection(db) as (con, _):
        shard = con.execute("select min(shard) from dedup.wavelet_hashes where status = 'ok'").fetchone()[0]
        saved = con.execute(
            "select path, content_hash from dedup.wavelet_hashes where shard = ?", [shard]
        ).fetchall()
        con.execute("update dedup.wavelet_hashes set content_hash = null where shard = ?", [shard])
    bad = run(expect_success=False)
    failures = [e for e in bad.all_events if e.is_step_failure]
    assert failures and "materialise wavelet_hashes again" in str(failures[0].step_failure_data.error)
    assert bad.asset_materializations_for_node("color_groups") == []
    with locked_connection(db) as (con, _):
        con.executemany(
            "update dedup.wavelet_hashes set content_hash = ? where path = ?", [(h, p) for p, h in saved]
        )
    assert run().success


def test_killed_run_resumes_with_identical_results(sample, pipeline_run, tmp_path):
    """SIGKILL `dedup-assets run` in the middle of stage 1, start it again: the same results as
    an uninterrupted run, no image lost, no row duplicated, no file copied twice."""
    from dagster import AssetKey, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    reference = _ensure_run(pipeline_run)  # uninterrupted, in-process, 4 shards
    _, ref_out, _, _ = pipeline_run
    source, _ = sample
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "DEDUP_SHARDS": "8",
        "DEDUP_STAGE1_RUN_IMAGES": "0",  # one run per shard, so that the kill lands between two
    }
    cmd = [sys.executable, "-m", "dedup_assets.cli", "run", str(source), "--output", str(out), "--workers", "1"]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "stage 1: shard" in line and "(2/8)" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(out / ".dedup_state" / "dagster")))
    done = instance.get_materialized_partitions(AssetKey("wavelet_hashes"))
    assert 2 <= len(done) < 8  # killed mid stage 1
    assert not (out / f"{COLLECTION}_deduplicated").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"shards:     8 ({len(done)} already analysed)" in again.stdout
    rows = _read_report(reference)
    copied = sum(r["Status"] != "Error" for r in rows)
    assert f"copies:     {copied} copied, 0 already present" in again.stdout

    resumed = out / f"{COLLECTION}_deduplicated"
    assert (resumed / "image_report.csv").read_text() == reference.read_text()
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(resumed) == files(ref_out / f"{COLLECTION}_deduplicated")

    con = duckdb.connect(str(out / ".dedup_state" / "dedup_assets.duckdb"), read_only=True)
    ref = duckdb.connect(str(ref_out / "dedup_assets.duckdb"), read_only=True)
    try:
        for table, key in TABLE_KEYS.items():
            n, distinct = con.execute(
                f"select count(*), count(distinct ({', '.join(key)})) from dedup.{table}"
            ).fetchone()
            assert n == distinct, f"duplicated rows in {table}"
            assert n == ref.execute(f"select count(*) from dedup.{table}").fetchone()[0], table
    finally:
        con.close()
        ref.close()


def test_bench_accuracy_on_the_sample_collection(sample, tmp_path, capsys):
    """The accuracy benchmark runs the real pipeline and scores it per stage."""
    from dedup_assets.bench import run as bench

    source, truth = sample
    out_json = tmp_path / "acc.json"
    assert bench("accuracy", [str(source), "--workers", "1", "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert list(res["stages"]) == ["candidates", "color", "global", "local", "final"]
    final = res["stages"]["final"]
    assert final["true_pairs"] == sum(len(g) * (len(g) - 1) // 2 for g in truth["groups"])
    assert (final["precision"], final["recall"], final["bcubed_f1"]) == (1.0, 1.0, 1.0)
    assert sorted(res["unreadable_reported"]) == sorted(truth["unreadable"])
    assert res["unexpected_errors"] == {}
    assert "final" in capsys.readouterr().out


def test_stage1_joins_neighbouring_stale_shards_up_to_the_image_limit():
    from dedup_assets.runner import stage1_batches

    images = {"s000": 3, "s001": 4, "s002": 1, "s003": 2}
    assert stage1_batches(["s003", "s000", "s001"], images, 7) == [["s000", "s001"], ["s003"]]
    assert stage1_batches(["s000", "s001", "s003"], images, 6) == [["s000"], ["s001"], ["s003"]]
    assert stage1_batches(["s000", "s001", "s002", "s003"], images, 0) == [["s000"], ["s001"], ["s002"], ["s003"]]
    big = {"s000": 10, "s001": 1, "s002": 1, "s003": 1}
    assert stage1_batches(["s000", "s001", "s002", "s003"], big, 5) == [["s000"], ["s001", "s002", "s003"]]


def test_stage1_runs_shard_ranges_and_reanalyses_only_changed_shards(sample, tmp_path, monkeypatch):
    """A small collection's shards are analysed in one Dagster run over the shard range; each
    shard is still recorded on its own (images, inventory fingerprint, Parquet file), so a
    changed image makes only its shard stale, analysed again alone."""
    import dedup_assets.runner as runner
    from dedup_assets.assets import blob_inventory, wavelet_hashes
    from dedup_assets.core.shards import shard_of
    from dedup_assets.partitions import N_SHARDS, SHARD_KEYS
    from dedup_assets.state import collection_states

    source = tmp_path / "src" / COLLECTION
    shutil.copytree(sample[0], source)
    out = tmp_path / "out"
    db = out / "dedup_assets.duckdb"
    resources = build_resources(source_root=str(source.parent), output_root=str(out), database=str(db))
    instance = DagsterInstance.ephemeral()
    said: list[str] = []

    def run():
        result = materialize_collection(
            instance, COLLECTION, resources, assets=[blob_inventory, wavelet_hashes], say=said.append
        )
        assert result.success
        return result

    first = run()
    assert len(first.results) == 2  # the inventory, then one stage-1 run for every shard
    assert said[-1] == f"stage 1: shards s000-s{N_SHARDS - 1:03d} analysed ({N_SHARDS}/{N_SHARDS})"
    state = collection_states(instance, [COLLECTION])[COLLECTION]
    assert state.stale_shards == []
    events = first.results[1].get_asset_materialization_events()
    by_shard = {e.partition.split("|")[-1]: e.materialization.metadata for e in events}
    assert sorted(by_shard) == SHARD_KEYS
    for shard, meta in by_shard.items():
        assert meta["images"].value == state.shard_images[shard]
        assert meta["inventory_fingerprint"].value == state.shard_fingerprints[shard]
    assert sum(m["images"].value for m in by_shard.values()) == state.images
    parquet = out / "dedup_assets_analyst" / "dedup" / "wavelet_hashes"
    assert sorted(p.name for p in parquet.glob("*.parquet")) == [f"{COLLECTION}-{s}.parquet" for s in SHARD_KEYS]

    # one changed image in each of two shards: those two shards only are analysed again
    rows = {}
    for path in sorted(p.relative_to(source).as_posix() for p in source.rglob("*.jpg")):
        rows.setdefault(shard_of(path, N_SHARDS), path)
    changed = dict(list(sorted(rows.items()))[:2])
    for path in changed.values():
        with open(source / path, "ab") as f:
            f.write(b"\0" * 16)  # trailing bytes: the same picture, another size and hash
    said.clear()
    second = run()
    assert second.resumed == N_SHARDS - 2
    images = collection_states(instance, [COLLECTION])[COLLECTION].shard_images
    expected = runner.stage1_batches(sorted(changed), images, runner.STAGE1_RUN_IMAGES)
    assert len(second.results) == 1 + len(expected)
    analysed = {
        e.partition.split("|")[-1] for r in second.results[1:] for e in r.get_asset_materialization_events()
    }
    assert analysed == set(changed)
    con = duckdb.connect(str(db), read_only=True)
    try:
        n, distinct = con.execute("select count(*), count(distinct path) from dedup.wavelet_hashes").fetchone()
        assert n == distinct == state.images
        for shard, path in changed.items():
            size, row_shard = con.execute(
                "select file_size, shard from dedup.wavelet_hashes where path = ?", [path]
            ).fetchone()
            assert (size, row_shard) == ((source / path).stat().st_size, shard)
    finally:
        con.close()

    # without joining (DEDUP_STAGE1_RUN_IMAGES=0): one run per stale shard
    monkeypatch.setattr(runner, "STAGE1_RUN_IMAGES", 0)
    for path in changed.values():
        with open(source / path, "ab") as f:
            f.write(b"\0")
    third = run()
    assert len(third.results) == 1 + 2 and third.resumed == N_SHARDS - 2
