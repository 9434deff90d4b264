"""Accuracy against a ground truth: pairwise precision/recall/F1 and B-cubed F1.

Ground truth format (``ground_truth.json``): ``groups`` (lists of paths that are copies of one
picture), ``unreadable`` (must be reported as errors), ``ambiguous`` (same scene, not copies:
pairs inside one set are neither rewarded nor penalised). Every other image is unique.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from .grouping import components


@dataclass(frozen=True)
class GroundTruth:
    groups: list[list[str]]
    unreadable: list[str] = field(default_factory=list)
    ambiguous: list[list[str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> GroundTruth:
        data = json.loads(Path(path).read_text())
        return cls(
            groups=[list(g) for g in data.get("groups", [])],
            unreadable=list(data.get("unreadable", [])),
            ambiguous=[list(g) for g in data.get("ambiguous", [])],
        )

    def labels(self) -> dict[str, int]:
        """Truth group number of every path that belongs to a group."""
        return {p: n for n, g in enumerate(self.groups) for p in g}

    def ambiguous_pairs(self) -> set[tuple[str, str]]:
        return {_key(a, b) for g in self.ambiguous for a, b in combinations(g, 2)}


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def group_pairs(groups: Iterable[Iterable[str]]) -> set[tuple[str, str]]:
    return {_key(a, b) for g in groups for a, b in combinations(sorted(set(g)), 2)}


def groups_from_edges(paths: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Connected components (size >= 2) of the kept pairs, as lists of paths."""
    index = {p: i for i, p in enumerate(paths)}
    labels = components(len(paths), [(index[a], index[b]) for a, b in edges])
    out: dict[int, list[str]] = {}
    for p, lab in zip(paths, labels):
        out.setdefault(int(lab), []).append(p)
    return [g for g in out.values() if len(g) > 1]


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def score(
    predicted_groups: Iterable[Iterable[str]], truth: GroundTruth, images: Iterable[str]
) -> Scores:
    """Score predicted groups over ``images`` (the readable images that were evaluated).

    Pairs inside one ambiguous set are dropped from both sides; paths outside ``images`` are
    ignored (so an unreadable file never counts as a missed pair).
    """
    universe = set(images)
    ambiguous = truth.ambiguous_pairs()
    pred_groups = [sorted(set(g) & universe) for g in predicted_groups]
    true_groups = [sorted(set(g) & universe) for g in truth.groups]
    predicted = group_pairs(pred_groups) - ambiguous
    true = group_pairs(true_groups) - ambiguous
    correct = len(predicted & true)
    precision = correct / len(predicted) if predicted else 1.0
    recall = correct / len(true) if true else 1.0

    # B-cubed: per image, precision = |C ∩ L| / |C| and recall = |C ∩ L| / |L| where C is its
    # predicted cluster and L its true cluster (both include the image itself), leaving out the
    # other members of its ambiguous sets.
    pred_of = {p: frozenset(g) for g in pred_groups for p in g}
    true_of = {p: frozenset(g) for g in true_groups for p in g}
    amb_of: dict[str, set[str]] = {}
    for g in truth.ambiguous:
        for p in g:
            amb_of.setdefault(p, set()).update(q for q in g if q != p)
    bp = br = 0.0
    for p in universe:
        skip = amb_of.get(p, set())
        c = (pred_of.get(p) or frozenset([p])) - skip
        t = (true_of.get(p) or frozenset([p])) - skip
        both = len(c & t)
        bp += both / len(c)
        br += both / len(t)
    n = max(len(universe), 1)
    bp, br = bp / n, br / n
    return Scores(
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        true_pairs=len(true),
        predicted_pairs=len(predicted),
        correct_pairs=correct,
        bcubed_precision=bp,
        bcubed_recall=br,
        bcubed_f1=_f1(bp, br),
    )


def pair_errors(
    predicted_groups: Iterable[Iterable[str]], truth: GroundTruth, images: Iterable[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(false positive pairs, false negative pairs), sorted, for inspection."""
    universe = set(images)
    ambiguous = truth.ambiguous_pairs()
    predicted = group_pairs(sorted(set(g) & universe) for g in predicted_groups) - ambiguous
    true = group_pairs(sorted(set(g) & universe) for g in truth.groups) - ambiguous
    return sorted(predicted - true), sorted(true - predicted)
