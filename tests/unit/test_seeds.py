"""Figures over seeds: means and spreads in each figure's shape, and which differences are real."""

from __future__ import annotations

import statistics

import pytest

from captioner.compare.seeds import differences, mean_and_spread, separation_chance


def test_mean_and_spread_keep_the_shape_of_each_figure() -> None:
    runs = [
        {"params": 100, "test": {"bleu4": 0.2}, "norms": [1.0, 4.0], "by_position": [0.5, None],
         "val": [{"epoch": 1, "val/loss": 3.0}], "clip": None, "words": ["a", "b"]},
        {"params": 100, "test": {"bleu4": 0.4}, "norms": [3.0, 4.0], "by_position": [0.7, 0.9],
         "val": [{"epoch": 1, "val/loss": 2.0}], "clip": None, "words": ["a", "c"]},
    ]
    mean, spread = mean_and_spread(runs)
    assert mean["params"] == 100 and isinstance(mean["params"], int) and spread["params"] == 0.0
    assert mean["test"]["bleu4"] == pytest.approx(0.3)
    assert spread["test"]["bleu4"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    assert mean["norms"] == [2.0, 4.0] and spread["norms"] == [pytest.approx(2 ** 0.5), 0.0]
    # A position no caption of one run reached: the mean of the others, no spread from one value.
    assert mean["by_position"] == [pytest.approx(0.6), 0.9] and spread["by_position"][1] is None
    assert mean["val"] == [{"epoch": 1, "val/loss": 2.5}]
    assert mean["clip"] is None and spread["clip"] is None
    assert mean["words"] == ["a", None]


def test_one_run_has_no_spread() -> None:
    mean, spread = mean_and_spread([{"x": 0.25, "xs": [1.0, 2.0]}])
    assert mean == {"x": 0.25, "xs": [1.0, 2.0]} and spread == {"x": None, "xs": [None, None]}


def test_runs_of_different_lengths_are_a_bug_not_a_figure() -> None:
    with pytest.raises(ValueError, match="length"):
        mean_and_spread([[1.0, 2.0], [1.0]])


def test_separation_chance_is_that_of_the_most_extreme_rank_sum() -> None:
    assert separation_chance(3, 3) == pytest.approx(1 / 10)
    assert separation_chance(4, 4) == pytest.approx(1 / 35)
    assert separation_chance(5, 5) == pytest.approx(1 / 126)
    assert separation_chance(1, 1) == 1.0


def test_differences_call_real_only_complete_separations_rare_by_chance() -> None:
    found = differences({
        "test BLEU-4": {"rnn": [0.10, 0.12, 0.11, 0.13], "lstm": [0.20, 0.19, 0.22, 0.21],
                        "gru": [0.18, 0.12, 0.23, 0.20]},
        "1st object named: precision": {"rnn": [0.9, None, 0.8], "lstm": [0.95, 0.97, 0.99]},
    })
    by_pair = {(d.figure, d.higher, d.lower): d for d in found}
    lstm_rnn = by_pair[("test BLEU-4", "lstm", "rnn")]
    assert lstm_rnn.separated and lstm_rnn.real and lstm_rnn.chance == pytest.approx(1 / 35)
    assert lstm_rnn.higher_mean == pytest.approx(0.205) and lstm_rnn.lower_mean == pytest.approx(0.115)
    gru_rnn = by_pair[("test BLEU-4", "gru", "rnn")]
    assert not gru_rnn.separated and not gru_rnn.real  # 0.12 in both
    assert not by_pair[("test BLEU-4", "lstm", "gru")].separated
    # Apart in every seed, but 2 against 3 seeds are apart by chance 1 time in 5: not real.
    position = by_pair[("1st object named: precision", "lstm", "rnn")]
    assert position.separated and not position.real
    assert position.chance == pytest.approx(2 / 10)
    assert len(found) == 4
