"""``dedup-assets bench accuracy DIR``: run the pipeline on a folder with ``ground_truth.json``
and report pairwise precision / recall / F1 per stage and final, and B-cubed F1.

Stages, in pipeline order: ``candidates`` (every pair proposed: exact copies, hash neighbours
incl. mirror/rotation variants), ``color`` (kept by colour), ``global`` (kept by the global
embedding, descriptor-space discoveries included), ``local`` (kept by keypoints + RANSAC) and
``final`` (the groups of ``best_selection``, overrides included). Each stage's groups are the
connected components of its kept pairs. Time per stage comes from the materialisation metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from ..core.text import help_text

STAGES = {
    "candidates": ("color_groups", None),
    "color": ("color_groups", "color_kept"),
    "global": ("global_groups", "global_kept"),
    "local": ("local_groups", "local_kept"),
}
ASSETS = ("blob_inventory", "wavelet_hashes", "color_groups", "global_groups", "local_groups",
          "best_selection", "deduplicated_files", "image_report")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dedup-assets bench accuracy", description=help_text(__doc__.split("\n")[0]))
    p.add_argument("source", type=Path, help="folder with images and ground_truth.json")
    p.add_argument("--truth", type=Path, help="ground truth file (default: SOURCE/ground_truth.json)")
    p.add_argument("--output", type=Path, help="output folder (default: a temporary folder)")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--set", action="append", default=[], metavar="ASSET.FIELD=VALUE",
                   help="override a stage config value, e.g. --set local_groups.min_inliers=30")
    p.add_argument("--errors", type=int, default=10, help="false pairs to list per kind (final stage)")
    return p.parse_args(argv)


def _run_config(sets: list[str]) -> dict:
    ops: dict = {}
    for item in sets:
        key, _, value = item.partition("=")
        op, _, name = key.partition(".")
        if not (op and name and value):
            raise SystemExit(f"--set expects ASSET.FIELD=VALUE, got {item!r}")
        ops.setdefault(op, {"config": {}})["config"][name] = json.loads(value)
    return {"ops": ops}


def evaluate_run(source: Path, out: Path, truth_path: Path, result, n_errors: int = 10) -> dict:
    """Scores per stage for a finished run of ``source`` whose state lies under ``out``."""
    import duckdb

    from ..core.evaluate import GroundTruth, groups_from_edges, pair_errors, score

    truth = GroundTruth.load(truth_path)
    con = duckdb.connect(str(out / ".dedup_state" / "dedup_assets.duckdb"), read_only=True)
    try:
        sel = con.execute(
            "select path, status, group_id, error_reason from dedup.best_selection order by path"
        ).fetchall()
        keepers = dict(con.execute("select path, keeper_path from dedup.best_selection").fetchall())
        reasons = dict(con.execute("select path, keeper_reason from dedup.best_selection").fetchall())
        readable = [p for p, status, _, _ in sel if status != "Error"]
        stages = {}
        for stage, (table, flag) in STAGES.items():
            where = f"where {flag}" if flag else ""
            edges = con.execute(f"select path_a, path_b from dedup.{table} {where}").fetchall()
            groups = groups_from_edges(readable, [e for e in edges if e[0] in set(readable) and e[1] in set(readable)])
            stages[stage] = score(groups, truth, readable).as_dict() | {"pairs_kept": len(edges)}
    finally:
        con.close()
    final: dict[str, list[str]] = {}
    for p, status, gid, _ in sel:
        if status in ("Best", "Duplicate"):
            final.setdefault(gid, []).append(p)
    stages["final"] = score(final.values(), truth, readable).as_dict()
    fp, fn = pair_errors(final.values(), truth, readable)
    errors = {p: reason for p, status, _, reason in sel if status == "Error"}
    seconds = {}
    for name in ASSETS:
        for m in result.asset_materializations_for_node(name):
            if "seconds" in m.metadata:  # stage 1: one materialisation per shard
                seconds[name] = round(seconds.get(name, 0.0) + m.metadata["seconds"].value, 3)
    return {
        "keeper": keeper_score(json.loads(Path(truth_path).read_text()), keepers, reasons),
        "dataset": source.name,
        "images": len(sel),
        "readable": len(readable),
        "errors": len(errors),
        "unreadable_reported": sorted(set(truth.unreadable) & set(errors)),
        "unreadable_missed": sorted(set(truth.unreadable) - set(errors)),
        "unexpected_errors": {p: r for p, r in errors.items() if p not in set(truth.unreadable)},
        "stages": stages,
        "false_positive_pairs": [list(p) for p in fp[:n_errors]],
        "false_negative_pairs": [list(p) for p in fn[:n_errors]],
        "false_positive_count": len(fp),
        "false_negative_count": len(fn),
        "seconds_per_asset": seconds,
    }


def keeper_score(truth: dict, keepers: dict[str, str | None], reasons: dict[str, str | None]) -> dict | None:
    """Share of the truth groups whose original (``truth["originals"]``, one per group) or a
    copy equal in content to it (``truth["equivalent"]``) is what the run keeps: the keeper of
    the original's group, or the original itself when it stands alone. None without originals."""
    originals = truth.get("originals")
    if not originals:
        return None
    equivalent = truth.get("equivalent") or [[] for _ in originals]
    edits = truth.get("edits", {})
    wrong = []
    for orig, same in zip(originals, equivalent):
        kept = keepers.get(orig)
        if kept is None or kept == orig or kept in same:
            continue
        wrong.append({"original": orig, "keeper": kept, "keeper_edits": edits.get(kept),
                      "keeper_reason": reasons.get(kept), "original_reason": reasons.get(orig)})
    n = len(originals)
    return {"groups": n, "original_kept": n - len(wrong), "share": round((n - len(wrong)) / n, 4), "wrong": wrong}


