"""DuckDB IO manager for polars frames: one table per asset, partitions replaced on re-run.

dagster-duckdb-polars' handler skips empty frames (so a collection without duplicates would
leave no table for the next stage to read) and reads through an API that newer duckdb
releases changed; this handler writes empty frames as empty tables and reads with ``.pl()``.
Deleting the partition's old rows and inserting the new ones run in one transaction, so a
crash never leaves a half-written partition.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from dagster import InputContext, MetadataValue, OutputContext, TableColumn, TableSchema
from dagster._core.storage.db_io_manager import DbIOManager, DbTypeHandler, TableSlice
from dagster_duckdb.io_manager import DuckDbClient, DuckDBIOManager, _get_cleanup_statement


class PolarsFrameHandler(DbTypeHandler[pl.DataFrame]):
    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pl.DataFrame, connection
    ):
        frame = obj.to_arrow()  # noqa: F841 - referenced by name in the SQL below
        table = f"{table_slice.schema}.{table_slice.table}"
        connection.execute(f"create table if not exists {table} as select * from frame where false")
        connection.execute(f"insert into {table} by name select * from frame")
        connection.execute("commit")
        return {
            "row_count": obj.height,
            "dataframe_columns": MetadataValue.table_schema(
                TableSchema(columns=[TableColumn(n, str(t)) for n, t in obj.schema.items()])
            ),
        }

    def load_input(self, context: InputContext, table_slice: TableSlice, connection) -> pl.DataFrame:
        if table_slice.partition_dimensions and len(context.asset_partition_keys) == 0:
            return pl.DataFrame()
        return connection.execute(DuckDbClient.get_select_statement(table_slice)).pl()

    @property
    def supported_types(self):
        return [pl.DataFrame]


class _TransactionalClient(DuckDbClient):
    """Deletes the old partition inside a transaction that the handler's insert commits."""

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection) -> None:
        connection.execute("begin transaction")
        exists = connection.execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [table_slice.schema, table_slice.table],
        ).fetchone()[0]
        if exists:
            connection.execute(_get_cleanup_statement(table_slice))


class DedupDuckDBIOManager(DuckDBIOManager):
    """Stores polars frames in DuckDB (schema ``dedup`` by default)."""

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [PolarsFrameHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pl.DataFrame

    def create_io_manager(self, context) -> DbIOManager:
        return DbIOManager(
            db_client=_TransactionalClient(),
            database=self.database,
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="DedupDuckDBIOManager",
        )
