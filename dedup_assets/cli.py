"""Command line: ``dedup-assets run SOURCE_DIR --output OUT_DIR`` and friends.

``run`` materialises the whole asset graph in-process for one folder (one collection). Its
Dagster instance and DuckDB file live in ``OUT_DIR/.dedup_state/`` so that results stay
queryable and a second run finds the first one's state.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from pathlib import Path

DEMO_DIR = Path("data")
DEMO_COLLECTION = "sample-photos"


def _state_dir(out: Path) -> Path:
    return out / ".dedup_state"


def _say(message: str) -> None:
    print(f"dedup-assets: {message}", file=sys.stderr, flush=True)


def run_collection(
    source: Path,
    out: Path,
    *,
    workers: int = 0,
    embedder=None,
    verbose: bool = False,
    run_config: dict | None = None,
):
    """Materialise every asset for ``source`` as one collection (see :mod:`.runner`); the
    Dagster instance under ``OUT/.dedup_state`` says which shards are already analysed, so
    a killed run started again resumes where it stopped. Returns a ``CollectionRun``."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from .core.store import collection_slug
    from .definitions import build_resources
    from .runner import materialize_collection

    source, out = source.resolve(), out.resolve()
    if not source.is_dir():
        raise SystemExit(f"dedup-assets: {source} is not a folder")
    if source.parent == source:
        raise SystemExit("dedup-assets: the source cannot be the file system root")
    if out == source or source in out.parents:
        raise SystemExit(
            f"dedup-assets: the output {out} lies inside the source {source}; "
            "the source collection is never written to"
        )
    state = _state_dir(out)
    (state / "dagster").mkdir(parents=True, exist_ok=True)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(state / "dagster")))
    key = collection_slug(source.name)
    op_config: dict = {}
    if workers:
        for name in ("wavelet_hashes", "global_groups", "local_groups"):
            op_config[name] = {"workers": workers}
    for op, extra in (run_config or {}).get("ops", {}).items():
        op_config.setdefault(op, {}).update(extra["config"])
    resources = build_resources(
        source_root=str(source.parent),
        output_root=str(out),
        database=str(state / "dedup_assets.duckdb"),
        embedder=embedder,
    )
    return materialize_collection(
        instance, key, resources, op_config=op_config, verbose=verbose, say=_say
    )


def report_path(source: Path, out: Path) -> Path:
    from .core.report import REPORT_NAME
    from .core.store import DEDUP_SUFFIX

    return out.resolve() / f"{source.resolve().name}{DEDUP_SUFFIX}" / REPORT_NAME


def _copy_counts(result) -> str:
    """'N copied, M already present' from the deduplicated_files materialisation."""
    for m in result.asset_materializations_for_node("deduplicated_files"):
        meta = m.metadata
        copied, skipped = meta["copied"].value, meta["skipped_identical"].value
        return f"{copied} copied, {skipped} already present"
    return "none"


def _summary(source: Path, out: Path, seconds: float, copies: str = "", shards: str = "") -> str:
    path = report_path(source, out)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    status = Counter(r["Status"] for r in rows)
    groups = len({r["Group ID"] for r in rows if r["Status"] in ("Best", "Duplicate")})
    return "\n".join(
        [
            f"images:     {len(rows)} ({len(rows) / seconds:.1f} images/s)",
            f"groups:     {groups} groups of duplicates",
            f"duplicates: {status['Duplicate']}",
            f"unique:     {status['Unique']}",
            f"errors:     {status['Error']}",
            f"copies:     {copies}",
            f"shards:     {shards}",
            f"time:       {seconds:.1f} s",
            f"report:     {path}",
        ]
    )


def _cmd_run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = run_collection(
        Path(args.source), Path(args.output), workers=args.workers, verbose=args.verbose
    )
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        print("dedup-assets: the run failed", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    shards = f"{result.shards} ({result.resumed} already analysed)"
    print(_summary(Path(args.source), Path(args.output), seconds, _copy_counts(result), shards))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .core.sample import make_sample_collection

    truth = make_sample_collection(args.dest)
    n = sum(1 for p in Path(args.dest).rglob("*") if p.is_file())
    print(f"wrote {n} files ({len(truth['groups'])} duplicate groups) to {args.dest}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .core.sample import make_sample_collection

    source = Path(args.data) / "collections" / DEMO_COLLECTION
    if not source.exists():
        make_sample_collection(source)
        print(f"sample collection written to {source}")
    args.source, args.output = str(source), str(Path(args.data) / "output")
    return _cmd_run(args)


def _cmd_backfill(args: argparse.Namespace) -> int:
    from .backfill import add_collections, backfill_status, launch_backfill

    add_collections(args.url, args.collections)
    backfill_id = launch_backfill(args.url, args.collections)
    print(f"backfill {backfill_id} launched for {', '.join(args.collections)}")
    if not args.wait:
        return 0
    while (status := backfill_status(args.url, backfill_id)) in ("REQUESTED", "CANCELING"):
        time.sleep(5)
    print(f"backfill {backfill_id}: {status}")
    return 0 if status in ("COMPLETED", "COMPLETED_SUCCESS") else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run

    return run(args.name, args.options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dedup-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="deduplicate one folder (one collection)")
    run.add_argument("source", help="folder of images (searched recursively)")
    run.add_argument("--output", required=True, help="folder receiving <name>_deduplicated/")
    demo = sub.add_parser("demo", help="make the sample collection and deduplicate it")
    demo.add_argument("--data", default=str(DEMO_DIR), help="folder for the demo (default: data)")
    for p in (run, demo):
        p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
        p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's INFO logs")
    run.set_defaults(fn=_cmd_run)
    demo.set_defaults(fn=_cmd_demo)

    sample = sub.add_parser("sample", help="write the sample collection to a folder")
    sample.add_argument("dest")
    sample.set_defaults(fn=_cmd_sample)

    backfill = sub.add_parser(
        "backfill", help="backfill whole collections through a running Dagster (GraphQL)"
    )
    backfill.add_argument("collections", nargs="+", help="collection partition keys")
    backfill.add_argument("--url", default="http://127.0.0.1:3000", help="Dagster webserver")
    backfill.add_argument("--wait", action="store_true", help="wait until it finishes")
    backfill.set_defaults(fn=_cmd_backfill)

    bench = sub.add_parser("bench", help="run a benchmark: dedup-assets bench NAME --help")
    bench.add_argument("name", help="benchmark name (a module of dedup_assets.bench)")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(fn=_cmd_bench)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
