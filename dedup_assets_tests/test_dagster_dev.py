"""`dagster dev` as the README starts it: the sensors and the schedule are listed, and a
backfill of two collections launched through GraphQL completes through the run queue and
the daemon, its four stage-1 shard runs at once, with no DuckDB lock error in any log. With
automation on, a backfill runs each job once per partition and the sensors start nothing
beside it."""

from __future__ import annotations

import contextlib
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

from dedup_assets.backfill import backfill_status, graphql, repositories
from dedup_assets.cli import main
from dedup_assets.core.sample import _jpeg, load_photo
from dedup_assets.partitions import N_SHARDS
from dedup_assets.state import IN_FLIGHT

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


@contextlib.contextmanager
def _dagster_dev(tmp_path: Path, home: Path, env: dict):
    """`dagster dev` with DAGSTER_HOME=home and ``env``, in its own process group (stopped
    with SIGINT, as Ctrl-C would); yields its URL and the code location's repository."""
    url = f"http://127.0.0.1:{_free_port()}"
    log_path = tmp_path / "dagster-dev.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(DAGSTER), "dev", "-w", str(REPO / "workspace.yaml"), "-p", url.rsplit(":", 1)[1]],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        repos = None
        while time.time() < deadline and repos is None:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                repos = [r for r in repositories(url) if r["sensors"]]
            except OSError:
                time.sleep(1)
        assert repos, "dagster dev did not serve the code location"
        [repo] = repos
        yield url, repo
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


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
    env = {
        "DEDUP_SOURCE_ROOT": str(src),
        "DEDUP_OUTPUT_ROOT": str(out),
        "DEDUP_DUCKDB": str(out / "results.duckdb"),
        "DEDUP_SHARDS": "2",
        "DEDUP_AUTOMATION": "off",  # the backfill, not the sensors, requests the runs here
    }
    with _dagster_dev(tmp_path, home, env) as (url, repo):
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


def _ticks(url: str, repo: dict, sensor: str) -> list[dict]:
    """The sensor's ticks, newest first, with what they logged (GraphQL, as the UI reads
    them)."""
    data = graphql(
        url,
        """query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) {
             __typename ... on Sensor { sensorState { ticks(limit: 200) {
               status timestamp skipReason runIds
               logEvents { events { message } } } } } } }""",
        {
            "sel": {
                "repositoryName": repo["name"],
                "repositoryLocationName": repo["location"]["name"],
                "sensorName": sensor,
            }
        },
    )["sensorOrError"]
    return data["sensorState"]["ticks"]


def _origin(run) -> str:
    tags = run.tags
    if "dagster/backfill" in tags:
        return f"backfill {tags['dagster/backfill']}"
    for kind in ("sensor", "schedule"):
        if f"dagster/{kind}_name" in tags:
            return f"{kind} {tags[f'dagster/{kind}_name']}"
    return "manual"


