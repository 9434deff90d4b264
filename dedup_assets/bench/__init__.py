"""Benchmarks: ``dedup-assets bench NAME [options]`` runs ``dedup_assets.bench.NAME.main``.

Each benchmark prints a table and writes JSON (``--json PATH``), and measures its baseline
(decode-only, a peer library, brute force) in the same run, so results are ratios that hold
on any machine. Benchmarks may use ``../shared/datasets``; tests never do.
"""

import importlib
import json
import pkgutil
from pathlib import Path


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(name: str, argv: list[str]) -> int:
    if name not in available():
        raise SystemExit(f"dedup-assets bench: unknown benchmark {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}").main(argv)


def emit(report: dict, table: str, json_path: str | None, *, echo_json: bool = True) -> None:
    """Prints the table, then writes the JSON report to ``json_path`` (or prints it when there
    is no path and ``echo_json``)."""
    print(table)
    text = json.dumps(report, indent=2)
    if json_path:
        Path(json_path).write_text(text + "\n")
        print(f"JSON written to {json_path}")
    elif echo_json:
        print(text)
