"""Operating it: partitioned writes, hostile collection names, asset checks."""


import csv

import duckdb
import polars as pl
from dagster import AssetIn, Config, DagsterInstance, asset, materialize
from PIL import ImageOps

from dedup_assets.checks import every_image_once, one_keeper_per_group, single_collection
from dedup_assets.core.sample import _jpeg, load_photo
from dedup_assets.core.store import collection_slug
from dedup_assets.definitions import build_resources
from dedup_assets.io_manager import MATCH_DOWNSTREAM, DedupDuckDBIOManager, open_analyst
from dedup_assets.partitions import (
    by_collection,
    collection_shards_partitions,
    collections_partitions,
    shard_partition_key,
)
from dedup_assets.runner import materialize_collection

# ----------------------------------------------------------------- the IO manager's partitions


class RowsConfig(Config):
    n: int = 2
    tag: str = "a"


@asset(
    partitions_def=collection_shards_partitions,
    metadata={"partition_expr": {"collection": "collection", "shard": "shard"}},
)
def shard_rows(context, config: RowsConfig) -> pl.DataFrame:
    key = context.partition_key.keys_by_dimension
    return pl.DataFrame(
        {
            "collection": [key["collection"]] * config.n,
            "shard": [key["shard"]] * config.n,
            "path": [f"{key['shard']}/{i}" for i in range(config.n)],
            "tag": [config.tag] * config.n,
        }
    )


@asset(
    partitions_def=collections_partitions,
    metadata={"partition_expr": "collection"},
    ins={"shard_rows": AssetIn(partition_mapping=by_collection)},
)
def collected(context, shard_rows: pl.DataFrame) -> pl.DataFrame:
    return shard_rows.sort("path")


@asset(
    partitions_def=collection_shards_partitions,
    metadata={"partition_expr": {"collection": "collection", "shard": "shard"}},
    ins={"collected": AssetIn(partition_mapping=by_collection, metadata={MATCH_DOWNSTREAM: "shard"})},
)
def per_shard(context, collected: pl.DataFrame) -> pl.DataFrame:
    return collected


def test_io_manager_replaces_exactly_the_written_partition(tmp_path):
    db = tmp_path / "ops.duckdb"
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("collections", ["c1", "c2"])
    resources = {"io_manager": DedupDuckDBIOManager(database=str(db))}
    assets = [shard_rows, collected, per_shard]

    def run(selection, key, **config):
        result = materialize(
            assets,
            selection=selection,
            partition_key=key,
            resources=resources,
            instance=instance,
            run_config={"ops": {"shard_rows": {"config": config}}} if config else None,
        )
        assert result.success
        return result

    run([shard_rows], shard_partition_key("c1", "s000"), n=3, tag="a")
    run([shard_rows], shard_partition_key("c1", "s001"), n=2, tag="a")
    run([shard_rows], shard_partition_key("c2", "s000"), n=1, tag="a")
    result = run([shard_rows], shard_partition_key("c1", "s000"), n=1, tag="b")
    meta = result.asset_materializations_for_node("shard_rows")[0].metadata
    assert meta["row_count"].value == 1 and meta["table"].value == "dedup.shard_rows"

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "select collection, shard, tag, count(*) from dedup.shard_rows group by all order by all"
    ).fetchall()
    con.close()
    assert rows == [("c1", "s000", "b", 1), ("c1", "s001", "a", 2), ("c2", "s000", "a", 1)]

    # a collection-level asset reads every shard of its collection and nothing else
    run([collected], "c1")
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select path, tag from dedup.collected order by path").fetchall() == [
        ("s000/0", "b"),
        ("s001/0", "a"),
        ("s001/1", "a"),
    ]
    con.close()
    # a shard reads only its own rows of a collection-level input
    run([per_shard], shard_partition_key("c1", "s001"))
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select path from dedup.per_shard order by path").fetchall() == [
        ("s001/0",),
        ("s001/1",),
    ]
    con.close()
    # each write was published for analysts
    analyst = open_analyst(tmp_path / "ops_analyst.duckdb")
    assert analyst.execute("select count(*) from dedup.shard_rows").fetchone()[0] == 4
    analyst.close()


# ----------------------------------------------------------------- hostile collection names

HOSTILE = "Tom's \"best\" Fotos ü 日本 '; DROP TABLE dedup.best_selection; --"


