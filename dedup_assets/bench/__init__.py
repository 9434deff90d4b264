"""Benchmarks: ``dedup-assets bench NAME [options]`` runs ``dedup_assets.bench.NAME.main``.

Each benchmark prints a table and writes JSON (``--json PATH``), and measures its baseline
(decode-only, a peer library, brute force) in the same run, so results are ratios that hold
on any machine. Benchmarks may use ``../shared/datasets``; tests never do.
"""

import importlib
import pkgutil


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(name: str, argv: list[str]) -> int:
    if name not in available():
        raise SystemExit(f"dedup-assets bench: unknown benchmark {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}").main(argv)