def table(res: dict) -> str:
    cols = ("precision", "recall", "f1", "bcubed_f1", "true_pairs", "predicted_pairs", "correct_pairs")
    lines = [f"{res['dataset']}: {res['images']} images, {res['errors']} errors "
             f"(unreadable missed: {len(res['unreadable_missed'])}, unexpected: {len(res['unexpected_errors'])})",
             f"{'stage':<11}" + "".join(f"{c:>16}" for c in cols)]
    for stage, s in res["stages"].items():
        lines.append(f"{stage:<11}" + "".join(f"{s[c]:>16}" for c in cols))
    for kind in ("false_positive", "false_negative"):
        lines.append(f"{kind} pairs: {res[kind + '_count']}")
        lines += [f"  {a}  <->  {b}" for a, b in res[kind + "_pairs"]]
    if res.get("keeper"):
        k = res["keeper"]
        lines.append(f"keeper: the original (or a copy equal in content) kept in {k['original_kept']}/{k['groups']} "
                     f"groups ({100 * k['share']:.1f} %)")
        lines += [f"  {w['original']}: kept {w['keeper']} {w['keeper_edits']} ({w['keeper_reason']}); "
                  f"original: {w['original_reason']}" for w in k["wrong"]]
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in res["seconds_per_asset"].items()))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from ..cli import run_collection

    args = _parse(argv)
    source = args.source.resolve()
    truth = args.truth or source / "ground_truth.json"
    if not truth.exists():
        raise SystemExit(f"no ground truth at {truth}")
    with tempfile.TemporaryDirectory(prefix="dedup-accuracy-") as tmp:
        out = (args.output or Path(tmp)).resolve()
        start = time.perf_counter()
        result = run_collection(source, out, workers=args.workers, run_config=_run_config(args.set))
        if not result.success:
            print("bench accuracy: the run failed", file=sys.stderr)
            return 1
        res = evaluate_run(source, out, truth, result, args.errors)
        res["seconds"] = round(time.perf_counter() - start, 2)
        res["config"] = args.set
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0