def test_collection_with_quotes_spaces_unicode_and_sql_is_processed(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    astro, chelsea = load_photo("astronaut"), load_photo("chelsea")
    for name in (HOSTILE, "plain"):
        folder = root / name / "sub dir 'x'"
        folder.mkdir(parents=True)
        (folder / "astronaut.jpg").write_bytes(_jpeg(astro))
        (folder / "astronaut mirror ü.jpg").write_bytes(_jpeg(ImageOps.mirror(astro), quality=40))
        (root / name / "chelsea'; --.jpg").write_bytes(_jpeg(chelsea))
    db = out / "results.duckdb"
    resources = build_resources(source_root=str(root), output_root=str(out), database=str(db))
    instance = DagsterInstance.ephemeral()
    keys = {name: collection_slug(name) for name in (HOSTILE, "plain")}
    assert keys[HOSTILE] != HOSTILE and set(keys[HOSTILE]) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    for key in keys.values():
        assert materialize_collection(instance, key, resources).success

    con = duckdb.connect(str(db), read_only=True)
    try:
        prefixes = dict(con.execute("select distinct collection, prefix from dedup.blob_inventory").fetchall())
        assert prefixes == {keys[HOSTILE]: HOSTILE, "plain": "plain"}
        per_collection = dict(
            con.execute("select collection, count(*) from dedup.best_selection group by 1").fetchall()
        )
        assert per_collection == {keys[HOSTILE]: 3, "plain": 3}
        statuses = con.execute(
            "select path, status from dedup.best_selection where collection = ? order by path",
            [keys[HOSTILE]],
        ).fetchall()
    finally:
        con.close()
    assert statuses == [
        ("chelsea'; --.jpg", "Unique"),
        ("sub dir 'x'/astronaut mirror ü.jpg", "Duplicate"),
        ("sub dir 'x'/astronaut.jpg", "Best"),
    ]
    dedup = out / f"{HOSTILE}_deduplicated"
    with open(dedup / "image_report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (dedup / "best" / "sub dir 'x'" / "astronaut.jpg").is_file()
    assert (dedup / "duplicates" / "sub dir 'x'" / "astronaut mirror ü.jpg").is_file()
    assert not (root / HOSTILE / f"{HOSTILE}_deduplicated").exists()


# ----------------------------------------------------------------- checks on bad data


def _selection(rows):
    return pl.DataFrame(
        rows,
        schema={
            "collection": pl.String,
            "path": pl.String,
            "status": pl.String,
            "group_id": pl.String,
            "group_size": pl.Int32,
            "keeper_path": pl.String,
        },
        orient="row",
    )


GOOD = [
    ("c", "a.jpg", "Best", "g1", 2, "a.jpg"),
    ("c", "b.jpg", "Duplicate", "g1", 2, "a.jpg"),
    ("c", "c.jpg", "Unique", "g2", 1, "c.jpg"),
    ("c", "d.jpg", "Error", None, 0, None),
]
INVENTORY = pl.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]})


def test_checks_pass_on_good_selection():
    sel = _selection(GOOD)
    assert every_image_once(INVENTORY, sel) == {}
    assert one_keeper_per_group(sel) == {}
    assert single_collection("c", INVENTORY, sel) == {}


def test_checks_fail_on_bad_selection():
    missing_and_doubled = _selection(GOOD[:2] + [GOOD[1]] + GOOD[2:3] + [("c", "x.jpg", "Unique", "g3", 1, "x.jpg")])
    problems = every_image_once(INVENTORY, missing_and_doubled)
    assert problems == {"missing": ["d.jpg"], "not_inventoried": ["x.jpg"], "duplicated": ["b.jpg"]}

    two_keepers = _selection([GOOD[0], ("c", "b.jpg", "Best", "g1", 2, "a.jpg")] + GOOD[2:])
    assert one_keeper_per_group(two_keepers) == {"bad_groups": ["g1"]}
    no_keeper = _selection([("c", "a.jpg", "Duplicate", "g1", 2, "a.jpg")] + GOOD[1:])
    assert one_keeper_per_group(no_keeper) == {"bad_groups": ["g1"]}
    keeper_outside = _selection([("c", "a.jpg", "Best", "g1", 2, "z.jpg"), ("c", "b.jpg", "Duplicate", "g1", 2, "z.jpg")] + GOOD[2:])
    assert one_keeper_per_group(keeper_outside) == {"bad_groups": ["g1"]}

    mixed = _selection(GOOD[:1] + [("other", "b.jpg", "Duplicate", "g1", 2, "a.jpg")] + GOOD[2:])
    assert single_collection("c", INVENTORY, mixed) == {"rows_of_other_collections": 1}
    foreign = _selection(GOOD[:1] + [("c", "elsewhere/b.jpg", "Duplicate", "g1", 2, "a.jpg")] + GOOD[2:])
    assert single_collection("c", INVENTORY, foreign) == {"groups_with_foreign_members": ["g1"]}