@pytest.mark.skipif(not DAGSTER.exists(), reason="dagster CLI not installed next to python")
def test_backfill_with_automation_on_starts_each_job_once_per_partition(tmp_path, capsys):
    """Automation on, as `dagster dev` starts by default. `alpha` is there at start: the
    automation alone processes it, one chain (inventory, stage 1 per shard, dedup_job).
    `beta` appears later and is backfilled with `dedup-assets backfill --wait` while alpha's
    chain runs: the backfill runs each of beta's partitions once, the sensors (which tick
    during the backfill) start nothing for beta, and nothing more once all is done."""
    home, src, out = tmp_path / "home", tmp_path / "src", tmp_path / "out"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")

    def write(name, photo):
        (src / name).mkdir(parents=True)
        (src / name / "a.jpg").write_bytes(_jpeg(photo))
        (src / name / "a_small.jpg").write_bytes(_jpeg(photo.resize((200, 150)), quality=60))
        (src / name / "other.jpg").write_bytes(_jpeg(load_photo("camera")))

    write("alpha", load_photo("astronaut"))
    env = {
        "DEDUP_SOURCE_ROOT": str(src),
        "DEDUP_OUTPUT_ROOT": str(out),
        "DEDUP_DUCKDB": str(out / "results.duckdb"),
        "DEDUP_SHARDS": str(N_SHARDS),
        "DEDUP_AUTOMATION": "on",
        "DEDUP_RESCAN_CRON": "0 0 1 1 *",  # not during the test (tested in test_automation)
    }
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    with _dagster_dev(tmp_path, home, env) as (url, repo):
        # the discovery sensor's first tick finds alpha; beta appears after it, and the
        # backfill adds its partition long before the sensor's next tick (60 s)
        deadline = time.time() + 180
        while not instance.get_runs(RunsFilter(job_name="inventory_job")):
            assert time.time() < deadline, "the discovery sensor did not request alpha"
            time.sleep(0.5)
        write("beta", load_photo("coffee"))
        started = time.time()
        assert main(["backfill", "beta", "--url", url, "--wait"]) == 0
        ended = time.time()
        printed = capsys.readouterr().out
        backfill_id = re.search(r"backfill (\S+) launched for beta", printed).group(1)

        # alpha's chain ends; then one more progress tick must request nothing
        deadline = time.time() + 400
        while "alpha" not in instance.get_materialized_partitions(AssetKey("image_report")) or (
            instance.get_runs(RunsFilter(statuses=IN_FLIGHT))
        ):
            assert time.time() < deadline, "alpha was not processed by the automation"
            time.sleep(2)
        quiet = time.time()
        deadline = quiet + 120
        while not any(t["timestamp"] > quiet for t in _ticks(url, repo, "dedup_progress_sensor")):
            assert time.time() < deadline, "the progress sensor did not tick"
            time.sleep(2)
        progress_ticks = _ticks(url, repo, "dedup_progress_sensor")

    runs = sorted(
        instance.get_runs(),
        key=lambda r: (r.tags["dagster/partition"].split("|")[0], _origin(r), r.job_name,
                       r.tags["dagster/partition"]),
    )
    listing = "\n".join(
        f"{r.job_name:14} {r.tags['dagster/partition']:12} {r.status.value:8} {_origin(r)}"
        for r in runs
    )
    print(f"\nruns ({len(runs)}):\n{listing}\n{printed}")
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), listing
    shards = [f"s{i:03d}" for i in range(N_SHARDS)]

    # alpha: the automation's one chain
    alpha = [(r.job_name, r.tags["dagster/partition"], _origin(r)) for r in runs if
             r.tags["dagster/partition"].split("|")[0] == "alpha"]
    assert sorted(alpha) == sorted(
        [("inventory_job", "alpha", "sensor collection_discovery_sensor")]
        + [("stage1_job", f"alpha|{s}", "sensor dedup_progress_sensor") for s in shards]
        + [("dedup_job", "alpha", "sensor dedup_progress_sensor")]
    ), listing
    # beta: the backfill's runs only, each partition of each asset once
    beta = [r for r in runs if r.tags["dagster/partition"].split("|")[0] == "beta"]
    assert {_origin(r) for r in beta} == {f"backfill {backfill_id}"}, listing
    steps = sorted(
        (r.tags["dagster/partition"], tuple(sorted(k.to_user_string() for k in r.asset_selection)))
        for r in beta
    )
    later = tuple(sorted(["color_groups", "global_groups", "local_groups", "best_selection",
                          "deduplicated_files", "image_report", "review_gallery"]))
    assert steps == sorted(
        [("beta", ("blob_inventory",)), ("beta", later)]
        + [(f"beta|{s}", ("wavelet_hashes",)) for s in shards]
    ), listing

    # the progress sensor ticked while the backfill was in progress and said why it left
    # beta alone; its tick after everything ended requested nothing
    busy = f"beta: nothing requested while backfill {backfill_id} is in progress"
    during = [t for t in progress_ticks if started < t["timestamp"] < ended]
    assert any(
        busy in e["message"] for t in during for e in t["logEvents"]["events"]
    ), during
    print("\n".join(
        f"progress tick {t['timestamp'] - started:6.0f} s {t['status']:8} runs={len(t['runIds'])} "
        + " | ".join(e["message"] for e in t["logEvents"]["events"])
        for t in reversed(during)
    ))
    last = next(t for t in progress_ticks if t["timestamp"] > quiet)
    assert last["status"] == "SKIPPED" and not last["runIds"], last
    # --wait said how far the backfill was, at least every ~10 s
    progress = [line for line in printed.splitlines() if "partitions done:" in line]
    assert progress and "COMPLETED_SUCCESS" in progress[-1], printed
    assert len(progress) >= (ended - started) // 15, printed
