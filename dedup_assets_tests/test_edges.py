"""Collections at the edges: 0, 1, 2 and 3 unrelated images, and only unreadable files.

Every case runs the real CLI (``dedup-assets run``) into a fresh output folder: the run
succeeds, the report has one row per image file (unreadable ones as ``Error`` with a reason),
and every stage's table exists in DuckDB with its declared column types.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image
from skimage import data

from dedup_assets import schemas
from dedup_assets.cli import main, report_path

PHOTOS = {"astronaut.jpg": data.astronaut, "coffee.jpg": data.coffee, "rocket.jpg": data.rocket}


def _photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, load in list(PHOTOS.items())[:n]:
        Image.fromarray(load()).save(folder / name, quality=90)


def _unreadable(folder: Path) -> dict[str, str]:
    """A zero-byte JPEG, a text file named .png and a decompression bomb; path -> reason."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image, whatever the name says\n")
    Image.new("1", (13_000, 13_000)).save(folder / "bomb.png")  # 169 MP > max_pixels
    return {"zero.jpg": "empty", "notes.png": None, "bomb.png": None}


def _report(source: Path, out: Path) -> list[dict]:
    with open(report_path(source, out), newline="") as f:
        return list(csv.DictReader(f))


def _check_tables(out: Path, collection: str) -> None:
    con = duckdb.connect(str(out / ".dedup_state" / "dedup_assets.duckdb"), read_only=True)
    try:
        for table, schema in schemas.TABLES.items():
            found = dict(
                con.execute(
                    "select column_name, data_type from information_schema.columns"
                    " where table_schema = 'dedup' and table_name = ?",
                    [table],
                ).fetchall()
            )
            assert list(found) == list(schema), table
            typed = schemas.empty(schema).to_arrow()  # noqa: F841 - used by name below
            declared = dict(con.execute("select column_name, column_type from (describe typed)").fetchall())
            assert found == declared, table
    finally:
        con.close()


CASES = {
    "empty": (0, False),
    "one": (1, False),
    "two": (2, False),
    "three": (3, False),
    "unreadable-only": (0, True),
    "three-and-unreadable": (3, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_edge_sized_collections_run_and_report_every_file(case, tmp_path, capsys):
    n_photos, broken = CASES[case]
    source = tmp_path / case
    source.mkdir()
    _photos(source, n_photos)
    reasons = _unreadable(source) if broken else {}
    out = tmp_path / "out"

    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    rows = _report(source, out)
    files = sorted(p.name for p in source.iterdir())
    assert sorted(r["Image Path"] for r in rows) == files
    by_path = {r["Image Path"]: r for r in rows}
    for name in PHOTOS:
        if name in by_path:  # unrelated photos: each its own keeper
            assert by_path[name]["Status"] == "Unique" and by_path[name]["Group Size"] == "1"
            assert (out / f"{case}_deduplicated" / "best" / name).read_bytes() == (source / name).read_bytes()
    for name, reason in reasons.items():
        assert by_path[name]["Status"] == "Error" and by_path[name]["Error Reason"]
        if reason:
            assert by_path[name]["Error Reason"] == reason
    assert f"images:     {len(files)}" in printed
    assert "groups:     0 groups" in printed
    _check_tables(out, case)

    if case not in ("empty", "three-and-unreadable"):
        return
    # the same command again: same report
    before = report_path(source, out).read_text()
    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    assert report_path(source, out).read_text() == before


def test_empty_collection_then_duplicates_added(tmp_path, capsys):
    """The state left by a collection without pairs does not break the run that has some."""
    source, out = tmp_path / "photos", tmp_path / "out"
    _photos(source, 1)
    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    rgb = np.asarray(Image.open(source / "astronaut.jpg"))
    Image.fromarray(rgb[:, ::-1]).save(source / "astronaut_mirror.jpg", quality=90)
    Image.fromarray(rgb).resize((384, 384)).save(source / "astronaut_small.jpg", quality=85)
    capsys.readouterr()
    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    rows = {r["Image Path"]: r for r in _report(source, out)}
    assert {r["Status"] for r in rows.values()} == {"Best", "Duplicate"}
    assert len({r["Group ID"] for r in rows.values()}) == 1


def test_tables_typed_from_an_empty_frame_by_an_older_version_are_repaired(tmp_path, capsys):
    """Older versions created a table from the first frame written: an empty collection's pair
    tables got INTEGER columns, and every later write failed ('Could not convert string')."""
    source, out = tmp_path / "photos", tmp_path / "out"
    _photos(source, 2)
    rgb = np.asarray(Image.open(source / "astronaut.jpg"))
    Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(source / "astronaut_mirror.jpg", quality=90)
    db = out / ".dedup_state" / "dedup_assets.duckdb"
    db.parent.mkdir(parents=True)
    con = duckdb.connect(str(db))
    con.execute("create schema dedup")
    for table in ("color_groups", "global_groups", "local_groups"):
        columns = ", ".join(f'"{c}" integer' for c in schemas.TABLES[table])
        con.execute(f"create table dedup.{table} ({columns})")
    con.close()
    assert main(["run", str(source), "--output", str(out), "--workers", "1"]) == 0
    assert "duplicates: 1" in capsys.readouterr().out
    _check_tables(out, "photos")
