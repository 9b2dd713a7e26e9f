"""Arena ratings: Bradley-Terry on the Elo scale with bootstrap intervals, and online Elo.

Bradley-Terry: P(i beats j) = p_i / (p_i + p_j). A rating is ``1000 + 400 * log10(p_i)`` with
the strengths normalised so their geometric mean is 1: the models' mean rating is exactly 1000,
and 400 points more means 10:1 odds. The fit is Hunter's (2004) MM algorithm in numpy on the win
matrix, with a tie counted as half a win for each side. ``both_bad`` is rated as a tie (neither
answer was better) but stored and counted on its own.

A model that never won (or never lost) has no finite maximum-likelihood rating. ``prior`` adds,
for every model, ``prior`` wins and ``prior`` losses against a virtual reference player: a weak
pull towards the mean that keeps every rating finite and fades as votes accumulate. ``prior=0``
gives the plain maximum-likelihood fit (used by the hand-computed tests).

Intervals: percentile bootstrap, resampling votes with replacement (a multinomial draw over the
distinct (pair, outcome) cells, which is the same distribution and much cheaper), refitting each
sample. Online Elo replays the votes in order with a K factor, as classic arena tables show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

SCALE = 400.0
BASE = 10.0
ANCHOR = 1000.0

#: The score of the left model (A) for each outcome.
SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}

Outcome = tuple[str, str, str]  # (model_a, model_b, vote)


def _indexed(outcomes: Iterable[Outcome]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Model names and, per vote, the two model indices and A's score (self-pairs dropped)."""
    rows = [(a, b, SCORES[v]) for a, b, v in outcomes if a != b]
    models = sorted({m for a, b, _ in rows for m in (a, b)})
    index = {m: k for k, m in enumerate(models)}
    i = np.array([index[a] for a, _, _ in rows], dtype=np.int64)
    j = np.array([index[b] for _, b, _ in rows], dtype=np.int64)
    s = np.array([x for _, _, x in rows], dtype=float)
    return models, i, j, s


