"""Command line: ``dedup-assets run SOURCE_DIR --output OUT_DIR`` and friends.

``run`` materialises the whole asset graph in-process for one folder (one collection). Its
Dagster instance and DuckDB file live in ``OUT_DIR/.dedup_state/`` so that results stay
queryable and a second run finds the first one's state. ``run az://CONTAINER/PREFIX`` does
the same for a prefix of an Azure Blob Storage container (account and credentials from the
environment, see README); its state goes to ``./.dedup_state/<container>-<prefix>/``.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from .core.text import help_text, plural

DEMO_DIR = Path("data")
DEMO_COLLECTION = "sample-photos"


def _state_dir(out: Path) -> Path:
    return out / ".dedup_state"


def _say(message: str) -> None:
    print(f"dedup-assets: {message}", file=sys.stderr, flush=True)


def _interrupted(signal_name: str) -> None:
    _say(
        f"interrupted by {signal_name}: finished steps are kept, the one running is not; "
        "run the same command again to resume"
    )


#: steps print straight to the terminal: capturing their output costs two helper processes
#: per run (``tail -F`` and its watcher), which a Ctrl-C to the terminal makes print tracebacks
_NO_LOG_CAPTURE = {
    "compute_logs": {
        "module": "dagster.core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


def _materialise(resources: dict, key: str, state: Path, *, workers, verbose, run_config):
    """Every asset of collection ``key`` (see :mod:`.runner`), with the Dagster instance in
    ``state/dagster``: it says which shards are already analysed, so a killed run started
    again resumes where it stopped. Returns a ``CollectionRun``."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from .runner import materialize_collection

    (state / "dagster").mkdir(parents=True, exist_ok=True)
    ref = InstanceRef.from_dir(str(state / "dagster"), overrides=_NO_LOG_CAPTURE)
    instance = DagsterInstance.from_ref(ref)
    op_config: dict = {}
    if workers:
        for name in ("wavelet_hashes", "global_groups", "local_groups"):
            op_config[name] = {"workers": workers}
    for op, extra in (run_config or {}).get("ops", {}).items():
        op_config.setdefault(op, {}).update(extra["config"])
    return materialize_collection(
        instance, key, resources, op_config=op_config, verbose=verbose, say=_say
    )


def run_collection(
    source: Path,
    out: Path,
    *,
    workers: int = 0,
    embedder=None,
    verbose: bool = False,
    run_config: dict | None = None,
    state: Path | None = None,
):
    """Materialise every asset for ``source`` as one collection; returns a ``CollectionRun``."""
    from .core.store import LocalFolderStore, collection_slug, probe_folder

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
    state = state or _state_dir(out)
    # ConfigurationError (exit 2) in a second, before Dagster is even imported
    LocalFolderStore(str(source.parent), str(out)).preflight(source.name)
    probe_folder(state, "the state folder (--state)")
    from .definitions import build_resources

    resources = build_resources(
        source_root=str(source.parent),
        output_root=str(out),
        database=str(state / "dedup_assets.duckdb"),
        embedder=embedder,
    )
    return _materialise(
        resources,
        collection_slug(source.name),
        state,
        workers=workers,
        verbose=verbose,
        run_config=run_config,
    )


def azure_target(source: str, output: str | None = None):
    """The Azure store resource and collection for ``az://CONTAINER/PREFIX`` (and ``--output``)."""
    import os

    from .core.azure_store import parse_az_url
    from .definitions import azure_store_from_env

    try:
        container, prefix = parse_az_url(source)
        out_container, out_prefix = parse_az_url(output) if output else (None, None)
    except ValueError as exc:
        raise SystemExit(f"dedup-assets: {exc}") from None
    if not prefix:
        raise SystemExit("dedup-assets: give the collection's prefix: az://CONTAINER/PREFIX")
    if (out_container or container) == container and out_prefix is not None:
        if out_prefix == prefix or out_prefix.startswith(prefix + "/"):
            raise SystemExit(
                f"dedup-assets: the output {output} lies inside the source {source}; "
                "the source collection is never written to"
            )
    if not (os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or os.environ.get("DEDUP_AZURE_ACCOUNT_URL")):
        raise SystemExit(
            "dedup-assets: set AZURE_STORAGE_CONNECTION_STRING, or DEDUP_AZURE_ACCOUNT_URL with "
            "AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or a DefaultAzureCredential login"
        )
    parent, _, name = prefix.rpartition("/")
    store = azure_store_from_env(
        container=container,
        prefix=parent,
        collections=[name],
        output_container=out_container,
        output_prefix=out_prefix,
    )
    return store, name


