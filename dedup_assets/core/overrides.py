"""Analyst overrides: pairs marked "not a duplicate" or "same picture" in DuckDB.

Analysts insert rows into ``dedup.overrides`` (SQL in the README); the next run of
``best_selection`` reads the collection's rows and applies them when forming groups:

- ``same_picture`` (a, b): a must-link edge, added before every verified edge;
- ``not_duplicate`` (a, b): a cannot-link constraint: the edge a–b is dropped, and no other
  chain of edges may join a and b either (edges are merged strongest first; an edge that would
  put a and b into one group is cut).

Pairs are unordered; when a pair has several rows the latest (``created_at``) wins. Paths are
relative to the collection, as in every table; ``collection`` is the partition key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

KINDS = ("not_duplicate", "same_picture")
TABLE = "overrides"

_DDL = """
create table if not exists {schema}.{table} (
    kind varchar not null check (kind in ('not_duplicate', 'same_picture')),
    collection varchar not null,
    path_a varchar not null,
    path_b varchar not null,
    note varchar default '',
    created_at timestamp default current_timestamp,
    check (path_a <> path_b)
)
"""

_SELECT = """
select kind, path_a, path_b, note, created_at from (
    select kind, least(path_a, path_b) as path_a, greatest(path_a, path_b) as path_b,
           coalesce(note, '') as note, created_at,
           row_number() over (
               partition by least(path_a, path_b), greatest(path_a, path_b)
               order by created_at desc nulls last, kind
           ) as rank
    from {schema}.{table}
    where collection = ?
)
where rank = 1
order by path_a, path_b
"""

SCHEMA = {
    "kind": pl.String,
    "path_a": pl.String,
    "path_b": pl.String,
    "note": pl.String,
    "created_at": pl.Datetime("us"),
}


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def ensure_table(con, schema: str = "dedup") -> None:
    """Create the schema and the overrides table when missing (idempotent)."""
    s = _ident(schema)
    con.execute(f"create schema if not exists {s}")
    con.execute(_DDL.format(schema=s, table=TABLE))


def load_overrides(con, collection: str, schema: str = "dedup") -> pl.DataFrame:
    """The collection's overrides, one row per unordered pair (the latest), ``path_a < path_b``."""
    ensure_table(con, schema)
    rows = con.execute(_SELECT.format(schema=_ident(schema), table=TABLE), [collection]).fetchall()
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def empty_overrides() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


@dataclass(frozen=True)
class GroupingEdges:
    """Edges for :func:`dedup_assets.core.grouping.select_keepers`, overrides applied."""

    edges: list[tuple[int, int]]
    cannot_link: list[tuple[int, int]]
    stats: dict = field(default_factory=dict)


def edge_order(pairs: pl.DataFrame) -> pl.DataFrame:
    """Verified pairs strongest first: exact copies, then most inliers, then global similarity."""
    by = [pl.col("source") != "exact"]
    desc = [False]
    for col in ("inliers", "global_similarity", "color_similarity"):
        if col in pairs.columns:
            by.append(pl.col(col).fill_null(-1))
            desc.append(True)
    return pairs.sort([*by, pl.col("path_a"), pl.col("path_b")], descending=[*desc, False, False])


def apply_overrides(
    paths: Sequence[str], pairs: pl.DataFrame, overrides: pl.DataFrame
) -> GroupingEdges:
    """Verified ``pairs`` (path_a, path_b, …) and ``overrides`` as index edges for grouping.

    Must-link edges come first, then the verified edges strongest first (the order matters
    only when there are cannot-link constraints). Overrides naming a path that is not in
    ``paths`` are ignored and counted in ``stats["unknown_path"]``.
    """
    index = {p: i for i, p in enumerate(paths)}
    known = overrides.filter(pl.col("path_a").is_in(list(index)) & pl.col("path_b").is_in(list(index)))
    same = known.filter(pl.col("kind") == "same_picture")
    apart = known.filter(pl.col("kind") == "not_duplicate")
    cut = {(a, b) for a, b in apart.select("path_a", "path_b").iter_rows()}
    ordered = edge_order(pairs)
    edges = [(index[a], index[b]) for a, b in same.select("path_a", "path_b").iter_rows()]
    removed = 0
    for a, b in ordered.select("path_a", "path_b").iter_rows():
        if (min(a, b), max(a, b)) in cut:
            removed += 1
            continue
        edges.append((index[a], index[b]))
    return GroupingEdges(
        edges=edges,
        cannot_link=[(index[a], index[b]) for a, b in cut],
        stats={
            "overrides": overrides.height,
            "same_picture": same.height,
            "not_duplicate": apart.height,
            "unknown_path": overrides.height - known.height,
            "verified_edges_removed": removed,
        },
    )
