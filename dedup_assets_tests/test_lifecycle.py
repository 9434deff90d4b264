"""`dedup-assets run` stopped from outside: nothing of it stays behind, nothing partial is kept.

The CLI runs as a subprocess on a generated collection big enough to keep stage 1 busy; the
test records every process descended from it (the forkserver and its workers among them)
from /proc, stops the CLI, and checks that none of them is left 5 s later.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.sample import make_sample_collection

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

COLLECTION = "busy-photos"
SHARDS = 8
ROOT = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def busy(tmp_path_factory) -> Path:
    """The sample collection plus 120 distinct generated photos (1024x768 JPEGs)."""
    source = tmp_path_factory.mktemp("busy") / COLLECTION
    make_sample_collection(source)
    rng = np.random.default_rng(21)
    for i in range(120):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((1024, 768), Image.BICUBIC)
        img.save(source / f"generated_{i:03d}.jpg", quality=90)
    return source


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid``, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


#: a process descended from the CLI: start time (with the pid, its identity), parent, command
Proc = tuple[int, int, str]


def _descendants(root: int) -> dict[int, Proc]:
    """Every living process descended from ``root``."""
    procs: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] != "Z":
            procs[int(entry)] = (st[2], st[1])
    found: dict[int, Proc] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (started, ppid) in procs.items():
            if ppid == pid and child not in found:
                found[child] = (started, ppid, _cmdline(child))
                frontier.append(child)
    return found


def _alive(recorded: dict[int, Proc]) -> dict[int, str]:
    """The recorded processes still running (same pid and start time, not a zombie)."""
    left = {}
    for pid, (started, _, cmd) in recorded.items():
        st = _stat(pid)
        if st is not None and st[0] != "Z" and st[2] == started:
            left[pid] = cmd
    return left


def _workers(tree: dict[int, Proc]) -> list[int]:
    """The worker processes: children of the forkserver."""
    servers = {p for p, (_, _, cmd) in tree.items() if "multiprocessing.forkserver" in cmd}
    return [p for p, (_, ppid, _) in tree.items() if ppid in servers]


# --------------------------------------------------------------------------- the CLI


class _Cli:
    """``dedup-assets run SRC --output OUT`` as a subprocess, its stderr collected."""

    def __init__(self, source: Path, out: Path, *, own_group: bool = False) -> None:
        # one stage-1 run per shard, so that signals can arrive between shards
        env = {**os.environ, "PYTHONPATH": ROOT, "DEDUP_SHARDS": str(SHARDS), "DEDUP_STAGE1_RUN_IMAGES": "0"}
        self.cmd = [
            sys.executable, "-m", "dedup_assets.cli", "run", str(source), "--output", str(out),
            "--workers", "2",
        ]
        self.env = env
        self.proc = subprocess.Popen(
            self.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=own_group,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for_workers(self, after: str = "", timeout: float = 300) -> dict[int, Proc]:
        """Once ``after`` was printed and worker processes are computing: its process tree."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"the run ended early:\n{self.stderr}"
            if after in self.stderr:
                tree = _descendants(self.proc.pid)
                if _workers(tree):
                    return tree
            time.sleep(0.05)
        raise AssertionError(f"no worker processes within {timeout} s:\n{self.stderr}")

    def stop(self, sig: int, seen: dict, *, group: bool = False) -> tuple[dict[int, Proc], float]:
        """Send ``sig`` (``group``: to its whole process group, as a terminal's Ctrl-C does);
        every process of the CLI seen (``seen`` and those running just before the signal)
        and the seconds until the CLI ended."""
        tree = {**seen, **_descendants(self.proc.pid)}
        sent = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            name = signal.Signals(sig).name
            raise AssertionError(f"{name} did not end the run in 30 s:\n{self.stderr}") from None
        self._reader.join(10)
        return tree, time.monotonic() - sent


def _nothing_left(tree: dict[int, Proc], seconds: float = 5) -> None:
    time.sleep(seconds)
    left = _alive(tree)
    for pid, cmd in left.items():  # not left to the next test either (the resource tracker
        if "resource_tracker" not in cmd:  # exits by itself then, unlinking its semaphores)
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running {seconds} s after the CLI ended: {left}"


_OWNER = """
import sys, time
from dedup_assets.core.parallel import ordered_map
if __name__ == "__main__":
    for _ in ordered_map(time.sleep, [60] * 8, workers=2, chunk_size=1):
        pass
"""


