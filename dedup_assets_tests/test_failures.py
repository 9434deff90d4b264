"""A failed or killed run never breaks the next one.

Each asset in turn fails while its write to DuckDB is in flight (after its rows are inserted,
before the commit): by an error, in-process, in a store shared by two collections (as the
Dagster UI's is); and by SIGKILL of ``dedup-assets run`` (the CLI's own state). The next run
must succeed and end with the results of a run that never failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest
from dagster import DagsterInstance, Failure
from PIL import Image
from skimage import data

from dedup_assets import io_manager
from dedup_assets.assets import ALL_ASSETS
from dedup_assets.definitions import build_resources
from dedup_assets.runner import materialize_collection

ASSETS = [a.key.path[-1] for a in ALL_ASSETS]
REPORT = "image_report.csv"


def _collection(folder: Path) -> None:
    """Three unrelated photos, two edited copies of one of them, a zero-byte file."""
    folder.mkdir(parents=True)
    for name, load in (("astronaut", data.astronaut), ("coffee", data.coffee), ("rocket", data.rocket)):
        Image.fromarray(load()).save(folder / f"{name}.jpg", quality=90)
    rgb = data.astronaut()
    Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(folder / "astronaut_mirror.jpg", quality=90)
    Image.fromarray(rgb).resize((384, 384)).save(folder / "astronaut_small.jpg", quality=80)
    (folder / "zero.jpg").write_bytes(b"")


class _DoomedConnection:
    """A DuckDB connection whose commit of a write to ``table`` fails (or kills the process)."""

    def __init__(self, con, table: str, kill: bool) -> None:
        self._con, self._table, self._kill, self._armed = con, table, kill, False

    def execute(self, sql: str, *args):
        if sql.startswith("insert into") and f'."{self._table}"' in sql:
            self._armed = True
        if sql == "commit" and self._armed:
            if self._kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise Failure(f"injected failure while writing {self._table}", allow_retries=False)
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._con, name)


@contextlib.contextmanager
def failing_write(table: str, kill: bool = False):
    """While active, the IO manager's write of ``table`` fails before its commit."""
    real = io_manager.locked_connection

    @contextlib.contextmanager
    def patched(database, **kwargs):
        with real(database, **kwargs) as (con, waited):
            yield (con if kwargs.get("read_only") else _DoomedConnection(con, table, kill)), waited

    io_manager.locked_connection = patched
    try:
        yield
    finally:
        io_manager.locked_connection = real


def _tables(database: Path, collection: str) -> dict[str, list]:
    """Every table's rows of ``collection``, sorted (binary columns, and whether a file was
    copied or already present, left out)."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        out = {}
        for table in ASSETS:
            cols = [
                c
                for c, t in con.execute(
                    "select column_name, data_type from information_schema.columns"
                    " where table_schema = 'dedup' and table_name = ?",
                    [table],
                ).fetchall()
                if t != "BLOB" and c != "action"
            ]
            select = ", ".join(f'"{c}"' for c in cols)
            rows = con.execute(
                f'select {select} from dedup."{table}" where collection = ?', [collection]
            ).fetchall()
            out[table] = sorted(rows, key=repr)
        return out
    finally:
        con.close()


def test_a_failed_write_of_any_asset_never_breaks_the_next_run(tmp_path):
    """In one store shared by two collections: each asset's write fails in turn while an
    extra image is present; the next run (without it) equals the run that never failed, and
    the other collection is untouched throughout."""
    source, out, db = tmp_path / "src", tmp_path / "out", tmp_path / "shared.duckdb"
    _collection(source / "photos")
    (source / "single").mkdir()
    Image.fromarray(data.chelsea()).save(source / "single" / "cat.jpg")
    instance = DagsterInstance.ephemeral()
    resources = build_resources(source_root=str(source), output_root=str(out), database=str(db))
    for c in ("photos", "single"):
        assert materialize_collection(instance, c, resources).success
    reference = {c: _tables(db, c) for c in ("photos", "single")}
    report = (out / "photos_deduplicated" / REPORT).read_text()
    assert report.count(",Duplicate,") == 2

    extra = source / "photos" / "coffee_copy.jpg"
    for table in ASSETS:
        extra.write_bytes((source / "photos" / "coffee.jpg").read_bytes())
        with failing_write(table):
            failed = materialize_collection(instance, "photos", resources)
        assert not failed.success, table
        errors = [e for e in failed.all_events if e.is_step_failure]
        assert "injected failure" in str(errors[0].step_failure_data.error), table
        extra.unlink()
        assert materialize_collection(instance, "photos", resources).success, table
        assert _tables(db, "photos") == reference["photos"], table
        assert (out / "photos_deduplicated" / REPORT).read_text() == report, table
    assert _tables(db, "single") == reference["single"]


_KILLED_RUN = textwrap.dedent(
    """
    import sys
    from dedup_assets_tests.test_failures import failing_write
    from dedup_assets.cli import main
    with failing_write(sys.argv[1], kill=True):
        main(["run", sys.argv[2], "--output", sys.argv[3], "--workers", "1"])
    """
)


@pytest.mark.parametrize("table", ["wavelet_hashes", "best_selection"])
def test_cli_killed_while_writing_resumes_with_complete_results(table, tmp_path):
    source, out = tmp_path / "photos", tmp_path / "out"
    _collection(source)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, table, str(source), str(out)],
        env=env, cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    again = subprocess.run(
        [sys.executable, "-m", "dedup_assets.cli", "run", str(source), "--output", str(out), "--workers", "1"],
        env=env, cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "duplicates: 2" in again.stdout and "errors:     1" in again.stdout
    rows = (out / "photos_deduplicated" / REPORT).read_text().splitlines()
    assert len(rows) == 1 + 6
    tables = _tables(out / ".dedup_state" / "dedup_assets.duckdb", "photos")
    assert len(tables["blob_inventory"]) == len(tables["best_selection"]) == 6
