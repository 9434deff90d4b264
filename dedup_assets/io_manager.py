"""DuckDB IO manager for polars frames: one table per asset, one partition replaced per write.

- A write replaces exactly its partitions (``collection``, or ``collection`` + ``shard``; a
  run of a range of shards writes them all at once): delete and insert run in one
  transaction, so a crash never leaves a half-written partition and a re-run never
  duplicates rows. Empty frames create empty tables, so the next stage
  always finds its input.
- Every statement takes its values as parameters; identifiers (schema, table, column names)
  come from code, never from collection names, and are quoted.
- DuckDB allows one writing process per file. The connection is opened only inside
  ``handle_output`` / ``load_input`` and only while holding an exclusive lock on
  ``<database>.lock``: runs in other processes wait for it (and log the wait) instead of
  failing on DuckDB's own lock. Image work runs outside the lock, in parallel.
- After each write, the partition's rows (without binary columns) are published for
  analysts as ``<stem>_analyst/<schema>/<table>/<partition>.parquet`` (atomic rename), with a
  read-only ``<stem>_analyst.duckdb`` of views over them: analysts query it while the
  pipeline runs and never hold the writer's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import polars as pl
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    MultiPartitionKey,
    OutputContext,
    TableColumn,
    TableSchema,
)
from pydantic import Field

from . import schemas

#: Input metadata: keep only rows whose column equals this dimension of the downstream
#: partition (``wavelet_hashes`` reads only its shard of ``blob_inventory``). A run of a
#: partition range gets all rows of the upstream partitions and filters them itself.
MATCH_DOWNSTREAM = "dedup/match_downstream_dimension"

_LOCK_ERRORS = ("could not set lock", "conflicting lock")


class DuckDBLockTimeout(RuntimeError):
    """The DuckDB file stayed locked longer than the configured timeout."""


def quote_ident(name: str) -> str:
    """A SQL identifier, quoted (for names that come from code)."""
    return '"' + name.replace('"', '""') + '"'


def _is_local_file(database: str) -> bool:
    return database not in ("", ":memory:") and not re.match(r"^[a-z]+:", database)


@contextlib.contextmanager
def locked_connection(
    database: str, *, read_only: bool = False, timeout_s: float = 3600.0, log=None
) -> Iterator[tuple[duckdb.DuckDBPyConnection, float]]:
    """A DuckDB connection held under the exclusive ``<database>.lock`` file lock.

    Yields ``(connection, seconds waited)``. Waits (polling) for other processes of this
    project; if DuckDB's own lock is held by someone else (an analyst who opened the main
    file), retries with backoff until ``timeout_s``.
    """
    start = time.monotonic()
    lock_file = None
    if _is_local_file(database):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(f"{database}.lock", "a+b")  # noqa: SIM115 - closed below
    try:
        if lock_file is not None:
            warned = False
            while True:
                try:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - start > timeout_s:
                        raise DuckDBLockTimeout(
                            f"{database} stayed locked by another run for {timeout_s:.0f} s"
                        ) from None
                    if log is not None and not warned:
                        log.info(f"waiting for the DuckDB lock on {database}")
                        warned = True
                    time.sleep(0.05)
        delay = 0.1
        while True:
            try:
                if read_only and _is_local_file(database) and not Path(database).exists():
                    con = duckdb.connect(":memory:")
                else:
                    con = duckdb.connect(database, read_only=read_only)
                break
            except duckdb.IOException as exc:
                if not any(m in str(exc).lower() for m in _LOCK_ERRORS):
                    raise
                if time.monotonic() - start > timeout_s:
                    raise DuckDBLockTimeout(
                        f"{database} is held open by another process: {exc}"
                    ) from exc
                if log is not None and delay == 0.1:  # once: the retries are the same story
                    log.warning(
                        f"{database} is held open by another process ({exc}); waiting for it "
                        f"(up to {timeout_s:.0f} s). Analysts: query the read-only "
                        "<stem>_analyst.duckdb instead, which never blocks a run"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        waited = time.monotonic() - start
        try:
            yield con, waited
        finally:
            con.close()
    finally:
        if lock_file is not None:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            lock_file.close()


def open_analyst(path: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """A read-only connection to an analyst views database (``<stem>_analyst.duckdb``),
    wherever its folder now lies: its views name their Parquet files relative to that
    folder, which becomes DuckDB's ``file_search_path``. Never blocks the pipeline."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no analyst database at {path} (written by the first run)")
    con = duckdb.connect(str(path), read_only=True)
    con.execute("set file_search_path = ?", [str(path.parent)])
    return con


def _retype(con, target: str, column: str, found: str, wanted: str, log) -> None:
    """Give ``column`` its declared type (tables written by an older version may have typed
    it from an empty frame). Rows whose value cannot be converted make this fail with what
    to do, inside the write's transaction: nothing is changed then."""
    try:
        con.execute(
            f"alter table {target} alter column {quote_ident(column)} set data type {wanted}"
        )
    except duckdb.Error as exc:
        raise RuntimeError(
            f"{target}.{column} has type {found} where {wanted} is expected, and its rows cannot "
            f"be converted ({exc}); drop the table (it is rebuilt by materialising the asset "
            "again for every partition)"
        ) from exc
    if log is not None:
        log.warning(f"{target}.{column}: type {found} changed to the declared {wanted}")