def default_azure_state(source: str) -> Path:
    from .core.store import collection_slug

    return Path(".dedup_state") / collection_slug(source[len("az://"):])


def run_azure_collection(
    source: str,
    output: str | None = None,
    *,
    state: Path | None = None,
    workers: int = 0,
    embedder=None,
    verbose: bool = False,
    run_config: dict | None = None,
):
    """Materialise every asset for the Azure prefix ``source`` (``az://CONTAINER/PREFIX``)."""
    from .core.store import collection_slug, probe_folder
    from .definitions import build_resources

    store, name = azure_target(source, output)
    with store.process_config_and_initialize_cm() as ready:  # EnvVars resolved
        ready.get_store().preflight(name)  # ConfigurationError: exit 2, before any Dagster run
    state = (state or default_azure_state(source)).resolve()
    probe_folder(state, "the state folder (--state)")
    resources = build_resources(
        store=store, database=str(state / "dedup_assets.duckdb"), embedder=embedder
    )
    return _materialise(
        resources,
        collection_slug(name),
        state,
        workers=workers,
        verbose=verbose,
        run_config=run_config,
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


def _summary(
    rows: list[dict], seconds: float, copies: str, report: str, shards: str = "",
    work_seconds: float = 0.0,
) -> str:
    """The lines `run` prints. The rate is over `work_seconds`, the time the stages spent on
    the images: a small run spends most of `seconds` starting Dagster runs."""
    status = Counter(r["Status"] for r in rows)
    groups = len({r["Group ID"] for r in rows if r["Status"] in ("Best", "Duplicate")})
    if work_seconds > 0:
        rate = f"{len(rows) / work_seconds:.1f} images/s of image work"
        time_line = f"{seconds:.1f} s ({work_seconds:.1f} s of image work, the rest start-up)"
    else:
        rate, time_line = f"{len(rows) / seconds:.1f} images/s with start-up", f"{seconds:.1f} s"
    return "\n".join(
        [
            f"images:     {len(rows)} ({rate})",
            f"groups:     {plural(groups, 'group')} of duplicates",
            f"duplicates: {status['Duplicate']}",
            f"unique:     {status['Unique']}",
            f"errors:     {status['Error']}",
            f"copies:     {copies}",
            f"shards:     {shards}",
            f"time:       {time_line}",
            f"report:     {report}",
        ]
    )


def report_failure(result) -> int:
    """Say why a Dagster run failed; the exit code: 2 for a configuration error met by an
    asset (one line, see ``assets.fail_fast``), else 1 (the failures' messages)."""
    for event in result.all_events:
        failure = event.step_failure_data.user_failure_data if event.is_step_failure else None
        kind = getattr((failure.metadata if failure else {}).get("error"), "value", None)
        if kind == "configuration":
            _say(failure.description)
            return 2
    for event in result.all_events:
        if event.is_failure:
            print(event.message, file=sys.stderr)
    print("dedup-assets: the run failed", file=sys.stderr)
    return 1


def _cmd_run(args: argparse.Namespace) -> int:
    from .core.parallel import default_workers, start_forkserver
    from .core.report import REPORT_NAME

    start = time.perf_counter()
    if (args.workers or default_workers()) > 1:
        start_forkserver()  # its workers' modules load while Dagster starts
    state = Path(args.state) if args.state else None
    azure = args.source.startswith("az://")
    if azure:
        result = run_azure_collection(
            args.source, args.output, state=state, workers=args.workers, verbose=args.verbose
        )
    else:
        if not args.output or args.output.startswith("az://"):
            raise SystemExit("dedup-assets: a folder source needs --output OUT_DIR (a folder)")
        result = run_collection(
            Path(args.source), Path(args.output), workers=args.workers, verbose=args.verbose,
            state=state,
        )
    if not result.success:
        return report_failure(result)
    seconds = time.perf_counter() - start
    if azure:
        store, name = azure_target(args.source, args.output)
        with store.process_config_and_initialize_cm() as ready:  # EnvVars resolved
            image_store = ready.get_store()
            text = image_store.read_output(name, REPORT_NAME).decode("utf-8")
            report = f"{image_store.output_location(name)}/{REPORT_NAME}"
    else:
        report = str(report_path(Path(args.source), Path(args.output)))
        text = Path(report).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    shards = f"{result.shards} ({result.resumed} already analysed)"
    print(_summary(rows, seconds, _copy_counts(result), report, shards, result.work_seconds))
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
    args.state = None
    return _cmd_run(args)


def _cmd_backfill(args: argparse.Namespace) -> int:
    from .backfill import add_collections, launch_backfill, wait_for_backfill

    add_collections(args.url, args.collections)
    backfill_id = launch_backfill(args.url, args.collections)
    print(f"backfill {backfill_id} launched for {', '.join(args.collections)}")
    if not args.wait:
        return 0
    status = wait_for_backfill(args.url, backfill_id, say=lambda line: print(line, flush=True))
    return 0 if status in ("COMPLETED", "COMPLETED_SUCCESS") else 1


def analyst_database(path: Path) -> Path:
    """The analyst views database for a path: the file itself, or the one in a state folder
    or in an output folder's ``.dedup_state``."""
    if path.is_file():
        return path
    for folder in (path, _state_dir(path)):
        found = sorted(folder.glob("*_analyst.duckdb")) if folder.is_dir() else []
        if found:
            return found[0]
    raise SystemExit(f"dedup-assets: no *_analyst.duckdb in {path} or {_state_dir(path)}")


def _cmd_sql(args: argparse.Namespace) -> int:
    from .io_manager import open_analyst

    con = open_analyst(analyst_database(Path(args.database)))
    try:
        result = con.sql(args.query)
        if result is None:
            return 0
        if args.csv:
            frame = result.pl()
            sys.stdout.write(frame.write_csv())
        else:
            result.show(max_rows=args.max_rows, max_width=10_000)
    finally:
        con.close()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run

    return run(args.name, args.options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dedup-assets", description=help_text(__doc__.splitlines()[0])
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="deduplicate one folder (one collection)")
    run.add_argument(
        "source", help="folder of images, or az://CONTAINER/PREFIX (searched recursively)"
    )
    run.add_argument(
        "--output",
        help="folder receiving <name>_deduplicated/ (required for a folder); for az:// sources "
        "az://CONTAINER/PREFIX (default: beside the source in its container)",
    )
    run.add_argument(
        "--state",
        help="folder for the Dagster instance and DuckDB (default: OUT_DIR/.dedup_state, or "
        "./.dedup_state/<container>-<prefix> for az:// sources)",
    )
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
    backfill.add_argument(
        "--wait", action="store_true", help="wait until it finishes, printing progress every 10 s"
    )
    backfill.set_defaults(fn=_cmd_backfill)

    sql = sub.add_parser(
        "sql", help="query the results read-only (the analyst database; never blocks a run)"
    )
    sql.add_argument(
        "database", help="an output folder, a state folder, or a *_analyst.duckdb file"
    )
    sql.add_argument("query", help="SQL, e.g. 'select * from dedup.best_selection limit 5'")
    sql.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    sql.add_argument("--max-rows", type=int, default=100, help="rows shown in the table")
    sql.set_defaults(fn=_cmd_sql)

    bench = sub.add_parser("bench", help="run a benchmark: dedup-assets bench NAME --help")
    bench.add_argument("name", help="benchmark name (a module of dedup_assets.bench)")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(fn=_cmd_bench)

    from .core.store import ConfigurationError, StoreError

    args = parser.parse_args(argv)
    _show_warnings()
    try:
        if args.command in ("run", "demo"):  # Ctrl-C, SIGTERM: stop now, resume next time
            from .interrupt import run_stoppable

            return run_stoppable(lambda: args.fn(args), _interrupted)
        return args.fn(args)
    except ConfigurationError as exc:  # a setting or permission to fix: one line, status 2
        _say(str(exc))
        return 2
    except StoreError as exc:  # e.g. the store still unreachable after the retries
        _say(str(exc))
        return 1


class _Warnings(logging.Handler):
    """One ``dedup-assets: warning: …`` line on stderr per warning of the project's loggers."""

    def emit(self, record: logging.LogRecord) -> None:
        _say(f"{record.levelname.lower()}: {record.getMessage()}")


def _show_warnings() -> None:
    """The project's warnings (e.g. each Azure retry, with what and how long) on stderr."""
    logger = logging.getLogger("dedup_assets")
    if not any(isinstance(h, _Warnings) for h in logger.handlers):
        logger.addHandler(_Warnings(logging.WARNING))
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
