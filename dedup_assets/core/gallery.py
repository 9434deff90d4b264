"""A static HTML review gallery of duplicate groups, written next to the report.

Layout under ``<collection>_deduplicated/gallery/`` (all through :class:`ImageStore`):

- ``index.html``: totals, the first groups with their thumbnails, a legend, links to every
  page, the most borderline groups, the analyst overrides and how to write them;
- ``pages/page-0001.html`` …: groups, largest first and, at equal size, the most borderline
  first; each page holds at most ``groups_per_page`` groups and ``images_per_page`` thumbnails,
  so a page stays small whatever the collection;
- ``errors/errors-0001.html`` …: unreadable images with their reasons;
- ``thumbs/<hash[:2]>/<hash>.webp`` (the content hash): one small thumbnail per distinct image
  content, made once and kept (a re-render makes only the missing ones).

Pages are plain HTML with inline CSS and a few lines of inline JS (keyboard paging, SQL
snippets for overrides); they load nothing from the network and open from ``file://``. Only
thumbnails are linked, never source blobs, so a copy of the ``gallery/`` folder is complete.

*Borderline*: each verified pair gets a margin per stage, how far its score is above that
stage's threshold, scaled to 0–1 (colour and global similarity: ``(s - t) / (1 - t)``;
inliers: ``(n - t) / t``, capped at 1); the pair's margin is its smallest, and a group's is
that of its weakest pair. Exact copies and analyst ``same_picture`` pairs have margin 1.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import polars as pl
from PIL import Image

from .content import content_hash
from .decode import decode_image
from .hashing import DIHEDRAL_NAMES
from .parallel import ordered_map
from .quality import QUALITY_COMPONENTS
from .store import ImageStore
from .text import plural

FOLDER = "gallery"
INDEX = f"{FOLDER}/index.html"
PAGES = f"{FOLDER}/pages"
ERRORS = f"{FOLDER}/errors"
THUMBS = f"{FOLDER}/thumbs"

#: image columns the gallery reads from ``wavelet_hashes``
IMAGE_COLUMNS = ("path", "content_hash", "width", "height", "format", "file_size", *QUALITY_COMPONENTS)
#: pair columns the gallery reads from ``local_groups`` (those missing are shown empty)
PAIR_COLUMNS = (
    "path_a", "path_b", "source", "hamming", "transform",
    "color_similarity", "global_similarity", "inliers", "overlap_disagreement", "local_kept",
)


@dataclass(frozen=True)
class Thresholds:
    """The thresholds the stages ran with (for the margins)."""

    color: float = 0.6
    global_: float = 0.85
    inliers: float = 25
    overlap: float = 0.26  # max_disagreement of the local stage


@dataclass(frozen=True)
class GalleryOptions:
    groups_per_page: int = 50
    images_per_page: int = 400
    members_shown: int = 120
    pairs_shown: int = 40
    errors_per_page: int = 500
    index_groups: int = 6  # the first groups shown with their thumbnails on index.html
    index_members: int = 8  # thumbnails per group there
    borderline_margin: float = 0.15
    borderline_listed: int = 300
    thumb_side: int = 160
    workers: int = 0
    title: str = ""


@dataclass
class GalleryResult:
    index: str
    pages: int
    error_pages: int
    groups: pl.DataFrame  # one row per group: order, page, size, margin, keeper
    thumbnails_made: int = 0
    thumbnails_cached: int = 0
    thumbnails_failed: dict[str, str] = field(default_factory=dict)
    largest_file: tuple[str, int] = ("", 0)
    bytes_written: int = 0
    files_written: int = 0
    stale_removed: int = 0


# --------------------------------------------------------------------------- data


def thumb_name(key: str) -> str:
    return f"{THUMBS}/{key[:2]}/{key}.webp"


def pair_margins(pairs: pl.DataFrame, t: Thresholds) -> pl.DataFrame:
    """Adds ``margin`` (0–1, lower is more borderline) and ``weakest_stage`` to verified pairs."""

    def col(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Float64) if name in pairs.columns else pl.lit(None, pl.Float64)

    stages = {
        "colour": (col("color_similarity") - t.color) / max(1e-9, 1 - t.color),
        "global": (col("global_similarity") - t.global_) / max(1e-9, 1 - t.global_),
        "keypoints": ((col("inliers") - t.inliers) / max(1e-9, t.inliers)).clip(upper_bound=1.0),
        "overlap": (t.overlap - col("overlap_disagreement")) / max(1e-9, t.overlap),
    }
    certain = pl.col("source").is_in(["exact", "analyst"])
    margin = pl.min_horizontal(*stages.values())
    weakest = pl.lit(None, pl.String)
    for name, expr in reversed(stages.items()):
        weakest = pl.when(expr == margin).then(pl.lit(name)).otherwise(weakest)
    return pairs.with_columns(
        margin=pl.when(certain).then(1.0).otherwise(margin.fill_null(1.0)).clip(upper_bound=1.0),
        weakest_stage=pl.when(certain).then(pl.lit(None, pl.String)).otherwise(weakest),
    )


def _schema_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    types = {
        "path_a": pl.String, "path_b": pl.String, "source": pl.String, "hamming": pl.Int32,
        "transform": pl.Int8, "color_similarity": pl.Float64, "global_similarity": pl.Float64,
        "inliers": pl.Int32, "overlap_disagreement": pl.Float64, "local_kept": pl.Boolean,
    }
    return pairs.select(
        [
            (pl.col(c) if c in pairs.columns else pl.lit(None)).cast(dtype).alias(c)
            for c, dtype in types.items()
        ]
    )


@dataclass
class GalleryData:
    """Everything a page needs, sorted so that a page is a contiguous slice."""

    groups: pl.DataFrame  # rank, group_id, group_size, weakest_margin, keeper_path, page
    members: pl.DataFrame  # rank, role order, image columns
    pairs: pl.DataFrame  # rank, margin order, pair columns, kind
    errors: pl.DataFrame  # path, error_reason, error_message
    overrides: pl.DataFrame  # kind, path_a, path_b, note, created_at, state
    totals: dict


def prepare(
    best_selection: pl.DataFrame,
    images: pl.DataFrame,
    pairs: pl.DataFrame,
    overrides: pl.DataFrame,
    thresholds: Thresholds = Thresholds(),
    options: GalleryOptions = GalleryOptions(),
) -> GalleryData:
    """Groups ordered for review, their members and pairs, unreadable images, overrides."""
    sel = best_selection.select(
        "path", "status", "group_id", "group_size", "keeper_path", "quality_score",
        "error_reason", "error_message",
        pl.col("keeper_reason") if "keeper_reason" in best_selection.columns
        else pl.lit(None, pl.String).alias("keeper_reason"),
    )
    img_cols = [c for c in IMAGE_COLUMNS if c in images.columns]
    grouped = sel.filter(pl.col("group_size") > 1).join(
        images.select(img_cols), on="path", how="left"
    )
    where = grouped.select("path", "group_id")

    verified = _schema_pairs(pairs)
    if "local_kept" in pairs.columns:
        verified = verified.filter(pl.col("local_kept"))
    same = overrides.filter(pl.col("kind") == "same_picture").select(
        "path_a", "path_b", pl.lit("analyst").alias("source"), pl.col("note")
    )
    edges = pl.concat(
        [verified.with_columns(note=pl.lit(None, pl.String)), same], how="diagonal_relaxed"
    )
    edges = pair_margins(edges, thresholds)
    edges = edges.join(where.rename({"path": "path_a", "group_id": "ga"}), on="path_a", how="left")
    edges = edges.join(where.rename({"path": "path_b", "group_id": "gb"}), on="path_b", how="left")
    joined = edges.filter(pl.col("ga") == pl.col("gb")).with_columns(
        group_id=pl.col("ga"), kind=pl.when(pl.col("source") == "analyst")
        .then(pl.lit("same_picture")).otherwise(pl.lit("joined"))
    )
    # verified pairs that no longer join their images: cut to honour a not_duplicate override
    cut = edges.filter(
        (pl.col("source") != "analyst")
        & (pl.col("ga").is_not_null() | pl.col("gb").is_not_null())
        & (pl.col("ga").fill_null("") != pl.col("gb").fill_null(""))
    )
    apart = overrides.filter(pl.col("kind") == "not_duplicate").select(
        "path_a", "path_b", pl.lit("analyst").alias("source"), "note"
    )
    apart = apart.join(where.rename({"path": "path_a", "group_id": "ga"}), on="path_a", how="left")
    apart = apart.join(where.rename({"path": "path_b", "group_id": "gb"}), on="path_b", how="left")
    notes = pl.concat(
        [
            cut.with_columns(kind=pl.lit("cut")),
            apart.with_columns(kind=pl.lit("not_duplicate"), margin=pl.lit(None, pl.Float64)),
        ],
        how="diagonal_relaxed",
    )
    notes = pl.concat(
        [
            notes.filter(pl.col("ga").is_not_null()).with_columns(group_id=pl.col("ga")),
            notes.filter(pl.col("gb").is_not_null() & (pl.col("gb") != pl.col("ga").fill_null("")))
            .with_columns(group_id=pl.col("gb")),
        ],
        how="diagonal_relaxed",
    )

    weakest = joined.group_by("group_id").agg(pl.col("margin").min().alias("weakest_margin"))
    groups = (
        grouped.group_by("group_id")
        .agg(pl.len().alias("group_size"), pl.col("keeper_path").first())
        .join(weakest, on="group_id", how="left")
        .with_columns(pl.col("weakest_margin").fill_null(1.0))
        .sort(["group_size", "weakest_margin", "group_id"], descending=[True, False, False])
        .with_row_index("rank", offset=1)
        .with_columns(borderline=pl.col("weakest_margin") < options.borderline_margin)
    )
    groups = groups.with_columns(page=pl.Series(_paginate(groups["group_size"], options), dtype=pl.Int32))
    rank = groups.select("group_id", "rank", "page")

    members = (
        grouped.join(rank, on="group_id")
        .with_columns(role=pl.when(pl.col("status") == "Best").then(0).otherwise(1))
        .sort(["rank", "role", "quality_score", "path"], descending=[False, False, True, False])
        .with_columns(_caption_columns(grouped.columns))
    )
    all_pairs = (
        pl.concat([joined, notes], how="diagonal_relaxed")
        .join(rank, on="group_id")
        .with_columns(order=pl.col("kind").replace_strict(
            {"not_duplicate": 0, "same_picture": 1, "cut": 2, "joined": 3}, return_dtype=pl.Int8))
        .sort(["rank", "order", "margin", "path_a", "path_b"], nulls_last=True)
        .with_columns(
            a_html=_html_expr(pl.col("path_a")),
            b_html=_html_expr(pl.col("path_b")),
            source_html=_html_expr(pl.col("source").fill_null("")),
            note_html=_html_expr(pl.col("note")),
        )
    )
    errors = sel.filter(pl.col("status") == "Error").select(
        "path", "error_reason", "error_message"
    ).sort("path")
    ov = _override_states(overrides, sel)
    counts = dict(sel.group_by("status").len().iter_rows())
    totals = {
        "images": sel.height,
        "groups": groups.height,
        "images_in_groups": grouped.height,
        "duplicates": counts.get("Duplicate", 0),
        "unique": counts.get("Unique", 0),
        "unreadable": counts.get("Error", 0),
        "borderline_groups": int(groups["borderline"].sum()) if groups.height else 0,
        "overrides": overrides.height,
    }
    return GalleryData(groups, members, all_pairs, errors, ov, totals)


def _html_expr(expr: pl.Expr) -> pl.Expr:
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#x27;")):
        expr = expr.str.replace_all(char, entity, literal=True)
    return expr


def _text(expr: pl.Expr, missing: str = "–") -> pl.Expr:
    return expr.cast(pl.String).fill_null(missing)


def _caption_columns(columns: list[str]) -> list[pl.Expr]:
    """HTML-ready caption pieces of each image, computed column-wise (fast at 100k groups)."""
    comps = []
    for c in QUALITY_COMPONENTS:
        if c in columns:
            comps += [pl.lit(f" · {_SHORT[c]} " if comps else f"{_SHORT[c]} "),
                      _text(pl.col(c).round(0).cast(pl.Int64))]
    size = pl.col("file_size") if "file_size" in columns else pl.lit(None, pl.Int64)
    size_text = (
        pl.when(size < 1024).then(pl.format("{} B", size))
        .when(size < 1024**2).then(pl.format("{} KB", (size / 1024).round(1)))
        .when(size < 1024**3).then(pl.format("{} MB", (size / 1024**2).round(1)))
        .otherwise(pl.format("{} GB", (size / 1024**3).round(1)))
    )

    def opt(name: str, missing: str) -> pl.Expr:
        return _text(pl.col(name), missing) if name in columns else pl.lit(missing)

    dims = pl.concat_str(
        [opt("width", "?"), pl.lit("×"), opt("height", "?"), pl.lit(" "), opt("format", ""),
         pl.lit(" "), size_text.fill_null("")]
    )
    return [
        _html_expr(pl.col("path")).alias("path_html"),
        _text(pl.col("quality_score").round(1)).alias("q_text"),
        (pl.concat_str(comps) if comps else pl.lit("")).alias("comps_text"),
        _html_expr(dims).alias("dims_text"),
    ]


def _paginate(sizes: pl.Series, o: GalleryOptions) -> list[int]:
    pages, page, n_groups, n_images = [], 1, 0, 0
    for size in sizes.to_list():
        shown = min(size, o.members_shown)
        if n_groups and (n_groups >= o.groups_per_page or n_images + shown > o.images_per_page):
            page, n_groups, n_images = page + 1, 0, 0
        pages.append(page)
        n_groups += 1
        n_images += shown
    return pages


def _override_states(overrides: pl.DataFrame, sel: pl.DataFrame) -> pl.DataFrame:
    g = sel.select("path", "group_id")
    o = overrides.join(g.rename({"path": "path_a", "group_id": "ga"}), on="path_a", how="left")
    o = o.join(g.rename({"path": "path_b", "group_id": "gb"}), on="path_b", how="left")
    known = pl.col("path_a").is_in(sel["path"]) & pl.col("path_b").is_in(sel["path"])
    together = pl.col("ga").is_not_null() & (pl.col("ga") == pl.col("gb"))
    state = (
        pl.when(~known).then(pl.lit("unknown path"))
        .when((pl.col("kind") == "same_picture") & together).then(pl.lit("in effect"))
        .when((pl.col("kind") == "not_duplicate") & ~together.fill_null(False)).then(pl.lit("in effect"))
        .when(pl.col("kind") == "same_picture").then(pl.lit("not applied (unreadable image, conflict, or re-run needed)"))
        .otherwise(pl.lit("not applied (re-run needed)"))
    )
    return o.with_columns(state=state).drop("ga", "gb").sort("path_a", "path_b")


# --------------------------------------------------------------------------- thumbnails


def make_thumbnail(data: bytes, side: int = 160, fmt: str = "WEBP", quality: int = 70) -> bytes:
    """A small thumbnail (long side ``side``) of an image file's bytes, EXIF orientation kept."""
    img = decode_image(data, target_side=side)
    im = Image.fromarray(img.rgb)
    if max(im.size) > side:
        im.thumbnail((side, side), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, fmt, quality=quality, **({"method": 4} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _thumbnail_job(store: ImageStore, collection: str, side: int, item: tuple[str, str]):
    path, key = item
    try:
        data = store.read_bytes(collection, path)
        if content_hash(data) != key:
            return key, None, "the file changed since it was analysed"
        return key, make_thumbnail(data, side), None
    except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not stop the gallery
        return key, None, f"{type(exc).__name__}: {exc}"


def ensure_thumbnails(
    store: ImageStore,
    collection: str,
    members: pl.DataFrame,
    *,
    side: int = 160,
    workers: int = 0,
) -> tuple[int, int, dict[str, str]]:
    """Make the missing thumbnails (one per content hash); returns made, cached, failed."""
    existing = {
        name.rsplit("/", 1)[-1].removesuffix(".webp") for name in store.list_outputs(collection, THUMBS)
    }
    wanted = (
        members.filter(pl.col("content_hash").is_not_null())
        .unique("content_hash", keep="first", maintain_order=True)
        .select("path", "content_hash")
    )
    todo = [(p, m) for p, m in wanted.iter_rows() if m not in existing]
    made, failed = 0, {}
    job = functools.partial(_thumbnail_job, store, collection, side)
    for key, data, err in ordered_map(job, todo, workers=workers or None, chunk_size=32):
        if data is None:
            failed[key] = err
            continue
        store.write_output(collection, thumb_name(key), data)
        made += 1
    return made, wanted.height - len(todo), failed


def tiny_data_uri(store: ImageStore, collection: str, path: str, side: int = 32) -> str | None:
    """A data: URI of a very small JPEG of one image (for Markdown previews)."""
    try:
        data = make_thumbnail(store.read_bytes(collection, path), side, "JPEG", 50)
    except Exception:  # noqa: BLE001 - a preview without this picture is fine
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- HTML

CSS = """
:root{--key:#0072B2;--warn:#E69F00;--bad:#D55E00;--ana:#009E73;--fg:#1a1a1a;--mut:#555;
--bg:#fff;--card:#f5f5f5;--line:#bbb}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--fg);background:var(--bg)}main,header,footer{max-width:1400px;margin:0 auto;padding:0 12px}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:6px 12px;z-index:2}
nav a,nav span{margin-right:10px}a{color:#0058a0}h1{font-size:20px}h2{font-size:16px;margin:18px 0 6px}.group h2,.group h3{margin:0 0 6px}h3{font-size:15px}
.group{border:1px solid var(--line);border-radius:6px;margin:14px 0;padding:10px;background:var(--card)}
.members{display:grid;grid-template-columns:repeat(auto-fill,minmax(176px,1fr));gap:8px}
figure{margin:0;background:#fff;border:2px dashed var(--line);border-radius:4px;padding:6px}
figure.keeper{border:4px double var(--key)}
.thumb{display:flex;align-items:center;justify-content:center;width:100%;height:160px;background:#eee}
.thumb img{max-width:100%;max-height:160px}.nothumb{color:var(--mut);font-size:12px;padding:8px}
figcaption{font-size:12px;overflow-wrap:anywhere}.path{font-family:ui-monospace,monospace}
.role{display:inline-block;font-weight:700;font-size:11px;padding:1px 6px;border-radius:3px;
border:1px solid var(--mut);background:#fff}
.keeper .role{background:var(--key);color:#fff;border-color:var(--key)}
.q{font-weight:700}.comp{color:var(--mut)}.why{font-style:italic}
.badge{display:inline-block;font-size:12px;padding:1px 6px;border-radius:3px;margin-left:6px;font-weight:600}
.warn{background:var(--warn);color:#000}.ana{background:var(--ana);color:#fff}.bad{background:var(--bad);color:#fff}
.tw{overflow-x:auto}table{border-collapse:collapse;margin-top:8px;font-size:12px;background:#fff}
th,td{border:1px solid var(--line);padding:2px 6px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}td.p{font-family:ui-monospace,monospace;overflow-wrap:anywhere;max-width:320px}
tr.low td.m{font-weight:700;text-decoration:underline wavy var(--warn)}
button{font-size:11px}#sql{position:fixed;bottom:0;left:0;right:0;background:#fff;border-top:2px solid var(--key);
padding:8px;display:none}#sql textarea{width:100%;height:70px;font-family:ui-monospace,monospace}
dl.legend{display:grid;grid-template-columns:max-content 1fr;gap:4px 12px}
@media (max-width:700px){.members{grid-template-columns:repeat(auto-fill,minmax(140px,1fr))}}
"""

JS = """
(function(){
var prev=document.querySelector('a[rel=prev]'),next=document.querySelector('a[rel=next]');
document.addEventListener('keydown',function(e){if(e.target.tagName==='INPUT'||e.target.tagName==='TEXTAREA')return;
if(e.key==='ArrowLeft'&&prev)location.href=prev.href;if(e.key==='ArrowRight'&&next)location.href=next.href;});
var box=document.getElementById('sql');
function q(s){return "'"+s.replace(/'/g,"''")+"'";}
document.addEventListener('click',function(e){var b=e.target.closest('button[data-kind]');if(!b||!box)return;var r=b.closest('tr');
var t=box.querySelector('textarea');t.value="insert into dedup.overrides (kind, collection, path_a, path_b, note)\\n  values ("+
q(b.dataset.kind)+", "+q(document.body.dataset.collection)+", "+q(r.cells[0].textContent)+", "+q(r.cells[1].textContent)+", '');";
box.style.display='block';t.focus();t.select();});
var n=document.querySelectorAll('section.group').length,c=document.getElementById('count');if(c)c.textContent=n+(n===1?' group':' groups')+' on this page';
})();
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if type(value) is float:
        return "–" if value != value else _FORMATS[digits](value)
    return str(value)


_FORMATS = {d: f"{{:.{d}f}}".format for d in range(4)}


def _doc(title: str, body: str, collection: str, nav: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body data-collection='{_e(collection)}'><header><nav>{nav}</nav></header>"
        f"<main>{body}</main>"
        "<div id=sql role=dialog aria-label='SQL for an override'><b>Run in DuckDB, then re-run the "
        "pipeline:</b> <button onclick=\"this.parentNode.style.display='none'\">close</button>"
        "<textarea readonly></textarea></div>"
        f"<script>{JS}</script></body></html>"
    )


def _page_file(page: int) -> str:
    return f"page-{page:04d}.html"


def _nav(page: int, pages: int, prefix: str) -> str:
    parts = [f"<a href='{prefix}index.html'>index</a>"]
    if page > 1:
        parts.append(f"<a rel=prev href='{prefix}pages/{_page_file(page - 1)}'>« previous</a>")
    parts.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        parts.append(f"<a rel=next href='{prefix}pages/{_page_file(page + 1)}'>next »</a>")
    parts.append("<span id=count></span><span class=comp>keys: ← →</span>")
    return "".join(parts)


_ROLE = {"Best": "★ KEEPER", "Duplicate": "duplicate"}
_SHORT = {"q_resolution": "res", "q_sharpness": "sharp", "q_exposure": "expo", "q_noise": "noise",
          "q_compression": "comp"}


def _figure(m: dict, thumbs_ok: set[str], failed: dict[str, str], up: str = "../") -> str:
    """One image of a group; ``up`` leads from the page's folder to ``gallery/``."""
    key = m.get("content_hash")
    keeper = m["status"] == "Best"
    folder = "best" if keeper else "duplicates"
    href = f"{up}../{folder}/{quote(m['path'])}"
    if key and key in thumbs_ok:
        pic = (
            f"<a class=thumb href='{href}'><img loading=lazy decoding=async alt='' "
            f"src='{up}thumbs/{key[:2]}/{key}.webp'></a>"
        )
    else:
        why = failed.get(key or "", "no thumbnail")
        pic = f"<div class='thumb nothumb'>no thumbnail: {_e(why)}</div>"
    return (
        f"<figure class={'keeper' if keeper else 'dup'} data-path='{m['path_html']}'>{pic}"
        f"<figcaption><span class=role>{_ROLE.get(m['status'], _e(m['status']))}</span> "
        f"<span class=q>Q {m['q_text']}</span><br>"
        + (f"<span class=why>{_e(m['keeper_reason'])}</span><br>" if m.get("keeper_reason") else "")
        + f"<a class=path href='{href}'>{m['path_html']}</a><br>"
        f"<span class=comp>{m['comps_text']}<br>{m['dims_text']}</span></figcaption></figure>"
    )


_KIND_LABEL = {
    "joined": "",
    "same_picture": "<span class='badge ana'>✎ analyst: same picture</span>",
    "not_duplicate": "<span class='badge ana'>✎ analyst: not a duplicate</span>",
    "cut": "<span class='badge bad'>✂ cut by an analyst override</span>",
}


def _pair_row(p: dict, borderline: float) -> str:
    transform = p.get("transform")
    tname = DIHEDRAL_NAMES[transform] if transform is not None and 0 <= transform < len(DIHEDRAL_NAMES) else ""
    margin = p.get("margin")
    low = margin is not None and margin < borderline
    stage = f" ({p['weakest_stage']})" if p.get("weakest_stage") else ""
    note = f"<br><i>{p['note_html']}</i>" if p.get("note_html") else ""
    kind = p.get("kind")
    action = ""
    if kind in ("joined", "same_picture"):
        action = "<button data-kind=not_duplicate>not a duplicate…</button>"
    return (
        f"<tr{' class=low' if low else ''}><td class=p>{p['a_html']}</td><td class=p>{p['b_html']}</td>"
        f"<td>{p['source_html']}{_KIND_LABEL.get(kind, '')}{note}</td><td class=n>{_num(p.get('hamming'))}</td>"
        f"<td>{tname}</td><td class=n>{_num(p.get('color_similarity'), 3)}</td>"
        f"<td class=n>{_num(p.get('global_similarity'), 3)}</td><td class=n>{_num(p.get('inliers'))}</td>"
        f"<td class=n>{_num(p.get('overlap_disagreement'), 2)}</td>"
        f"<td class='n m'>{_num(margin)}{stage}{' ⚠' if low else ''}</td><td>{action}</td></tr>"
    )


PAIR_HEADER = (
    "<tr><th>image A</th><th>image B</th><th>found by</th><th title='Hamming distance of the 64-bit "
    "wavelet hashes'>hash dist.</th><th>transform</th><th>colour sim.</th><th>global sim.</th>"
    "<th>keypoint inliers</th><th title='fraction of the shared area where the two pictures "
    "disagree once aligned'>overlap disagr.</th>"
    "<th title='smallest scaled margin above a stage threshold; low = borderline'>margin (weakest stage)</th>"
    "<th></th></tr>"
)


OPEN_PAIRS = 6  # pairs shown before "more pairs" (weakest first)


def _group_html(g: dict, members: list[dict], pairs: list[dict], o: GalleryOptions,
                thumbs_ok: set[str], failed: dict[str, str]) -> str:
    badge = "<span class='badge warn'>⚠ borderline</span>" if g["borderline"] else ""
    if any(p["kind"] != "joined" for p in pairs):
        badge += "<span class='badge ana'>✎ analyst override</span>"
    shown = members[: o.members_shown]
    more = len(members) - len(shown)
    figures = "".join(_figure(m, thumbs_ok, failed) for m in shown)
    if more:
        figures += f"<p>… and {plural(more, 'more image')} (see image_report.csv, Group ID {_e(g['group_id'])})</p>"
    shown_pairs = pairs[: o.pairs_shown]
    head = "".join(_pair_row(p, o.borderline_margin) for p in shown_pairs[:OPEN_PAIRS])
    table = f"<div class=tw><table><thead>{PAIR_HEADER}</thead><tbody>{head}</tbody></table></div>"
    rest = shown_pairs[OPEN_PAIRS:]
    if rest:
        rows = "".join(_pair_row(p, o.borderline_margin) for p in rest)
        if len(pairs) > len(shown_pairs):
            rows += f"<tr><td colspan=10>… {plural(len(pairs) - len(shown_pairs), 'more pair')} (dedup.local_groups)</td></tr>"
        table += (
            f"<details><summary>{plural(len(pairs) - OPEN_PAIRS, 'more pair')}</summary><div class=tw><table>"
            f"<thead>{PAIR_HEADER}</thead><tbody>{rows}</tbody></table></div></details>"
        )
    return (
        f"<section class=group id='{_e(g['group_id'])}' data-size={g['group_size']}>"
        f"<h2>#{g['rank']} · {g['group_size']} images · weakest pair margin "
        f"{_num(g['weakest_margin'])}{badge} <small class=comp>{_e(g['group_id'])}</small></h2>"
        f"<div class=members>{figures}</div>{table}</section>"
    )


def _slices(frame: pl.DataFrame, key: str) -> Iterator[tuple[int, pl.DataFrame]]:
    """Contiguous runs of equal ``key`` in a frame sorted by it."""
    if frame.height == 0:
        return
    values = frame[key]
    starts = (values != values.shift(1)).fill_null(True).arg_true().to_list() + [frame.height]
    for s, e in zip(starts[:-1], starts[1:]):
        yield values[s], frame.slice(s, e - s)


def _by_rank(frame: pl.DataFrame) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in frame.iter_rows(named=True):
        out.setdefault(row["rank"], []).append(row)
    return out


def render_pages(data: GalleryData, collection: str, options: GalleryOptions,
                 thumbs_ok: set[str], failed: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(name, html) of every group page, in order, one page in memory at a time."""
    pages = int(data.groups["page"].max() or 0) if data.groups.height else 0
    members = dict(_slices(data.members, "page"))
    pairs = dict(_slices(data.pairs, "page"))
    title = options.title or collection
    for page, groups in _slices(data.groups, "page"):
        m = _by_rank(members.get(page, data.members.clear()))
        p = _by_rank(pairs.get(page, data.pairs.clear()))
        body = [f"<h1>{_e(title)}: duplicate groups, page {page} of {pages}</h1>"]
        for g in groups.iter_rows(named=True):
            body.append(_group_html(g, m.get(g["rank"], []), p.get(g["rank"], []), options, thumbs_ok, failed))
        yield f"{PAGES}/{_page_file(page)}", _doc(
            f"{title} – page {page}", "".join(body), collection, _nav(page, pages, "../")
        )


def render_error_pages(data: GalleryData, collection: str, options: GalleryOptions) -> Iterator[tuple[str, str]]:
    n = data.errors.height
    pages = max(1, math.ceil(n / options.errors_per_page))
    title = options.title or collection
    for i in range(pages):
        chunk = data.errors.slice(i * options.errors_per_page, options.errors_per_page)
        rows = "".join(
            f"<tr><td class=p>{_e(p)}</td><td><span class='badge bad'>{_e(r)}</span></td><td>{_e(msg)}</td></tr>"
            for p, r, msg in chunk.iter_rows()
        )
        nav = "<a href='../index.html'>index</a>" + "".join(
            f"<a href='errors-{j + 1:04d}.html'>{j + 1}</a>" for j in range(pages) if j != i
        )
        body = (
            f"<h1>{_e(title)}: unreadable images ({n})</h1>"
            "<p>These images could not be decoded; they appear in image_report.csv with status Error "
            "and are not copied.</p>"
            f"<div class=tw><table id=unreadable><thead><tr><th>path</th><th>reason</th><th>message</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )
        yield f"{ERRORS}/errors-{i + 1:04d}.html", _doc(f"{title} – unreadable {i + 1}", body, collection, nav)


LEGEND = """<dl class=legend>
<dt><span class=role style='background:var(--key);color:#fff'>★ KEEPER</span> double border</dt>
<dd>the copy kept (highest quality score); others are labelled <span class=role>duplicate</span>, dashed border</dd>
<dt>Q</dt><dd>quality score 0–100; below it its components: resolution, sharpness, exposure, noise, compression (0–100 each)</dd>
<dt>pairs</dt><dd>the verified pairs that joined the group, with each stage's score: hash distance (0 = identical
hashes), colour similarity, global (embedding) similarity, keypoint inliers</dd>
<dt>margin</dt><dd>how far a pair's scores are above the thresholds ({thr}), scaled 0–1: the weakest stage counts;
<span class='badge warn'>⚠ borderline</span> below {border}; exact copies and analyst pairs have 1</dd>
<dt><span class='badge ana'>✎ analyst</span></dt><dd>an override from dedup.overrides; <span class='badge bad'>✂ cut</span>:
a verified pair cut so that two images an analyst marked apart stay apart</dd>
</dl>"""


def _first_groups(data: GalleryData, options: GalleryOptions, thumbs_ok: set[str],
                  failed: dict[str, str]) -> str:
    """The first groups with their thumbnails, for the index: pictures before tables."""
    first = data.groups.head(options.index_groups)
    if first.height == 0:
        return "<p>No duplicate groups were found.</p>"
    members = _by_rank(data.members.filter(pl.col("rank") <= first["rank"].max()))
    out = []
    for g in first.iter_rows(named=True):
        shown = members.get(g["rank"], [])[: options.index_members]
        href = f"pages/{_page_file(g['page'])}#{_e(g['group_id'])}"
        more = g["group_size"] - len(shown)
        badge = "<span class='badge warn'>⚠ borderline</span>" if g["borderline"] else ""
        out.append(
            f"<section class=group id='{_e(g['group_id'])}' data-size={g['group_size']}>"
            f"<h3><a href='{href}'>#{g['rank']}</a> · {plural(g['group_size'], 'image')} · "
            f"weakest pair margin {_num(g['weakest_margin'])}{badge}</h3>"
            f"<div class=members>{''.join(_figure(m, thumbs_ok, failed, '') for m in shown)}</div>"
            + (f"<p><a href='{href}'>{plural(more, 'more image')} on page {g['page']}</a></p>" if more else "")
            + "</section>"
        )
    rest = data.groups.height - first.height
    link = (f"<p><a href='pages/{_page_file(1)}'>All {plural(data.groups.height, 'group')}, "
            f"with their pairs and scores, from page 1 →</a>"
            + (f" ({plural(rest, 'more group')} after these)" if rest else "") + "</p>")
    return "".join(out) + link


def render_index(data: GalleryData, collection: str, options: GalleryOptions,
                 thresholds: Thresholds, error_pages: int, result_info: dict,
                 thumbs_ok: set[str] = frozenset(), failed: dict[str, str] | None = None) -> str:
    """``index.html``: totals, the first groups' thumbnails, the legend and the tables."""
    t = data.totals
    title = options.title or collection
    pages = int(data.groups["page"].max() or 0) if data.groups.height else 0
    n_first = min(options.index_groups, data.groups.height)
    summary = "".join(
        f"<tr><th>{_e(k.replace('_', ' '))}</th><td class=n>{v}</td></tr>" for k, v in t.items()
    )
    page_rows = []
    if data.groups.height:
        per_page = data.groups.group_by("page", maintain_order=True).agg(
            pl.col("rank").min().alias("first"), pl.col("rank").max().alias("last"),
            pl.col("group_size").max().alias("largest"), pl.col("group_size").min().alias("smallest"),
            pl.col("borderline").sum().alias("borderline"),
        )
        for page, first, last, largest, smallest, bl in per_page.iter_rows():
            page_rows.append(
                f"<tr><td><a href='pages/{_page_file(page)}'>page {page}</a></td><td class=n>#{first}–#{last}</td>"
                f"<td class=n>{smallest}–{largest}</td><td class=n>{bl}</td></tr>"
            )
    border = data.groups.filter(pl.col("borderline")).sort(
        ["weakest_margin", "group_size", "group_id"], descending=[False, True, False]
    ).head(options.borderline_listed)
    border_rows = "".join(
        f"<tr><td><a href='pages/{_page_file(pg)}#{_e(gid)}'>#{rk}</a></td><td class=n>{_num(mg)}</td>"
        f"<td class=n>{sz}</td><td class=p>{_e(kp)}</td></tr>"
        for gid, rk, pg, mg, sz, kp in border.select(
            "group_id", "rank", "page", "weakest_margin", "group_size", "keeper_path"
        ).iter_rows()
    )
    ov_rows = "".join(
        f"<tr><td>{_e(k)}</td><td class=p>{_e(a)}</td><td class=p>{_e(b)}</td><td>{_e(n)}</td>"
        f"<td>{_e(c)}</td><td>{_e(s)}</td></tr>"
        for k, a, b, n, c, s in data.overrides.head(1000).select(
            "kind", "path_a", "path_b", "note", "created_at", "state"
        ).iter_rows()
    )
    thr = (f"colour similarity ≥ {thresholds.color}, global similarity ≥ {thresholds.global_}, "
           f"keypoint inliers ≥ {thresholds.inliers:g}, overlap disagreement ≤ {thresholds.overlap:g}")
    info = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in result_info.items())
    err_rows = "".join(
        f"<tr><td class=p>{_e(p)}</td><td><span class='badge bad'>{_e(r)}</span></td></tr>"
        for p, r in data.errors.head(20).select("path", "error_reason").iter_rows()
    )
    if data.errors.height > 20:
        err_rows += f"<tr><td colspan=2>… {data.errors.height - 20} more</td></tr>"
    body = f"""<h1>{_e(title)}: review gallery</h1>
<table>{summary}{info}</table>
<h2>Largest groups{f" (first {n_first})" if n_first < data.groups.height else ""}</h2>
{_first_groups(data, options, thumbs_ok, failed or {})}
<h2>Legend</h2>{LEGEND.format(thr=_e(thr), border=options.borderline_margin)}
<h2>Groups, largest first ({plural(t['groups'], 'group')} on {plural(pages, 'page')})</h2>
<p>At equal size the most borderline group comes first.</p>
<div class=tw><table id=pages><thead><tr><th>page</th><th>groups</th><th>sizes</th><th>borderline</th></tr></thead>
<tbody>{''.join(page_rows)}</tbody></table></div>
<h2>Most borderline groups ({t['borderline_groups']}, first {options.borderline_listed} listed)</h2>
<div class=tw><table id=borderline><thead><tr><th>group</th><th>margin</th><th>size</th><th>keeper</th></tr></thead>
<tbody>{border_rows}</tbody></table></div>
<h2>Unreadable images ({t['unreadable']})</h2>
<div class=tw><table id=unreadable><thead><tr><th>path</th><th>reason</th></tr></thead><tbody>{err_rows}</tbody></table></div>
<p>Full list with messages: {''.join(f"<a href='errors/errors-{i + 1:04d}.html'>list {i + 1}</a> " for i in range(error_pages))}</p>
<h2>Analyst overrides ({data.overrides.height})</h2>
<div class=tw><table id=overrides><thead><tr><th>kind</th><th>path A</th><th>path B</th><th>note</th><th>created</th>
<th>state</th></tr></thead><tbody>{ov_rows}</tbody></table></div>
<p>Mark pairs in DuckDB, then re-run the pipeline (best_selection onwards):</p>
<pre>insert into dedup.overrides (kind, collection, path_a, path_b, note)
  values ('not_duplicate', '{_e(collection)}', 'path/a.jpg', 'path/b.jpg', 'different shots');
insert into dedup.overrides (kind, collection, path_a, path_b, note)
  values ('same_picture', '{_e(collection)}', 'path/c.jpg', 'path/d.jpg', 'same photo, heavy edit');</pre>
"""
    nav = f"<a href='pages/{_page_file(1)}'>first page</a>" if pages else "<span>no groups</span>"
    return _doc(f"{title} – review gallery", body, collection, nav)


# --------------------------------------------------------------------------- writing


def write_gallery(
    store: ImageStore,
    collection: str,
    data: GalleryData,
    *,
    thresholds: Thresholds = Thresholds(),
    options: GalleryOptions = GalleryOptions(),
    log: Callable[[str], None] = lambda _msg: None,
) -> GalleryResult:
    """Make missing thumbnails, write every page and the index; remove stale pages."""
    made, cached, failed = ensure_thumbnails(
        store, collection, data.members, side=options.thumb_side, workers=options.workers
    )
    log(f"gallery thumbnails: {made} made, {cached} already there, {len(failed)} failed")
    thumbs_ok = set(data.members["content_hash"].drop_nulls().to_list()) - set(failed)
    written: set[str] = set()
    largest, total = ("", 0), 0

    def put(name: str, text: str) -> str:
        nonlocal largest, total
        raw = text.encode("utf-8")
        location = store.write_output(collection, name, raw)
        written.add(name)
        total += len(raw)
        if len(raw) > largest[1]:
            largest = (name, len(raw))
        return location

    n_pages = 0
    for name, text in render_pages(data, collection, options, thumbs_ok, failed):
        put(name, text)
        n_pages += 1
        if n_pages % 200 == 0:
            log(f"gallery: {n_pages} pages written")
    error_pages = 0
    for name, text in render_error_pages(data, collection, options):
        put(name, text)
        error_pages += 1
    stale = [
        f for folder in (PAGES, ERRORS) for f in store.list_outputs(collection, folder)
        if f not in written
    ]
    for f in stale:
        store.delete_output(collection, f)
    info = {
        "thumbnails": f"{made} made, {cached} reused, {len(failed)} failed",
    }
    index = put(INDEX, render_index(
        data, collection, options, thresholds, error_pages, info, thumbs_ok, failed
    ))
    return GalleryResult(
        index=index, pages=n_pages, error_pages=error_pages, groups=data.groups,
        thumbnails_made=made, thumbnails_cached=cached, thumbnails_failed=failed,
        largest_file=largest, bytes_written=total, files_written=len(written),
        stale_removed=len(stale),
    )


# --------------------------------------------------------------------------- preview


def preview_groups(data: GalleryData, n: int = 4) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``n`` largest groups and the ``n`` most borderline ones."""
    largest = data.groups.head(n)
    border = data.groups.sort(["weakest_margin", "group_size", "group_id"], descending=[False, True, False]).head(n)
    return largest, border


def preview_markdown(
    data: GalleryData,
    location: str,
    thumb: Callable[[str], str | None],
    *,
    n: int = 4,
    per_group: int = 4,
) -> str:
    """Markdown for the Dagster UI: totals, the largest and the most borderline groups."""
    t = data.totals
    largest, border = preview_groups(data, n)
    members = data.members.filter(pl.col("rank").is_in(pl.concat([largest["rank"], border["rank"]])))
    by_rank = _by_rank(members)
    refs: dict[str, str] = {}  # path -> reference label ("" when no picture)
    uris: list[str] = []
    lines = [
        f"**{plural(t['groups'], 'group')}** ({plural(t['images_in_groups'], 'image')}, "
        f"{plural(t['duplicates'], 'duplicate')}), {t['borderline_groups']} borderline, "
        f"{t['unreadable']} unreadable, {plural(t['overrides'], 'analyst override')}.",
        "",
        f"Gallery: `{location}`",
    ]
    for heading, frame in (("Largest groups", largest), ("Most borderline groups", border)):
        if frame.height == 0:
            continue
        lines += ["", f"### {heading}", "", "| group | size | margin | images (★ keeper) |", "|---|---|---|---|"]
        for g in frame.iter_rows(named=True):
            cells = []
            for m in by_rank.get(g["rank"], [])[:per_group]:
                if m["path"] not in refs:
                    uri = thumb(m["path"])
                    refs[m["path"]] = f"t{len(uris) + 1}" if uri else ""
                    if uri:
                        uris.append(f"[t{len(uris) + 1}]: {uri}")
                star = "★ " if m["status"] == "Best" else ""
                label = f"{star}`{m['path'].replace('|', '/').replace('`', chr(39))}`"
                ref = refs[m["path"]]
                cells.append(f"![][{ref}] {label}" if ref else label)
            more = g["group_size"] - min(per_group, g["group_size"])
            if more:
                cells.append(f"+{more} more")
            lines.append(
                f"| #{g['rank']} page {g['page']} | {g['group_size']} | {_num(g['weakest_margin'])} | "
                + " ".join(cells) + " |"
            )
    return "\n".join(lines + ([""] + uris if uris else []))


__all__ = [
    "GalleryData", "GalleryOptions", "GalleryResult", "Thresholds", "ensure_thumbnails",
    "make_thumbnail", "pair_margins", "prepare", "preview_markdown", "render_index",
    "render_pages", "tiny_data_uri", "write_gallery",
]