def _partition_filter(
    partitions_def, partition_expr, keys: Sequence[str | MultiPartitionKey]
) -> tuple[list[str], list[list[str]]]:
    """Columns and per-column value lists of the given partition keys."""
    if isinstance(partition_expr, dict):
        dims = [d.name for d in partitions_def.partitions_defs]
        columns = [partition_expr.get(d, d) for d in dims]
        values: list[list[str]] = [[] for _ in dims]
        for key in keys:
            key = partitions_def.get_partition_key_from_str(str(key))
            for i, d in enumerate(dims):
                values[i].append(key.keys_by_dimension[d])
        return columns, values
    return [partition_expr or "collection"], [[str(k) for k in keys]]


def _partition_expr(context) -> str | dict | None:
    meta = context.definition_metadata or {}
    expr = meta.get("partition_expr")
    return expr.value if hasattr(expr, "value") else expr


def _where_in(columns: list[str], values: list[list[str]]) -> tuple[str, list]:
    """``(c1, c2) in (k1, k2) …`` as a semi-join on unnested list parameters."""
    names = [f"k{i}" for i in range(len(columns))]
    keys = ", ".join(f"unnest(?::varchar[]) as {n}" for n in names)
    match = " and ".join(f"t.{quote_ident(c)} = k.{n}" for c, n in zip(columns, names))
    return f"exists (select 1 from (select {keys}) k where {match})", list(values)