def win_matrix(n_models: int, i: np.ndarray, j: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``W[x, y]``: wins of model x over model y, ties counting half for each."""
    w = np.zeros((n_models, n_models))
    np.add.at(w, (i, j), s)
    np.add.at(w, (j, i), 1.0 - s)
    return w


def fit_bradley_terry(wins: np.ndarray, prior: float = 0.5, tol: float = 1e-10, max_iter: int = 10_000) -> np.ndarray:
    """Elo-scale ratings (mean 1000) from a win matrix of shape ``(K, K)`` or a batch ``(B, K, K)``.

    A model with no wins gets ``-inf`` (and one with no losses ``+inf``) when ``prior`` is 0.
    """
    w = np.asarray(wins, dtype=float)
    single = w.ndim == 2
    if single:
        w = w[None]
    b, k, _ = w.shape
    if prior > 0:  # the virtual reference player, index k
        aug = np.zeros((b, k + 1, k + 1))
        aug[:, :k, :k] = w
        aug[:, :k, k] = prior
        aug[:, k, :k] = prior
        w = aug
    n = w + np.swapaxes(w, 1, 2)
    total_wins = w.sum(axis=2)
    p = np.ones(w.shape[:2])
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max_iter):
            denom = (n / (p[:, :, None] + p[:, None, :])).sum(axis=2)
            new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), p)
            new = new / _geometric_mean(new[:, :k])[:, None]
            delta = np.abs(np.log(new) - np.log(p))
            p = new
            if not np.any(np.nan_to_num(delta, nan=0.0, posinf=0.0) > tol):
                break
        ratings = ANCHOR + SCALE * np.log(p[:, :k]) / np.log(BASE)
    return ratings[0] if single else ratings


def _geometric_mean(p: np.ndarray) -> np.ndarray:
    """Per row, over the finite positive strengths (a zero strength must not drag the anchor)."""
    with np.errstate(divide="ignore"):
        logs = np.log(p)
    finite = np.isfinite(logs)
    counts = np.maximum(finite.sum(axis=1), 1)
    return np.exp(np.where(finite, logs, 0.0).sum(axis=1) / counts)


def bootstrap_ratings(
    n_models: int, i: np.ndarray, j: np.ndarray, s: np.ndarray, *, rounds: int = 1000, prior: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """``(rounds, K)`` ratings, each fitted on votes resampled with replacement."""
    if rounds <= 0 or len(s) == 0:
        return np.empty((0, n_models))
    cells, counts = np.unique(np.stack([i, j, s]), axis=1, return_counts=True)
    ci, cj, cs = cells[0].astype(np.int64), cells[1].astype(np.int64), cells[2]
    contrib = np.zeros((len(counts), n_models * n_models))  # one vote of each cell, as a flat W
    rows = np.arange(len(counts))
    np.add.at(contrib, (rows, ci * n_models + cj), cs)
    np.add.at(contrib, (rows, cj * n_models + ci), 1.0 - cs)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(s), counts / counts.sum(), size=rounds)
    wins = (draws @ contrib).reshape(rounds, n_models, n_models)
    return fit_bradley_terry(wins, prior=prior)


def online_elo(outcomes: Iterable[Outcome], k: float = 16.0) -> dict[str, float]:
    """Classic Elo replayed in vote order, everyone starting at 1000; ties and both-bad score 0.5."""
    ratings: dict[str, float] = {}
    for a, b, vote in outcomes:
        if a == b:
            continue
        ra, rb = ratings.setdefault(a, ANCHOR), ratings.setdefault(b, ANCHOR)
        expected_a = 1.0 / (1.0 + BASE ** ((rb - ra) / SCALE))
        delta = k * (SCORES[vote] - expected_a)
        ratings[a], ratings[b] = ra + delta, rb - delta
    return ratings


@dataclass(frozen=True)
class Standing:
    """One leaderboard row. ``rank`` is 1 + the number of models whose whole interval lies above
    this model's: models whose intervals overlap share a rank."""

    model: str
    rating: float
    lower: float
    upper: float
    elo: float
    battles: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    rank: int = 0


def leaderboard(
    outcomes: Sequence[Outcome], *, rounds: int = 1000, prior: float = 0.5, k: float = 16.0, seed: int = 0,
    level: float = 0.95,
) -> list[Standing]:
    """Standings, best first: BT rating with its bootstrap interval, online Elo, and counts."""
    models, i, j, s = _indexed(outcomes)
    if not models:
        return []
    point = fit_bradley_terry(win_matrix(len(models), i, j, s), prior=prior)
    boot = bootstrap_ratings(len(models), i, j, s, rounds=rounds, prior=prior, seed=seed)
    if len(boot):
        lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
        # With prior=0 a resample can give a model an infinite rating; interpolating between two
        # infinities is undefined, so then take order statistics instead.
        method = "linear" if np.isfinite(boot).all() else "inverted_cdf"
        lower = np.percentile(boot, lo_q, axis=0, method=method)
        upper = np.percentile(boot, hi_q, axis=0, method=method)
    else:
        lower = upper = point
    elo = online_elo(outcomes, k=k)
    counts = {m: {"battles": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0} for m in models}
    for a, b, vote in outcomes:
        if a == b:
            continue
        counts[a]["battles"] += 1
        counts[b]["battles"] += 1
        if vote == "a":
            counts[a]["wins"] += 1
            counts[b]["losses"] += 1
        elif vote == "b":
            counts[b]["wins"] += 1
            counts[a]["losses"] += 1
        elif vote == "tie":
            counts[a]["ties"] += 1
            counts[b]["ties"] += 1
        else:
            counts[a]["both_bad"] += 1
            counts[b]["both_bad"] += 1
    rows = [
        Standing(model=m, rating=float(point[x]), lower=float(lower[x]), upper=float(upper[x]), elo=elo[m], **counts[m])
        for x, m in enumerate(models)
    ]
    ranked = [
        Standing(**{**r.__dict__, "rank": 1 + sum(o.lower > r.upper for o in rows)}) for r in rows
    ]
    return sorted(ranked, key=lambda r: (-r.rating, r.model))
