"""``dedup-assets bench hashfamily DIR``: do rotated/mirrored/edited copies hash to the
original's hash family?

Stage 1 stores, per image, its 64-bit wavelet hash and the hashes of its 8 dihedral
transforms (``hash_variants``; ``k`` = identity, flip_lr, rot90, rot180, rot270, flip_ud,
transpose, transverse). Candidate search matches image ``B`` to ``A`` when
``hamming(whash(B), hash_variants(A)[k]) <= radius`` for some ``k`` (then ``B ≈ transform_k(A)``),
exactly as ``core.candidates.hash_neighbour_pairs`` does (exact multi-index search,
``core.hash_search``).

For every group of ``DIR/ground_truth.json`` (or ``--reference`` only), this reports per
member file: the distance to the reference's family (min over ``k``) and the ``k`` reaching
it, the distance without variants (``k = 0`` only), and whether it is within ``--radius``;
and, as a control, the nearest family distance from the reference to every image outside the
group (which should stay above the radius).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import emit
from ..core.analyse import analyse_bytes
from ..core.hashing import DIHEDRAL_NAMES, hamming
from ..core.store import LocalFolderStore
from ..core.text import help_text


def family_distance(whash: int, variants: list[int]) -> tuple[int, int]:
    """``(min_k hamming(whash, variants[k]), argmin k)`` (lowest ``k`` on ties)."""
    return min((hamming(whash, v), k) for k, v in enumerate(variants))


def _rows(root: Path) -> dict[str, dict]:
    store = LocalFolderStore(str(root.parent))
    return {
        b.path: analyse_bytes(store.read_bytes(root.name, b.path)) for b in store.iter_blobs(root.name)
    }


def run(root: Path, reference: str | None, radius: int) -> dict:
    truth = json.loads((root / "ground_truth.json").read_text())
    rows = _rows(root)
    groups = [list(g) for g in truth.get("groups", [])]
    if reference:
        groups = [next((g for g in groups if reference in g), [reference])]
        groups[0] = [reference] + [p for p in groups[0] if p != reference]
    ambiguous = {p for g in truth.get("ambiguous", []) for p in g}
    out = []
    for group in groups:
        ref = group[0]
        r = rows[ref]
        if r["status"] != "ok":
            out.append({"reference": ref, "error": r["error_reason"]})
            continue
        members = []
        for path in group[1:]:
            m = rows.get(path)
            if m is None or m["status"] != "ok":
                members.append({"path": path, "status": "missing" if m is None else m["error_reason"]})
                continue
            d, k = family_distance(m["whash"], r["hash_variants"])
            members.append(
                {
                    "path": path,
                    "family_distance": d,
                    "transform": DIHEDRAL_NAMES[k],
                    "identity_distance": hamming(m["whash"], r["whash"]),
                    "match": d <= radius,
                }
            )
        in_group = set(group)
        controls = []
        for path, m in sorted(rows.items()):
            if path in in_group or path in ambiguous or m["status"] != "ok":
                continue
            d, k = family_distance(m["whash"], r["hash_variants"])
            controls.append({"path": path, "family_distance": d, "transform": DIHEDRAL_NAMES[k]})
        controls.sort(key=lambda c: c["family_distance"])
        scored = [m for m in members if "family_distance" in m]
        out.append(
            {
                "reference": ref,
                "members": members,
                "matched": sum(m["match"] for m in scored),
                "of": len(members),
                "max_family_distance": max((m["family_distance"] for m in scored), default=None),
                "nearest_non_member": controls[0] if controls else None,
                "non_members_within_radius": sum(c["family_distance"] <= radius for c in controls),
                "non_members": len(controls),
            }
        )
    return {"benchmark": "hashfamily", "dataset": str(root), "radius": radius, "groups": out}


def _table(report: dict) -> str:
    lines = []
    for g in report["groups"]:
        if "error" in g:
            lines.append(f"reference {g['reference']}: {g['error']}")
            continue
        lines.append(f"reference {g['reference']}  (radius {report['radius']})")
        lines.append(f"  {'file':<48} {'family':>6} {'via':<10} {'plain':>5} match")
        for m in g["members"]:
            if "family_distance" not in m:
                lines.append(f"  {m['path']:<48} {m['status']}")
                continue
            lines.append(
                f"  {m['path']:<48} {m['family_distance']:>6} {m['transform']:<10} "
                f"{m['identity_distance']:>5} {'yes' if m['match'] else 'NO'}"
            )
        near = g["nearest_non_member"]
        lines.append(
            f"  matched {g['matched']}/{g['of']}, max family distance {g['max_family_distance']}; "
            f"non-members within radius: {g['non_members_within_radius']}/{g['non_members']}"
            + (f", nearest {near['path']} at {near['family_distance']}" if near else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dedup-assets bench hashfamily", description=help_text(__doc__.split("\n\n")[0]))
    p.add_argument("dir", help="a folder with ground_truth.json (e.g. ../shared/datasets/pdq-bridge)")
    p.add_argument("--reference", default=None, help="the original (relative path); default: first of each group")
    p.add_argument("--radius", type=int, default=10, help="Hamming radius of a match (default 10, as CandidateConfig)")
    p.add_argument("--json", default=None, help="write the JSON report here")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    report = run(Path(args.dir).resolve(), args.reference, args.radius)
    emit(report, _table(report), args.json, echo_json=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
