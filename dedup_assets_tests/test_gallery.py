"""The review gallery and analyst overrides: a real materialisation of the sample collection,
the gallery opened in headless Chromium, and overrides written with the README's SQL."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import duckdb
import polars as pl
import pytest
from dagster import DagsterInstance

from dedup_assets.core import gallery, overrides
from dedup_assets.core.grouping import components, select_keepers
from dedup_assets.core.sample import make_sample_collection
from dedup_assets.core.store import LocalFolderStore
from dedup_assets.definitions import build_resources
from dedup_assets.runner import materialize_collection

COLLECTION = "sample-photos"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "gallery"


# --------------------------------------------------------------------------- helpers


def chromium() -> str:
    exe = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
        None,
    )
    if exe is None:
        pytest.fail(
            "headless Chromium is required to check the gallery but was not found: "
            "install it with `apt-get install -y chromium chromium-driver` (.ci/run does this)"
        )
    return exe


def browse(page: Path, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``page`` after Chromium loaded it and ran its scripts (or a screenshot)."""
    args = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
    ]
    if screenshot:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        args += ["--hide-scrollbars", "--window-size=1366,2200", f"--screenshot={screenshot}"]
    else:
        args += ["--dump-dom"]
    done = subprocess.run(args + [page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    if screenshot:
        assert screenshot.stat().st_size > 10_000
    return done.stdout


class GalleryDom(HTMLParser):
    """Groups (section.group → figures with path and keeper flag), image sources, tables."""

    def __init__(self):
        super().__init__()
        self.groups: list[dict] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "section" and "group" in classes:
            self.groups.append({"id": a["id"], "figures": [], "html_size": a.get("data-size")})
        elif tag == "figure" and self.groups:
            self.groups[-1]["figures"].append((a["data-path"], "keeper" in classes))
        elif tag == "img":
            self.images.append(a["src"])

    def handle_data(self, data):
        self.text.append(data)


def parse(dom: str) -> GalleryDom:
    parser = GalleryDom()
    parser.feed(dom)
    parser.text = " ".join(parser.text)
    return parser


def read_report(out: Path) -> dict[str, dict]:
    with open(out / f"{COLLECTION}_deduplicated" / "image_report.csv", newline="") as f:
        return {r["Image Path"]: r for r in csv.DictReader(f)}


def report_groups(rows: dict[str, dict]) -> set[frozenset[str]]:
    by: dict[str, set[str]] = {}
    for path, r in rows.items():
        if r["Status"] in ("Best", "Duplicate"):
            by.setdefault(r["Group ID"], set()).add(path)
    return {frozenset(g) for g in by.values()}


CLICK_FIRST_BUTTON = (
    "<script>document.querySelector('button[data-kind]').click();"
    "document.body.setAttribute('data-sql', document.querySelector('#sql textarea').value);</script>"
)


def readme_override_sql() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- overrides-example", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    assert "insert into dedup.overrides" in block
    return block


# --------------------------------------------------------------------------- pure parts


def test_cannot_link_keeps_images_apart_through_other_edges():
    # 0-1, 1-2, 2-3 chain: without constraints one group
    edges = [(0, 1), (1, 2), (2, 3)]
    assert len(set(components(4, edges))) == 1
    # 0 and 3 must stay apart: the weakest edge that would join them (last merged) is cut
    labels = components(4, edges, cannot_link=[(0, 3)])
    assert labels[0] == labels[1] == labels[2] != labels[3]
    sel = select_keepers(
        ["a", "b", "c", "d"], [True] * 4, [50, 60, 70, 80], [1] * 4, [1] * 4, edges, [(0, 3)]
    )
    assert sel.refused_edges == 1 and sel.status.count("Unique") == 1


def test_apply_overrides_orders_and_filters_edges():
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    pairs = pl.DataFrame(
        {
            "path_a": ["a.jpg", "b.jpg", "a.jpg"],
            "path_b": ["b.jpg", "c.jpg", "c.jpg"],
            "source": ["hash", "exact", "hash"],
            "inliers": [30, None, 300],
            "global_similarity": [0.9, 1.0, 0.95],
        }
    )
    ov = pl.DataFrame(
        {
            "kind": ["not_duplicate", "same_picture", "same_picture"],
            "path_a": ["a.jpg", "d.jpg", "a.jpg"],
            "path_b": ["b.jpg", "e.jpg", "zzz.jpg"],
            "note": ["", "", ""],
            "created_at": [None, None, None],
        },
        schema=overrides.SCHEMA,
    )
    g = overrides.apply_overrides(paths, pairs, ov)
    # must-link first, then exact, then most inliers; the not_duplicate edge is gone
    assert g.edges == [(3, 4), (1, 2), (0, 2)]
    assert g.cannot_link == [(0, 1)]
    assert g.stats["unknown_path"] == 1 and g.stats["verified_edges_removed"] == 1
    sel = select_keepers(paths, [True] * 5, [1, 2, 3, 4, 5], [1] * 5, [1] * 5, g.edges, g.cannot_link)
    assert sel.group_id[3] == sel.group_id[4]
    # b–c (exact) is merged first, so a–c would put a with b: refused by the cannot-link
    assert sel.group_id[0] != sel.group_id[1]


def test_overrides_table_is_created_and_latest_row_wins(tmp_path):
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    try:
        assert overrides.load_overrides(con, "c").height == 0  # created when missing
        con.execute(
            "insert into dedup.overrides (kind, collection, path_a, path_b, created_at) values "
            "('same_picture', 'c', 'b.jpg', 'a.jpg', '2024-01-01'),"
            "('not_duplicate', 'c', 'a.jpg', 'b.jpg', '2024-02-01'),"
            "('same_picture', 'other', 'a.jpg', 'b.jpg', '2024-03-01')"
        )
        rows = overrides.load_overrides(con, "c").rows()
        assert [r[:3] for r in rows] == [("not_duplicate", "a.jpg", "b.jpg")]
        with pytest.raises(duckdb.ConstraintException):
            con.execute(
                "insert into dedup.overrides (kind, collection, path_a, path_b) values ('merge', 'c', 'a', 'b')"
            )
    finally:
        con.close()


def _synthetic(n_groups: int, size: int = 3):
    paths, group, status, keys = [], [], [], []
    for g in range(n_groups):
        for j in range(size):
            paths.append(f"g{g:03d}/<img {j}>.jpg")
            group.append(f"g{g:03d}")
            status.append("Best" if j == 0 else "Duplicate")
            keys.append(f"{g:030d}{j:02d}")
    best = pl.DataFrame(
        {
            "path": paths + ["bad.jpg"],
            "status": status + ["Error"],
            "group_id": group + [None],
            "group_size": [size] * len(paths) + [0],
            "keeper_path": [f"g{g[1:]}/<img 0>.jpg" for g in group] + [None],
            "quality_score": [50.0] * len(paths) + [None],
            "error_reason": [None] * len(paths) + ["truncated"],
            "error_message": [None] * len(paths) + ["cut short"],
        }
    )
    images = pl.DataFrame({"path": paths, "content_hash": keys})
    pairs = pl.DataFrame(
        {
            "path_a": paths[0::size],
            "path_b": paths[1::size],
            "source": ["hash"] * n_groups,
            "color_similarity": [0.61 + 0.3 * (g % 2) for g in range(n_groups)],
            "global_similarity": [0.99] * n_groups,
            "inliers": [100] * n_groups,
            "local_kept": [True] * n_groups,
        }
    )
    return best, images, pairs


def test_pages_are_bounded_ordered_and_escaped():
    best, images, pairs = _synthetic(25)
    options = gallery.GalleryOptions(groups_per_page=10, images_per_page=12)
    data = gallery.prepare(best, images, pairs, overrides.empty_overrides(), options=options)
    g = data.groups
    assert g.height == 25 and g["page"].max() == 7  # 12 images per page: 4 groups of 3
    assert g.group_by("page").len()["len"].max() <= 4
    # same size: the borderline groups (colour just above 0.6) come first
    assert g["borderline"].head(13).all() and not g["borderline"].tail(12).any()
    pages = list(gallery.render_pages(data, "c", options, set(), {}))
    assert len(pages) == 7
    assert "<img 0>" not in pages[0][1] and "&lt;img 0&gt;.jpg" in pages[0][1]
    assert "no thumbnail" in pages[0][1]


def test_counts_agree_in_number(tmp_path):
    best, images, pairs = _synthetic(1)  # one group of three
    options = gallery.GalleryOptions(members_shown=2)
    data = gallery.prepare(best, images, pairs, overrides.empty_overrides(), options=options)
    index = gallery.render_index(data, "c", options, gallery.Thresholds(), 1, {})
    assert "(1 group on 1 page)" in index
    [(name, page)] = gallery.render_pages(data, "c", options, set(), {})
    assert "… and 1 more image (" in page
    preview = gallery.preview_markdown(data, "gallery/index.html", lambda path: None)
    assert preview.startswith("**1 group** (3 images, 2 duplicates), 1 borderline, 1 unreadable, "
                              "0 analyst overrides.")
    (tmp_path / "page.html").write_text(page)
    assert "1 group on this page" in parse(browse(tmp_path / "page.html", tmp_path)).text
    best, images, pairs = _synthetic(2)
    data = gallery.prepare(best, images, pairs, overrides.empty_overrides(),
                           options=gallery.GalleryOptions(groups_per_page=1))
    index = gallery.render_index(data, "c", options, gallery.Thresholds(), 1, {})
    assert "(2 groups on 2 pages)" in index


def test_index_shows_the_first_groups_thumbnails_and_links_to_the_rest():
    best, images, pairs = _synthetic(25, size=10)
    options = gallery.GalleryOptions(groups_per_page=10, index_groups=3, index_members=4)
    data = gallery.prepare(best, images, pairs, overrides.empty_overrides(), options=options)
    thumbs = set(images["content_hash"].to_list())
    index = parse(gallery.render_index(data, "c", options, gallery.Thresholds(), 1, {}, thumbs, {}))
    first = data.groups.head(3)
    assert [g["id"] for g in index.groups] == first["group_id"].to_list()
    assert [len(g["figures"]) for g in index.groups] == [4, 4, 4]
    assert all(keeper == (n == 0) for g in index.groups for n, (_, keeper) in enumerate(g["figures"]))
    assert all(src.startswith("thumbs/") for src in index.images) and len(index.images) == 12
    assert "Largest groups (first 3)" in index.text and "6 more images on page 1" in index.text
    assert "All 25 groups" in index.text and "(22 more groups after these)" in index.text


def test_thumbnails_are_made_once(tmp_path):
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (640, 480), (200, 30, 30)).save(src / "a.jpg")
    (src / "b.jpg").write_bytes((src / "a.jpg").read_bytes())  # same content: one thumbnail
    Image.new("RGB", (300, 600), (30, 30, 200)).save(src / "c.png")
    store = LocalFolderStore(str(tmp_path / "src"), str(tmp_path / "out"))
    from dedup_assets.core.content import content_hash

    keys = {p: content_hash((src / p).read_bytes()) for p in ("a.jpg", "b.jpg", "c.png")}
    members = pl.DataFrame({"path": list(keys), "content_hash": list(keys.values())})
    assert gallery.ensure_thumbnails(store, "c", members, workers=1) == (2, 0, {})
    assert gallery.ensure_thumbnails(store, "c", members, workers=1) == (0, 2, {})
    thumb = tmp_path / "out" / "c_deduplicated" / gallery.thumb_name(keys["c.png"])
    with Image.open(thumb) as im:
        assert im.format == "WEBP" and max(im.size) == 160 and im.size[1] > im.size[0]


# --------------------------------------------------------------------------- through Dagster


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery-src")
    truth = make_sample_collection(root / COLLECTION)
    out = tmp_path_factory.mktemp("gallery-out")
    instance = DagsterInstance.ephemeral()
    db = out / "dedup_assets.duckdb"
    resources = build_resources(source_root=str(root), output_root=str(out), database=str(db))

    def run():
        result = materialize_collection(
            instance, COLLECTION, resources,
            op_config={n: {"workers": 1} for n in ("wavelet_hashes", "review_gallery")},
        )
        assert result.success
        return result

    first = run()
    return run, first, out, db, truth


def test_gallery_in_headless_chromium(sample_run, tmp_path):
    _, result, out, db, truth = sample_run
    rows = read_report(out)
    folder = out / f"{COLLECTION}_deduplicated" / "gallery"
    page = folder / "pages" / "page-0001.html"

    dom = parse(browse(page, tmp_path))
    shown = {frozenset(p for p, _ in g["figures"]) for g in dom.groups}
    assert shown == {frozenset(g) for g in truth["groups"]}
    for g in dom.groups:
        keepers = [p for p, keeper in g["figures"] if keeper]
        assert len(keepers) == 1 and rows[keepers[0]]["Status"] == "Best"
        assert g["figures"][0][1], "the keeper comes first"
    assert "★ KEEPER" in dom.text and "groups on this page" in dom.text  # the inline JS ran
    # each image says why it is (not) the keeper, as the report does
    assert "the other is a crop of it" in dom.text and "greyscale; another copy is in colour" in dom.text
    assert dom.images and all((page.parent / unquote(src)).is_file() for src in dom.images)
    # largest group first
    sizes = [len(g["figures"]) for g in dom.groups]
    assert sizes == sorted(sizes, reverse=True)

    index = parse(browse(folder / "index.html", tmp_path))
    # the index opens with the first groups' pictures (all four here), as page 1 orders them
    assert [(g["id"], g["figures"]) for g in index.groups] == [(g["id"], g["figures"]) for g in dom.groups]
    assert len(index.images) == sum(len(g["figures"]) for g in dom.groups)
    assert all((folder / unquote(src)).is_file() for src in index.images)
    for path in truth["unreadable"]:
        assert path in index.text
    assert "truncated" in index.text and "empty" in index.text
    errors = parse(browse(folder / "errors" / "errors-0001.html", tmp_path)).text
    assert all(p in errors for p in truth["unreadable"])

    # the "not a duplicate…" button shows SQL that DuckDB accepts as an override
    clicking = tmp_path / "click.html"
    clicking.write_text(page.read_text().replace("</body>", CLICK_FIRST_BUTTON + "</body>"))
    sql = re.search(r'data-sql="([^"]*)"', browse(clicking, tmp_path)).group(1)
    con = duckdb.connect(str(tmp_path / "scratch.duckdb"))
    try:
        overrides.ensure_table(con)
        con.execute(html_unescape(sql))
        [(kind, a, b, _, _)] = overrides.load_overrides(con, COLLECTION).rows()
    finally:
        con.close()
    first = dom.groups[0]["figures"]
    assert kind == "not_duplicate" and {a, b} <= {p for p, _ in first}

    browse(page, tmp_path, screenshot=ARTIFACTS / "page-0001.png")
    browse(folder / "index.html", tmp_path, screenshot=ARTIFACTS / "index.png")

    meta = result.asset_materializations_for_node("review_gallery")[0].metadata
    preview = meta["preview"].value
    assert "### Largest groups" in preview and "### Most borderline groups" in preview
    assert "★ `" in preview and "data:image/jpeg;base64," in preview
    assert len(preview) < 40_000
    assert meta["gallery"].value == str(folder / "index.html")
    assert meta["pages"].value == 1 and meta["thumbnails_made"].value == len(
        {rows[p]["Content Hash"] for g in truth["groups"] for p in g}
    )
    con = duckdb.connect(str(db), read_only=True)
    try:
        n = con.execute("select count(*) from dedup.review_gallery where collection = ?", [COLLECTION])
        assert n.fetchone()[0] == len(truth["groups"])
        assert con.execute("select count(*) from dedup.overrides").fetchone()[0] == 0  # created, empty
    finally:
        con.close()


def test_override_written_with_readme_sql_changes_next_run(sample_run, tmp_path):
    run, _, out, db, truth = sample_run
    before = report_groups(read_report(out))
    chelsea = next(g for g in before if "thumbs/chelsea.jpg" in g)
    assert "originals/chelsea.jpg" in chelsea

    con = duckdb.connect(str(db))
    try:
        con.execute(readme_override_sql())
    finally:
        con.close()
    result = run()

    rows = read_report(out)
    after = report_groups(rows)
    assert rows["thumbs/chelsea.jpg"]["Status"] == "Unique"  # kept apart, also from the exact copy
    assert frozenset({"originals/chelsea.jpg", "backup/2024/chelsea.jpg"}) in after
    assert frozenset({"originals/camera.jpg", "originals/coins.jpg"}) in after
    assert after - before == {
        frozenset({"originals/chelsea.jpg", "backup/2024/chelsea.jpg"}),
        frozenset({"originals/camera.jpg", "originals/coins.jpg"}),
    }
    stats = result.asset_materializations_for_node("best_selection")[0].metadata["overrides"].value
    assert stats["same_picture"] == 1 and stats["not_duplicate"] == 1

    folder = out / f"{COLLECTION}_deduplicated" / "gallery"
    page = parse(browse(folder / "pages" / "page-0001.html", tmp_path))
    assert {frozenset(p for p, _ in g["figures"]) for g in page.groups} == after
    assert "analyst: same picture" in page.text and "cut by an analyst override" in page.text
    assert "same archive item" in page.text
    index = browse(folder / "index.html", tmp_path)
    assert len(re.findall(r">in effect<", index)) == 2
    browse(folder / "pages" / "page-0001.html", tmp_path, screenshot=ARTIFACTS / "page-0001-overrides.png")
