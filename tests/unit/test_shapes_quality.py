"""The fresh-scene benchmark's scores: pair F1 and the paired interval that says whether one
checkpoint names the pairs better than another on the same scenes."""

from __future__ import annotations

from benchmarks.shapes_quality import dataset_scenes, pair_f1, paired_f1_interval
from captioner.data.shapes import COLOURS, SHAPES

PRESENT = [{"red circle"}, {"blue square", "red circle"}, {"green triangle"}, {"blue square"}] * 40


def test_pair_f1_counts_pairs_per_scene() -> None:
    missing_one = [{"red circle"}, {"blue square"}, {"green triangle"}, {"blue square"}] * 40
    scores = pair_f1(missing_one, PRESENT)
    assert scores["precision"] == 1.0 and scores["recall"] == 4 / 5
    assert abs(scores["f1"] - 8 / 9) < 1e-12 and scores["exact"] == 3 / 4


def test_the_paired_interval_is_zero_for_equals_and_excludes_zero_for_a_clear_difference() -> None:
    assert paired_f1_interval(PRESENT, PRESENT, PRESENT) == (0.0, 0.0, 0.0)
    worse = [{"red circle"}, {"blue square"}, {"green circle"}, {"blue square"}] * 40
    delta, low, high = paired_f1_interval(PRESENT, worse, PRESENT)
    assert abs(delta - (1 - pair_f1(worse, PRESENT)["f1"])) < 1e-12
    assert 0 < low < delta < high
    # Swapping the two flips the sign and mirrors the interval.
    back = paired_f1_interval(worse, PRESENT, PRESENT)
    assert abs(back[0] + delta) < 1e-12 and abs(back[1] + high) < 1e-12 and abs(back[2] + low) < 1e-12


def test_dataset_scenes_are_the_generators_own_pictures_with_their_pairs() -> None:
    scenes = dataset_scenes(6, seed=3, size=64, max_objects=5)
    assert len(scenes) == 6 and all(image.size == (64, 64) and image.mode == "RGB" for image, _ in scenes)
    assert all(1 <= len(objects) <= 5 for _, objects in scenes)
    assert {c for _, objects in scenes for c, _ in objects} <= set(COLOURS)
    assert {s for _, objects in scenes for _, s in objects} <= set(SHAPES)
    # Seeded: the same arguments give the same pictures and pairs.
    again = dataset_scenes(6, seed=3, size=64, max_objects=5)
    assert [o for _, o in again] == [o for _, o in scenes]
    assert all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(again, scenes))
