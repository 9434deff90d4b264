"""Which copy of a group to keep: the one holding the most of the picture, with the reason.

The quality score ranks unrelated photos; within a group of copies of one picture it is a poor
guide (an upscale has more pixels, a lossless re-save of a JPEG scores as uncompressed, a
brightened copy has a better exposure). The keeper rule ranks the members of a group by what
the pipeline already knows about them, from the local stage's pair relations
(:func:`dedup_assets.core.verify.pair_relations`) and stage 1, in this order:

1. **content**: not a crop of another member (the other shows picture it lacks), not a
   downscale of a larger member, not an upscale of a smaller one (the larger holds no detail
   finer than the smaller's scale: ``local_features.detail_spectrum``);
2. **no added band**: no letterbox bars, padding, black tilt corners or caption band that the
   other member does not have;
3. **colour** over greyscale (stage 1's ``is_gray``), when a colour member is there;
4. **generation**: not a lossy copy compressed harder than another member of the same size
   (stage 1's ``q_compression`` lower by :data:`MIN_COMPRESSION_GAP`); a lossless re-save is
   never ranked above its lossy source for being lossless;
5. **ties** (copies equal in content: byte copies, mirrors, rotations, lossless re-saves,
   recolourings), by :class:`KeeperPreference`: a preferred folder, then the oldest
   modification time, then the path.

A member gets a mark on a level only from a verified pair with another member (relations are
measured per pair, not through the group); a member marked on a level ranks below every member
not marked on it, levels compared in order. Pure Python (no Dagster, no image reads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields

#: a scale between two copies within this factor is "the same size"
SAME_SIZE = 1.2
#: share of a picture that must be missing from the other copy for it to be a crop
MIN_EXTRA = 0.01
#: share of a copy that must be an added band (bars, padding, caption) to count
MIN_ADDED = 0.01
#: ``q_compression`` points by which a lossy copy must trail another of the same size
MIN_COMPRESSION_GAP = 8.0
LOSSLESS_FORMATS = frozenset({"PNG", "TIFF", "BMP", "GIF", "PPM", "ICO"})

LEVELS = ("content", "added", "gray", "generation")


@dataclass(frozen=True)
class Member:
    path: str
    is_gray: bool = False
    q_compression: float | None = None
    format: str | None = None
    last_modified: float | None = None

    @property
    def lossless(self) -> bool:
        return (self.format or "").upper() in LOSSLESS_FORMATS


@dataclass(frozen=True)
class Relation:
    """How two verified copies ``a`` and ``b`` relate (the local stage's columns; None: not
    measured, e.g. byte-identical pairs or analyst ``same_picture`` links)."""

    scale: float | None = None  # native px of b per native px of a
    extra_a: float | None = None
    extra_b: float | None = None
    added_a: float | None = None
    added_b: float | None = None
    upscale_a: bool | None = None
    upscale_b: bool | None = None


#: the pair columns of ``local_groups`` that describe a relation (one home: ``Relation``)
RELATION_FIELDS = tuple(f.name for f in dataclass_fields(Relation))


@dataclass(frozen=True)
class KeeperPreference:
    """How copies equal in content are ordered: ``prefer_folders`` (path prefixes, earlier
    first; a member under none comes after), then the oldest modification time when
    ``oldest_first``, then the path."""

    prefer_folders: tuple[str, ...] = ()
    oldest_first: bool = True

    def folder_rank(self, path: str) -> int:
        for n, prefix in enumerate(self.prefer_folders):
            p = prefix.strip("/")
            if path == p or path.startswith(p + "/") or ("/" + p + "/") in ("/" + path):
                return n
        return len(self.prefer_folders)


@dataclass
class _Marks:
    content: set[str] = field(default_factory=set)  # "crop", "smaller", "upscale"
    added: bool = False
    gray: bool = False
    generation: bool = False

    def key(self) -> tuple[bool, bool, bool, bool]:
        return bool(self.content), self.added, self.gray, self.generation


def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _mark_pair(ma: _Marks, mb: _Marks, a: Member, b: Member, rel: Relation) -> None:
    ea, eb = _num(rel.extra_a) or 0.0, _num(rel.extra_b) or 0.0
    if ea >= MIN_EXTRA and eb <= ea / 4:
        mb.content.add("crop")
    elif eb >= MIN_EXTRA and ea <= eb / 4:
        ma.content.add("crop")
    scale = _num(rel.scale)
    if scale is not None and scale > 0:
        if scale >= SAME_SIZE:  # b larger
            (mb.content.add("upscale") if rel.upscale_b else ma.content.add("smaller"))
        elif scale <= 1 / SAME_SIZE:
            (ma.content.add("upscale") if rel.upscale_a else mb.content.add("smaller"))
    aa, ab = _num(rel.added_a) or 0.0, _num(rel.added_b) or 0.0
    if ab >= MIN_ADDED and ab >= 2 * aa + 0.005:
        mb.added = True
    elif aa >= MIN_ADDED and aa >= 2 * ab + 0.005:
        ma.added = True
    same_size = scale is None or 1 / SAME_SIZE < scale < SAME_SIZE
    qa, qb = _num(a.q_compression), _num(b.q_compression)
    if same_size and qa is not None and qb is not None:
        if not b.lossless and qb >= qa + MIN_COMPRESSION_GAP:
            ma.generation = True
        elif not a.lossless and qa >= qb + MIN_COMPRESSION_GAP:
            mb.generation = True


_KEEPER_PHRASES = {
    "crop": ("the other is a crop of it", "{n} others are crops of it"),
    "upscale": ("the other is an upscale of it", "{n} others are upscales of it"),
    "smaller": ("larger than the other and not an upscale", "larger than {n} others and not an upscale"),
    "added": ("the other has an added border or caption band", "{n} others have an added border or caption band"),
    "gray": ("colour; the other is greyscale", "colour; {n} others are greyscale"),
    "generation": (
        "less compressed; the other is re-compressed",
        "less compressed; {n} others are re-compressed",
    ),
}
_DUPLICATE_PHRASES = {
    "crop": "a crop of another copy",
    "upscale": "an upscale of another copy",
    "smaller": "smaller: a downscale of another copy",
    "added": "has an added border or caption band",
    "gray": "greyscale; another copy is in colour",
    "generation": "re-compressed at a lower quality than another copy",
}
_TIE_PHRASES = {
    "folder": "in a preferred folder",
    "oldest": "the oldest file",
    "path": "first by path",
}


def _why(marks: _Marks, level: str) -> str:
    if level == "content":
        return next(k for k in ("crop", "upscale", "smaller") if k in marks.content)
    return level


def choose_keeper(
    members: Sequence[Member],
    relations: Mapping[tuple[int, int], Relation],
    preference: KeeperPreference = KeeperPreference(),
) -> tuple[int, list[str]]:
    """The keeper's index in ``members`` and one reason per member (the keeper's: why it was
    kept; the others': why they were not). ``relations`` by ``(i, j)`` index pairs of
    verified copies (``a`` = ``members[i]``)."""
    n = len(members)
    marks = [_Marks() for _ in range(n)]
    for (i, j), rel in relations.items():
        if i != j:
            _mark_pair(marks[i], marks[j], members[i], members[j], rel)
    if any(not m.is_gray for m in members):
        for m, mk in zip(members, marks):
            mk.gray = bool(m.is_gray)

    def tie_key(i: int) -> tuple:
        m = members[i]
        age = _num(m.last_modified) if preference.oldest_first else None
        return (preference.folder_rank(m.path), age if age is not None else math.inf, m.path)

    order = sorted(range(n), key=lambda i: (marks[i].key(), tie_key(i)))
    best = order[0]
    reasons: list[str] = [""] * n
    beaten: dict[str, int] = {}
    tie_by: dict[str, int] = {}
    for j in order[1:]:
        kb, kj = marks[best].key(), marks[j].key()
        level = next((LEVELS[x] for x in range(len(LEVELS)) if kb[x] != kj[x]), None)
        if level is not None:
            why = _why(marks[j], level)
            beaten[why] = beaten.get(why, 0) + 1
            reasons[j] = _DUPLICATE_PHRASES[why]
            continue
        tb, tj = tie_key(best), tie_key(j)
        by = "folder" if tb[0] != tj[0] else ("oldest" if tb[1] != tj[1] else "path")
        tie_by[by] = tie_by.get(by, 0) + 1
        reasons[j] = f"equal in content to the keeper, which is {_TIE_PHRASES[by]}"
    parts = []
    for why in ("crop", "upscale", "smaller", "added", "gray", "generation"):
        if why in beaten:
            one, many = _KEEPER_PHRASES[why]
            parts.append(one if beaten[why] == 1 else many.format(n=beaten[why]))
    if tie_by:
        count = sum(tie_by.values())
        by = next(b for b in ("folder", "oldest", "path") if b in tie_by)
        who = "the other" if count == 1 else f"{count} others"
        parts.append(f"equal in content to {who}; {_TIE_PHRASES[by]}")
    reasons[best] = "; ".join(parts)
    return best, reasons


def group_keeper_rule(images, pairs, preference: KeeperPreference = KeeperPreference()):
    """``select_keepers``' ``keeper_rule`` over a collection: ``images`` is a polars frame sorted
    by path with ``path, is_gray, q_compression, format, last_modified`` (stage 1 and the
    inventory); ``pairs`` the verified pairs of ``local_groups`` with their relation columns
    (:data:`RELATION_FIELDS`; missing ones, from a table written before them, count as
    unknown). The rule maps a group's member indexes to (keeper position, reasons)."""
    index = {p: i for i, p in enumerate(images["path"].to_list())}
    members = [
        Member(path, bool(gray), q, fmt, mtime)
        for path, gray, q, fmt, mtime in images.select(
            "path", "is_gray", "q_compression", "format", "last_modified"
        ).iter_rows()
    ]
    fields = [f for f in RELATION_FIELDS if f in pairs.columns]
    by_image: dict[int, list[tuple[int, int, Relation]]] = {}
    for row in pairs.select("path_a", "path_b", *fields).iter_rows(named=True):
        a, b = index.get(row["path_a"]), index.get(row["path_b"])
        if a is not None and b is not None:
            entry = (a, b, Relation(**{f: row[f] for f in fields}))
            by_image.setdefault(a, []).append(entry)
            by_image.setdefault(b, []).append(entry)

    def rule(idxs: list[int]) -> tuple[int, list[str]]:
        pos = {i: n for n, i in enumerate(idxs)}
        rels = {
            (pos[a], pos[b]): rel
            for i in idxs
            for a, b, rel in by_image.get(i, ())
            if a in pos and b in pos
        }
        return choose_keeper([members[i] for i in idxs], rels, preference)

    return rule