def test_workers_end_with_the_process_that_started_their_pool(tmp_path):
    """Any process using ``ordered_map`` (a Dagster step process too): SIGKILL it while its
    workers are busy for a minute, and the workers and the forkserver are gone 5 s later."""
    script = tmp_path / "owner.py"
    script.write_text(_OWNER)
    owner = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": ROOT})
    try:
        end = time.monotonic() + 120
        while len(_workers(tree := _descendants(owner.pid))) < 2:
            assert owner.poll() is None and time.monotonic() < end, "no workers started"
            time.sleep(0.05)
    finally:
        owner.kill()
        owner.wait()
    _nothing_left(tree)


def test_kill_9_leaves_no_process(busy, tmp_path):
    """SIGKILL of the CLI while stage 1's workers compute: the forkserver, its workers and
    every other process the CLI started are gone 5 s later."""
    cli = _Cli(busy, tmp_path / "out")
    seen = cli.wait_for_workers()
    workers = _workers(seen)
    tree, _ = cli.stop(signal.SIGKILL, seen)
    assert cli.proc.returncode == -signal.SIGKILL
    assert workers and all(w in tree for w in workers)
    _nothing_left(tree)


def test_sigterm_stops_at_once_and_the_same_command_resumes(busy, tmp_path):
    """SIGTERM in the middle of stage 1: the CLI ends within seconds with status 143 and one
    line saying what to do, no process of it is left, the shard being analysed was not
    written; the same command again completes with every image in the report once."""
    out = tmp_path / "out"
    cli = _Cli(busy, out)
    seen = cli.wait_for_workers(after=f"(2/{SHARDS})")
    tree, seconds = cli.stop(signal.SIGTERM, seen)
    assert cli.proc.returncode == 128 + signal.SIGTERM, cli.stderr
    assert seconds < 5, seconds
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith("dedup-assets: interrupted by SIGTERM"), cli.stderr
    assert "run the same command again to resume" in last
    assert "Traceback" not in cli.stderr, cli.stderr
    _nothing_left(tree)

    # what was written: only whole shards, exactly those Dagster recorded as analysed
    from dagster import AssetKey, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(out / ".dedup_state" / "dagster")))
    keys = instance.get_materialized_partitions(AssetKey("wavelet_hashes"))
    done = {k.split("|")[-1] for k in keys}
    assert 2 <= len(done) < SHARDS, done
    con = duckdb.connect(str(out / ".dedup_state" / "dedup_assets.duckdb"), read_only=True)
    try:
        per_shard = "select shard, count(*) from dedup.{} group by 1"
        written = dict(con.execute(per_shard.format("wavelet_hashes")).fetchall())
        expected = dict(con.execute(per_shard.format("blob_inventory")).fetchall())
    finally:
        con.close()
    assert set(written) == done
    assert all(written[s] == expected[s] for s in done), (written, expected)
    assert not (out / f"{COLLECTION}_deduplicated").exists()

    again = subprocess.run(cli.cmd, env=cli.env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"shards:     {SHARDS} ({len(done)} already analysed)" in again.stdout
    with open(out / f"{COLLECTION}_deduplicated" / "image_report.csv", newline="") as f:
        reported = [row["Image Path"] for row in csv.DictReader(f)]
    con = duckdb.connect(str(out / ".dedup_state" / "dedup_assets.duckdb"), read_only=True)
    try:
        inventory = [p for (p,) in con.execute("select path from dedup.blob_inventory").fetchall()]
        analysed = con.execute(
            "select count(*), count(distinct path) from dedup.wavelet_hashes"
        ).fetchone()
    finally:
        con.close()
    assert len(inventory) > 120
    assert analysed == (len(inventory), len(inventory))  # every image once, none twice
    assert sorted(reported) == sorted(inventory)


def test_ctrl_c_stops_at_once_without_tracebacks(busy, tmp_path):
    """SIGINT to the CLI's whole process group (a Ctrl-C in its terminal): status 130 within
    seconds, one line and no traceback from any of its processes, none of them left."""
    cli = _Cli(busy, tmp_path / "out", own_group=True)
    seen = cli.wait_for_workers()
    tree, seconds = cli.stop(signal.SIGINT, seen, group=True)
    assert cli.proc.returncode == 128 + signal.SIGINT, cli.stderr
    assert seconds < 5, seconds
    _nothing_left(tree)
    assert "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith("dedup-assets: interrupted by SIGINT")
