"""Accuracy scoring against a ground truth (pairwise and B-cubed)."""

import json

import pytest

from dedup_assets.core.evaluate import GroundTruth, groups_from_edges, pair_errors, score


def _truth(tmp_path, **kw):
    path = tmp_path / "ground_truth.json"
    path.write_text(json.dumps({"groups": [], "unreadable": [], "ambiguous": [], **kw}))
    return GroundTruth.load(path)


def test_perfect_and_empty_predictions(tmp_path):
    truth = _truth(tmp_path, groups=[["a", "b", "c"], ["d", "e"]])
    images = ["a", "b", "c", "d", "e", "f"]
    s = score([["c", "b", "a"], ["e", "d"]], truth, images)
    assert (s.precision, s.recall, s.f1, s.bcubed_f1) == (1.0, 1.0, 1.0, 1.0)
    assert s.true_pairs == 4
    none = score([], truth, images)
    assert none.recall == 0.0 and none.precision == 1.0 and none.predicted_pairs == 0


def test_merge_and_split_errors(tmp_path):
    truth = _truth(tmp_path, groups=[["a", "b", "c"]])
    images = ["a", "b", "c", "d"]
    merged = score([["a", "b", "c", "d"]], truth, images)
    assert merged.recall == 1.0 and merged.precision == pytest.approx(3 / 6)
    # B-cubed: a,b,c precision 3/4 each, d 1/4; recall all 1
    assert merged.bcubed_precision == pytest.approx((3 * 0.75 + 0.25) / 4)
    split = score([["a", "b"]], truth, images)
    assert split.precision == 1.0 and split.recall == pytest.approx(1 / 3)
    fp, fn = pair_errors([["a", "b", "d"]], truth, images)
    assert fp == [("a", "d"), ("b", "d")] and fn == [("a", "c"), ("b", "c")]


def test_ambiguous_pairs_neither_rewarded_nor_penalised(tmp_path):
    truth = _truth(tmp_path, groups=[["a", "b"]], ambiguous=[["x", "y", "z"]])
    images = ["a", "b", "x", "y", "z"]
    with_amb = score([["a", "b"], ["x", "y"]], truth, images)
    without = score([["a", "b"]], truth, images)
    assert with_amb.as_dict() == without.as_dict()
    assert with_amb.bcubed_f1 == 1.0


def test_unreadable_images_are_outside_the_scored_universe(tmp_path):
    truth = _truth(tmp_path, groups=[["a", "b", "bad"]], unreadable=["bad"])
    s = score([["a", "b"]], truth, ["a", "b"])
    assert (s.precision, s.recall) == (1.0, 1.0)


def test_groups_from_edges_are_connected_components():
    groups = groups_from_edges(["a", "b", "c", "d", "e"], [("a", "b"), ("c", "b"), ("d", "e")])
    assert sorted(sorted(g) for g in groups) == [["a", "b", "c"], ["d", "e"]]
