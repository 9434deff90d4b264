"""``dedup-assets bench pipeline`` on a tiny set of scikit-image photos (not timed)."""

from __future__ import annotations

import json
from pathlib import Path

from dedup_assets.bench import pipeline


def test_the_set_is_made_once_with_its_ground_truth_and_reused(tmp_path):
    args = pipeline._parser().parse_args(
        ["--n", "20", "--mp", "0.05", "--photos", "none", "--workers", "1", "--cache", str(tmp_path)]
    )
    sources = pipeline._sources("none")
    folder, truth_path, seconds = pipeline.cached_collection(args, sources)
    assert seconds is not None
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 20 and truth_path.parent == folder.parent
    truth = json.loads(truth_path.read_text())
    grouped = [p for g in truth["groups"] for p in g]
    assert len(grouped) == len(set(grouped)) and set(grouped) <= set(names)
    assert sorted(set(truth["notes"]["edits"].values())) == ["crop", "mirror", "resize"]
    assert len(truth["notes"]["edits"]) == 4  # a fifth are edited copies
    # 16 renders of the 9 sources (7 rendered twice), 4 copies of renders 0, 4, 8 and 12 (of
    # sources 0, 4, 8, 3): one source (7) has a single image, the other 8 are groups
    assert len(truth["groups"]) == 8 and len(grouped) == 19
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again, _, seconds = pipeline.cached_collection(args, sources)
    assert again == folder and seconds is None  # reused, not written again
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_bench_pipeline_reports_every_figure_on_a_small_set(tmp_path, capsys):
    from dedup_assets.bench import run as bench

    out = tmp_path / "pipeline.json"
    argv = ["--n", "60", "--mp", "0.3", "--photos", "none", "--workers", "2",
            "--cache", str(tmp_path / "cache"), "--json", str(out)]
    assert bench("pipeline", argv) == 0
    report = json.loads(out.read_text())
    assert {"decode_images_per_s", "run", "run_vs_decode", "collection", "machine"} <= set(report)
    run = report["run"]
    assert run["images"] == 60 and run["seconds"] > 0 and report["decode_images_per_s"] > 0
    assert set(run["stage_seconds"]) >= {"wavelet_hashes", "color_groups", "global_groups", "local_groups"}
    assert set(run["pairs"]) == {"candidates", "kept_by_colour", "global_checked", "global_discovered",
                                 "kept_by_global", "keypoint_checked", "kept_by_keypoints"}
    assert run["reads_per_image"]["wavelet_hashes"] == 1.0
    assert run["pairs"]["keypoint_checked"] > 0 and 0 < run["share_in_keypoint_pairs"] <= 1
    assert run["peak_rss"]["tree_sampled_mb"] > 0
    assert list(run["accuracy"]) == ["candidates", "color", "global", "local", "final"]
    final = run["accuracy"]["final"]
    assert final["true_pairs"] > 0 and final["precision"] == 1.0 and final["recall"] > 0.8
    table = capsys.readouterr().out
    assert "run / decode" in table and "local_groups" in table
    assert Path(report["collection"]["folder"]).is_dir()  # the set stays in the cache
