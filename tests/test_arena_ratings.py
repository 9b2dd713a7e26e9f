"""Ratings arithmetic against hand-computed cases."""

import math
import random

import numpy as np
import pytest

from vichat.arena.ratings import (
    ANCHOR,
    SCORES,
    bootstrap_ratings,
    fit_bradley_terry,
    leaderboard,
    online_elo,
    win_matrix,
)


def by_model(rows):
    return {r.model: r for r in rows}


def test_two_models_known_win_counts_give_the_known_ratio():
    # x beat y 3 times, lost once: the MLE odds are 3:1, so the gap is 400*log10(3) = 190.85,
    # split evenly around the 1000 anchor.
    rows = by_model(leaderboard([("x", "y", "a")] * 3 + [("x", "y", "b")], prior=0, rounds=0))
    gap = 400 * math.log10(3)
    assert rows["x"].rating == pytest.approx(1000 + gap / 2, abs=1e-6)
    assert rows["y"].rating == pytest.approx(1000 - gap / 2, abs=1e-6)


def test_sides_do_not_matter_only_who_won():
    a = by_model(leaderboard([("x", "y", "a")] * 3 + [("x", "y", "b")], prior=0, rounds=0))
    b = by_model(leaderboard([("y", "x", "b")] * 3 + [("y", "x", "a")], prior=0, rounds=0))
    assert a["x"].rating == pytest.approx(b["x"].rating)


def test_ties_count_half_a_win_each():
    # 2 wins, 1 loss, 2 ties for x: x has 3 "wins", y has 2 -> odds 3:2.
    outcomes = [("x", "y", "a")] * 2 + [("x", "y", "b")] + [("x", "y", "tie")] * 2
    rows = by_model(leaderboard(outcomes, prior=0, rounds=0))
    assert rows["x"].rating - rows["y"].rating == pytest.approx(400 * math.log10(1.5), abs=1e-6)
    assert rows["x"].ties == 2 and rows["x"].both_bad == 0


def test_both_bad_is_rated_as_a_tie_but_counted_apart():
    with_tie = by_model(leaderboard([("x", "y", "a")] * 2 + [("x", "y", "b"), ("x", "y", "tie")], prior=0, rounds=0))
    with_bad = by_model(leaderboard([("x", "y", "a")] * 2 + [("x", "y", "b"), ("x", "y", "both_bad")], prior=0, rounds=0))
    assert with_bad["x"].rating == pytest.approx(with_tie["x"].rating)
    assert with_bad["x"].both_bad == 1 and with_bad["x"].ties == 0
    assert with_tie["x"].ties == 1 and with_tie["x"].both_bad == 0
    assert SCORES["both_bad"] == SCORES["tie"] == 0.5


def test_three_models_transitive_ratios_and_anchor():
    # Strengths 4:2:1 generate expected win counts exactly proportional to p_i/(p_i+p_j);
    # the MLE recovers them, and the mean rating is the 1000 anchor.
    p = {"a": 4.0, "b": 2.0, "c": 1.0}
    n = 60
    w = np.zeros((3, 3))
    names = sorted(p)
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            if i != j:
                w[i, j] = n * p[x] / (p[x] + p[y])
    ratings = fit_bradley_terry(w, prior=0)
    assert ratings.mean() == pytest.approx(ANCHOR)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(2), abs=1e-6)
    assert ratings[1] - ratings[2] == pytest.approx(400 * math.log10(2), abs=1e-6)


def test_prior_keeps_an_undefeated_model_finite_and_fades_with_votes():
    few = by_model(leaderboard([("x", "y", "a")] * 2, rounds=0))
    assert all(math.isfinite(r.rating) for r in few.values())
    assert few["x"].rating > few["y"].rating
    ml = 400 * math.log10(3)
    many = by_model(leaderboard([("x", "y", "a")] * 300 + [("x", "y", "b")] * 100, rounds=0))
    assert many["x"].rating - many["y"].rating == pytest.approx(ml, rel=0.01)


def test_bootstrap_interval_contains_the_point_estimate():
    rnd = random.Random(3)
    strengths = {"m1": 3.0, "m2": 1.5, "m3": 1.0, "m4": 0.5}
    outcomes = []
    for _ in range(600):
        a, b = rnd.sample(sorted(strengths), 2)
        pa = strengths[a] / (strengths[a] + strengths[b])
        r = rnd.random()
        outcomes.append((a, b, "a" if r < pa * 0.8 else "b" if r < 0.8 else rnd.choice(["tie", "both_bad"])))
    rows = leaderboard(outcomes, rounds=500, seed=1)
    for r in rows:
        assert r.lower <= r.rating <= r.upper
        assert r.upper - r.lower < 150
    assert [r.model for r in rows][0] == "m1" and [r.model for r in rows][-1] == "m4"
    assert sum(r.battles for r in rows) == 2 * len(outcomes)


def test_bootstrap_is_reproducible_and_resamples_votes():
    outcomes = [("x", "y", "a")] * 6 + [("x", "y", "b")] * 4
    from vichat.arena.ratings import _indexed

    models, i, j, s = _indexed(outcomes)
    b1 = bootstrap_ratings(len(models), i, j, s, rounds=200, seed=7)
    b2 = bootstrap_ratings(len(models), i, j, s, rounds=200, seed=7)
    assert b1.shape == (200, 2)
    np.testing.assert_allclose(b1, b2)
    assert b1[:, 0].std() > 0  # resampling moves the estimate


def test_rank_is_shared_while_intervals_overlap():
    outcomes = [("x", "y", "a")] * 200 + [("x", "y", "b")] * 20 + [("y", "z", "a"), ("y", "z", "b")] * 5
    rows = by_model(leaderboard(outcomes, rounds=300))
    assert rows["x"].rank == 1
    assert rows["y"].rank == 2 and rows["z"].rank == 2  # y and z are indistinguishable


def test_online_elo_update_by_hand():
    # Both start at 1000: expected 0.5, K=16 -> the winner gains 8.
    r = online_elo([("x", "y", "a")], k=16)
    assert r == {"x": 1008.0, "y": 992.0}
    # Second game, y wins: expected score of x is 1/(1+10^((992-1008)/400)).
    e = 1 / (1 + 10 ** ((992 - 1008) / 400))
    r = online_elo([("x", "y", "a"), ("x", "y", "b")], k=16)
    assert r["x"] == pytest.approx(1008 + 16 * (0 - e))
    assert r["x"] + r["y"] == pytest.approx(2000)
    # A tie between equals changes nothing; both-bad is a tie too.
    assert online_elo([("x", "y", "tie"), ("x", "y", "both_bad")]) == {"x": 1000.0, "y": 1000.0}


def test_self_pairs_are_ignored_and_empty_input_is_empty():
    assert leaderboard([]) == []
    rows = by_model(leaderboard([("x", "x", "a"), ("x", "y", "a")], rounds=0))
    assert rows["x"].battles == 1


def test_win_matrix_counts_ties_half():
    w = win_matrix(2, np.array([0, 0]), np.array([1, 1]), np.array([1.0, 0.5]))
    np.testing.assert_allclose(w, [[0.0, 1.5], [0.5, 0.0]])
