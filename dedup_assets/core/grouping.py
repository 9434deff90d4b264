"""Groups from verified pairs, and the keeper of each group.

Groups are the connected components of the verified edges. The keeper is chosen by a keeper
rule when one is given (``best_selection`` gives :func:`dedup_assets.core.keeper.choose_keeper`);
without one it is the image with the highest quality score, ties broken by pixel count, then
file size, then path, so the same inputs always give the same keeper.

Cannot-link constraints (analyst overrides, :mod:`dedup_assets.core.overrides`) are honoured
by merging edges in the given order and refusing any edge that would join two images that
must stay apart; without constraints the order does not matter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STATUSES = ("Best", "Duplicate", "Unique", "Error")


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller index becomes the root: components are labelled deterministically
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def components(
    n: int,
    edges: Sequence[tuple[int, int]],
    cannot_link: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """Component label per node: the smallest node index in its component.

    With ``cannot_link`` pairs, edges are merged in order and an edge joining two components
    that hold a cannot-link pair is skipped (see :func:`constrained_components`).
    """
    if cannot_link:
        return constrained_components(n, edges, cannot_link)[0]
    uf = UnionFind(n)
    for a, b in edges:
        uf.union(int(a), int(b))
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


def constrained_components(
    n: int,
    edges: Sequence[tuple[int, int]],
    cannot_link: Sequence[tuple[int, int]],
) -> tuple[np.ndarray, int]:
    """Labels as :func:`components`, and how many edges were refused by ``cannot_link``."""
    uf = UnionFind(n)
    apart: dict[int, set[int]] = {}  # root -> nodes that must not join its component
    for a, b in cannot_link:
        apart.setdefault(int(a), set()).add(int(b))
        apart.setdefault(int(b), set()).add(int(a))
    refused = 0
    for a, b in edges:
        ra, rb = uf.find(int(a)), uf.find(int(b))
        if ra == rb:
            continue
        fa, fb = apart.get(ra, set()), apart.get(rb, set())
        if any(uf.find(x) == rb for x in fa) or any(uf.find(x) == ra for x in fb):
            refused += 1
            continue
        uf.union(ra, rb)
        root = uf.find(ra)
        merged = fa | fb
        apart.pop(ra, None)
        apart.pop(rb, None)
        if merged:
            apart[root] = merged
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64), refused


def group_id(member_paths: Sequence[str], namespace: str | None = None) -> str:
    """A stable id for a group: a short hash of its first path (paths sorted).

    With a ``namespace`` (the collection), the hash covers it too and is longer, so ids never
    repeat across collections.
    """
    first = min(member_paths)
    if namespace is None:
        return "g" + hashlib.sha1(first.encode("utf-8")).hexdigest()[:12]
    key = f"{namespace}\x00{first}".encode("utf-8", "surrogatepass")
    return "g" + hashlib.sha1(key).hexdigest()[:16]


@dataclass(frozen=True)
class Selection:
    group_id: list[str | None]
    group_size: list[int]
    status: list[str]
    keeper: list[str | None]
    refused_edges: int = 0
    reason: list[str | None] | None = None  # per image: why kept / why not (groups only)


def select_keepers(
    paths: Sequence[str],
    ok: Sequence[bool],
    quality: Sequence[float],
    pixels: Sequence[int],
    file_size: Sequence[int],
    edges: Sequence[tuple[int, int]],
    cannot_link: Sequence[tuple[int, int]] = (),
    namespace: str | None = None,
    keeper_rule: Callable[[list[int]], tuple[int, list[str]]] | None = None,
) -> Selection:
    """Status, group and keeper for every image.

    ``edges`` join indexes into ``paths``; edges touching an image that is not ``ok`` are
    ignored (an unreadable image is never grouped). Unreadable images get status ``Error``.
    ``cannot_link`` pairs never end up in one group (edges merged in order, see
    :func:`constrained_components`). ``keeper_rule(members)`` (indexes into ``paths``, sorted)
    returns the position of the keeper in ``members`` and one reason per member.
    """
    n = len(paths)
    ok_arr = np.asarray(ok, dtype=bool)
    good = [(a, b) for a, b in edges if ok_arr[a] and ok_arr[b]]
    if cannot_link:
        label, refused = constrained_components(n, good, cannot_link)
    else:
        label, refused = components(n, good), 0
    members: dict[int, list[int]] = {}
    for i in range(n):
        if ok_arr[i]:
            members.setdefault(int(label[i]), []).append(i)

    gid: list[str | None] = [None] * n
    size = [0] * n
    status = ["Error"] * n
    keeper: list[str | None] = [None] * n
    reason: list[str | None] = [None] * n
    for idxs in members.values():
        if keeper_rule is not None and len(idxs) > 1:
            pos, why = keeper_rule(idxs)
            best = idxs[pos]
            for i, w in zip(idxs, why):
                reason[i] = w or None
        else:
            best = min(idxs, key=lambda i: (-float(quality[i]), -int(pixels[i]), -int(file_size[i]), paths[i]))
            if len(idxs) > 1:
                reason[best] = "highest quality score"
        g = group_id([paths[i] for i in idxs], namespace)
        for i in idxs:
            gid[i] = g
            size[i] = len(idxs)
            keeper[i] = paths[best]
            status[i] = "Unique" if len(idxs) == 1 else ("Best" if i == best else "Duplicate")
    return Selection(gid, size, status, keeper, refused, reason)


def mean_correlation_in_groups(hists: np.ndarray, labels: Sequence[str | None]) -> np.ndarray:
    """Per image, the mean Pearson correlation of its colour histogram with the other members.

    Computed in O(group size) per group from standardised histograms; NaN for single images
    and unreadable ones.
    """
    n = len(labels)
    out = np.full(n, np.nan, dtype=np.float64)
    if n == 0:
        return out
    h = np.asarray(hists, dtype=np.float64)
    z = h - h.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(labels):
        if g is not None:
            by_group.setdefault(g, []).append(i)
    for idxs in by_group.values():
        if len(idxs) < 2:
            continue
        zg = z[idxs]
        total = zg.sum(axis=0)
        self_sim = (zg * zg).sum(axis=1)
        out[idxs] = (zg @ total - self_sim) / (len(idxs) - 1)
    return out
