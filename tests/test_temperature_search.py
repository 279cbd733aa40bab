"""Temperature search: the best-of-n curve and the choice of temperature (paper Figs. 7-8)."""

from __future__ import annotations

import random
from itertools import combinations, pairwise
from statistics import mean

import pytest

from llama2rlhf.sampling.temperature import expected_max_curve, search_temperature


def test_expected_max_curve_equals_brute_force_over_subsets():
    scores = [0.3, -1.0, 2.0, 0.7, 0.1]
    curve = expected_max_curve(scores)
    for n in range(1, 6):
        brute = mean(max(sub) for sub in combinations(scores, n))
        assert curve[n - 1] == pytest.approx(brute)
    assert curve[0] == pytest.approx(mean(scores)) and curve[-1] == max(scores)
    assert all(a <= b for a, b in pairwise(curve))  # best-of-n rises with n


def test_search_picks_the_grid_point_with_the_best_curve():
    # A fake world: a sample is right (reward 1) with a probability that peaks at
    # temperature 1.2; near 0 every sample of a prompt is the same one, so best-of-n
    # gains nothing from n; too hot and almost nothing is right.
    def sample_and_score(t, k):
        rng = random.Random(f"{t}")
        p_right = max(0.0, 0.5 - 0.5 * abs(t - 1.2))
        out = []
        for _ in range(200):
            draws = [float(rng.random() < p_right) + rng.gauss(0, 0.01) for _ in range(k)]
            out.append([draws[0]] * k if t < 0.2 else draws)
        return out

    best, curves = search_temperature(sample_and_score, [0.1, 0.6, 1.2, 3.0], k=8)
    assert set(curves) == {"0.1", "0.6", "1.2", "3"}
    assert all(len(c) == 8 for c in curves.values())
    finals = {t: c[-1] for t, c in curves.items()}
    assert best == float(max(finals, key=finals.get)) == 1.2
    assert curves["0.1"][-1] - curves["0.1"][0] < 0.05 < 0.4 < curves["1.2"][-1] - curves["1.2"][0]


def test_ties_go_to_the_lower_temperature():
    best, _ = search_temperature(lambda t, k: [[1.0] * k], [1.4, 0.8, 1.0], k=4)
    assert best == 0.8


def test_empty_grid_is_an_error():
    with pytest.raises(ValueError, match="grid is empty"):
        search_temperature(lambda t, k: [[0.0]], [], k=1)