class DedupDuckDBIOManager(ConfigurableIOManager):
    """Stores polars frames in DuckDB tables `<schema>.<asset name>`."""

    database: str = Field(description="Path of the DuckDB file (or a DuckDB connection string).")
    schema_: str = Field(default="dedup", alias="schema", description="Schema of the tables.")
    lock_timeout_s: float = Field(
        default=3600.0, description="How long a run waits for the DuckDB lock before failing."
    )
    publish_analyst: bool = Field(
        default=True,
        description="Publish each written partition as Parquet + a read-only views database.",
    )

    # ------------------------------------------------------------------ analyst files

    @property
    def analyst_dir(self) -> Path:
        return Path(self.database).with_name(Path(self.database).stem + "_analyst")

    @property
    def embeddings_dir(self) -> Path | None:
        """Where the global stage keeps image embeddings between runs
        (``<stem>_embeddings/`` beside the DuckDB file; None when the database is not a file)."""
        if not _is_local_file(self.database):
            return None
        return Path(self.database).with_name(Path(self.database).stem + "_embeddings")

    @property
    def analyst_database(self) -> Path:
        return Path(self.database).with_name(Path(self.database).stem + "_analyst.duckdb")

    def _publish_partitions(
        self, table: str, columns: list[str], value_lists: list[list[str]], frame: pl.DataFrame
    ) -> None:
        """One Parquet file per written partition (all of the table when unpartitioned), then
        the views database once."""
        if not (self.publish_analyst and _is_local_file(self.database)):
            return
        if not columns:
            self._publish(table, [], frame)
        else:
            for values in zip(*value_lists):
                mine = frame.filter(
                    pl.all_horizontal(pl.col(c) == v for c, v in zip(columns, values))
                )
                self._publish(table, list(values), mine)
        self._write_views()  # a few ms; also upgrades views written by older versions

    def _publish(self, table: str, values: list[str], frame: pl.DataFrame) -> None:
        folder = self.analyst_dir / self.schema_ / table
        folder.mkdir(parents=True, exist_ok=True)
        stem = "-".join(values) or "all"
        if not re.fullmatch(r"[a-z0-9_-]{1,100}", stem):
            stem = "p" + hashlib.sha1(stem.encode()).hexdigest()[:16]
        keep = [c for c, t in frame.schema.items() if t != pl.Binary]
        tmp = folder / f".{stem}.parquet.partial"
        frame.select(keep).write_parquet(tmp)
        os.replace(tmp, folder / f"{stem}.parquet")

    def _write_views(self) -> None:
        """Rebuild the views database next to the old one, then rename it into place."""
        root = self.analyst_dir
        fd, tmp = tempfile.mkstemp(suffix=".duckdb", dir=root.parent, prefix=".analyst-")
        os.close(fd)
        os.unlink(tmp)
        con = duckdb.connect(tmp)
        try:
            con.execute("set file_search_path = ?", [str(root.parent.resolve())])
            for schema_dir in sorted(p for p in root.iterdir() if p.is_dir()):
                con.execute(f"create schema if not exists {quote_ident(schema_dir.name)}")
                for table_dir in sorted(p for p in schema_dir.iterdir() if p.is_dir()):
                    # relative to the views database's folder, so the folder can move (see
                    # open_analyst); DDL takes no parameters: the glob is our own folder, quoted
                    glob = f"{root.name}/{schema_dir.name}/{table_dir.name}/*.parquet".replace("'", "''")
                    con.execute(
                        f"create or replace view {quote_ident(schema_dir.name)}."
                        f"{quote_ident(table_dir.name)} as select * from "
                        f"read_parquet('{glob}', union_by_name = true)"
                    )
        finally:
            con.close()
        os.replace(tmp, self.analyst_database)

    # ------------------------------------------------------------------ IO manager

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a polars DataFrame")
        table = context.asset_key.path[-1]
        target = f"{quote_ident(self.schema_)}.{quote_ident(table)}"
        columns: list[str] = []
        value_lists: list[list[str]] = []
        if context.has_asset_partitions:
            # one partition, or several (a range of shards run together): all replaced at once
            columns, value_lists = _partition_filter(
                context.asset_partitions_def, _partition_expr(context), context.asset_partition_keys
            )
            for column in columns:
                if column not in obj.columns:
                    raise ValueError(f"{table}: the frame has no partition column {column!r}")
            if obj.height:
                keys = pl.DataFrame(dict(zip(columns, value_lists)), schema=dict.fromkeys(columns, pl.String))
                outside = obj.select(columns).unique().join(keys, on=columns, how="anti")
                if outside.height:
                    found = ", ".join(f"{c}={v!r}" for c, v in zip(columns, outside.row(0)))
                    raise ValueError(f"{table}: rows outside the run's partitions ({found})")
        declared = schemas.TABLES.get(table)
        if declared is not None:
            obj = schemas.conform(table, obj)
        # the table's types come from its declared schema, never from this frame (an empty
        # frame has untyped columns, and a table made from one would refuse every later write)
        typed = schemas.empty(declared) if declared is not None else obj.clear()
        with locked_connection(
            self.database, timeout_s=self.lock_timeout_s, log=context.log
        ) as (con, waited):
            con.register("frame", obj.to_arrow())
            con.register("typed", typed.to_arrow())
            con.execute(f"create schema if not exists {quote_ident(self.schema_)}")
            con.execute("begin transaction")
            con.execute(f"create table if not exists {target} as select * from typed")
            existing = dict(
                con.execute(
                    "select column_name, data_type from information_schema.columns"
                    " where table_schema = ? and table_name = ?",
                    [self.schema_, table],
                ).fetchall()
            )
            for name, sql_type in con.execute("select column_name, column_type from (describe typed)").fetchall():
                if name not in existing:  # a column added by a newer version of the asset
                    con.execute(f"alter table {target} add column {quote_ident(name)} {sql_type}")
                elif existing[name] != sql_type:  # e.g. typed from an empty frame by an older version
                    _retype(con, target, name, existing[name], sql_type, context.log)
            if columns:
                where, params = _where_in(columns, value_lists)
                con.execute(f"delete from {target} t where {where}", params)
            else:
                con.execute(f"delete from {target}")
            con.execute(f"insert into {target} by name select * from frame")
            con.execute("commit")
            self._publish_partitions(table, columns, value_lists, obj)
        context.add_output_metadata(
            {
                "row_count": obj.height,
                "table": f"{self.schema_}.{table}",
                "duckdb_lock_wait_s": round(waited, 3),
                "dataframe_columns": MetadataValue.table_schema(
                    TableSchema(columns=[TableColumn(n, str(t)) for n, t in obj.schema.items()])
                ),
            }
        )

    def load_input(self, context: InputContext) -> pl.DataFrame:
        table = context.asset_key.path[-1]
        target = f"{quote_ident(self.schema_)}.{quote_ident(table)}"
        clauses: list[str] = []
        params: list = []
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            upstream_def = context.upstream_output.definition_metadata if context.upstream_output else {}
            expr = upstream_def.get("partition_expr") if upstream_def else None
            expr = expr.value if hasattr(expr, "value") else expr
            columns, value_lists = _partition_filter(context.asset_partitions_def, expr, keys)
            sql, p = _where_in(columns, value_lists)
            clauses.append(sql)
            params += p
        match = (context.definition_metadata or {}).get(MATCH_DOWNSTREAM)
        if match and context.has_partition_key:  # a run of a partition range keeps its own rows
            step_key = context.partition_key
            if not isinstance(step_key, MultiPartitionKey):
                raise ValueError(f"{table}: {MATCH_DOWNSTREAM} needs a multi-partitioned step")
            clauses.append(f"t.{quote_ident(match)} = ?")
            params.append(step_key.keys_by_dimension[match])
        where = f" where {' and '.join(clauses)}" if clauses else ""
        columns = (context.definition_metadata or {}).get("columns")
        select = ", ".join(f"t.{quote_ident(c)}" for c in columns) if columns else "t.*"
        with locked_connection(
            self.database, read_only=True, timeout_s=self.lock_timeout_s, log=context.log
        ) as (con, _):
            exists = con.execute(
                "select count(*) from information_schema.tables"
                " where table_schema = ? and table_name = ?",
                [self.schema_, table],
            ).fetchone()[0]
            if not exists:
                raise FileNotFoundError(
                    f"table {self.schema_}.{table} does not exist in {self.database}: "
                    f"materialise {table} first"
                )
            return con.execute(f"select {select} from {target} t{where}", params).pl()
