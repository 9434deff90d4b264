"""`dagster dev` as the README starts it: the sensors and the schedule are listed, and a
backfill of two collections launched through GraphQL completes through the run queue and
the daemon, its four stage-1 shard runs at once, with no DuckDB lock error in any log."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef
from PIL import ImageOps

from dedup_assets.backfill import backfill_status, repositories
from dedup_assets.cli import main
from dedup_assets.core.sample import _jpeg, load_photo

REPO = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _materializations(instance, run_id):
    return [
        e.dagster_event.event_specific_data.materialization
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.is_step_materialization
    ]


def _hold_duckdb_until_four_shard_runs_wait(instance, db: Path, backfill_id: str) -> None:
    """Once both inventories are written, hold the DuckDB lock (as a long write by another
    run would) until the four stage-1 runs have all started: they run at the same time and
    must queue on the lock, not fail."""
    from dedup_assets.io_manager import locked_connection

    deadline = time.time() + 300
    while len(instance.get_materialized_partitions(AssetKey("blob_inventory"))) < 2:
        assert time.time() < deadline, "inventories not written"
        time.sleep(0.5)
    with locked_connection(str(db)):
        while True:
            started = [
                r
                for r in instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
                if "|" in r.tags.get("dagster/partition", "")
                and r.status == DagsterRunStatus.STARTED
            ]
            if len(started) == 4:
                break
            assert time.time() < deadline, f"only {len(started)} shard runs started together"
            time.sleep(0.5)
        time.sleep(2)


@pytest.mark.skipif(not DAGSTER.exists(), reason="dagster CLI not installed next to python")
def test_dagster_dev_backfill_of_two_collections(tmp_path, capsys):
    home, src, out = tmp_path / "home", tmp_path / "src", tmp_path / "out"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    astro, coffee = load_photo("astronaut"), load_photo("coffee")
    for name, photo in (("alpha", astro), ("beta", coffee)):
        (src / name).mkdir(parents=True)
        (src / name / "a.jpg").write_bytes(_jpeg(photo))
        (src / name / "a_small.jpg").write_bytes(_jpeg(photo.resize((200, 150)), quality=60))
        (src / name / "a_mirror.jpg").write_bytes(_jpeg(ImageOps.mirror(photo), quality=50))
        (src / name / "other.jpg").write_bytes(_jpeg(load_photo("camera")))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "DEDUP_SOURCE_ROOT": str(src),
        "DEDUP_OUTPUT_ROOT": str(out),
        "DEDUP_DUCKDB": str(out / "results.duckdb"),
        "DEDUP_SHARDS": "2",
        "DEDUP_AUTOMATION": "off",  # the backfill, not the sensors, requests the runs here
    }
    log = open(tmp_path / "dagster-dev.log", "w")
    proc = subprocess.Popen(
        [str(DAGSTER), "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        repos = None
        while time.time() < deadline and repos is None:
            assert proc.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
            try:
                repos = [r for r in repositories(url) if r["sensors"]]
            except OSError:
                time.sleep(1)
        assert repos, "dagster dev did not serve the code location"
        [repo] = repos
        assert {s["name"] for s in repo["sensors"]} == {
            "collection_discovery_sensor",
            "dedup_progress_sensor",
        }
        assert [s["name"] for s in repo["schedules"]] == ["inventory_rescan_schedule"]

        # the README's command line (it adds the partitions, then launches the backfill)
        assert main(["backfill", "alpha", "beta", "--url", url]) == 0
        printed = capsys.readouterr().out
        backfill_id = re.search(r"backfill (\S+) launched for alpha, beta", printed).group(1)
        instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        _hold_duckdb_until_four_shard_runs_wait(instance, out / "results.duckdb", backfill_id)
        deadline = time.time() + 400
        while (status := backfill_status(url, backfill_id)) == "REQUESTED":
            assert time.time() < deadline, "backfill did not finish"
            time.sleep(2)
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert runs and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    shard_runs = [r for r in runs if "|" in r.tags.get("dagster/partition", "")]
    assert sorted(r.tags["dagster/partition"] for r in shard_runs) == [
        "alpha|s000",
        "alpha|s001",
        "beta|s000",
        "beta|s001",
    ]
    # the four shard runs ran at the same time (run queue limit 4): their spans overlap
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(RunsFilter(run_ids=[r.run_id for r in shard_runs]))}
    starts = [records[r.run_id].start_time for r in shard_runs]
    ends = [records[r.run_id].end_time for r in shard_runs]
    assert max(starts) < min(ends), "shard runs did not overlap"
    waits = [
        m.metadata["duckdb_lock_wait_s"].value
        for r in shard_runs
        for m in _materializations(instance, r.run_id)
    ]
    assert len(waits) == 4 and min(waits) > 0  # they queued on the lock instead of failing
    for run in runs:
        for entry in instance.all_logs(run.run_id):
            text = (entry.user_message or "") + str(entry.dagster_event or "")
            assert "Could not set lock" not in text and "DuckDBLockTimeout" not in text, text

    con = duckdb.connect(str(out / "results.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "select collection, count(*), count(*) filter (where status = 'Best')"
            " from dedup.best_selection group by 1 order by 1"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("alpha", 4, 1), ("beta", 4, 1)]
    assert (out / "alpha_deduplicated" / "image_report.csv").is_file()
