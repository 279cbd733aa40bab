"""Per-round temperature search for rejection sampling (paper 3.2.3, Figs. 7-8).

For each temperature of a grid, sample K completions for each prompt of a subset, score
them, and compute the expected maximum reward among n samples for n = 1..K (the paper's
best-of-N curve). The temperature with the highest expected max at n = K is used for the
round: Llama 2 found the best temperature moves between rounds (Fig. 8).
"""

from __future__ import annotations

from math import comb
from typing import Callable, Sequence


def expected_max_curve(scores: Sequence[float]) -> list[float]:
    """E[max of n samples drawn without replacement from ``scores``], for n = 1..K.

    The order-statistic estimator: with scores sorted ascending s_1..s_K,
    E[max_n] = sum_i s_i * C(i-1, n-1) / C(K, n). It uses all K samples for every n, so
    the curve is smooth where "max of the first n" would be noisy.
    """
    s = sorted(scores)
    k = len(s)
    if k == 0:
        raise ValueError("no scores")
    return [sum(s[i] * comb(i, n - 1) for i in range(n - 1, k)) / comb(k, n) for n in range(1, k + 1)]


def mean_curve(per_prompt: Sequence[Sequence[float]]) -> list[float]:
    curves = [expected_max_curve(s) for s in per_prompt]
    return [sum(c[n] for c in curves) / len(curves) for n in range(len(curves[0]))]


def search_temperature(
    sample_and_score: Callable[[float, int], Sequence[Sequence[float]]],
    temperatures: Sequence[float],
    k: int,
) -> tuple[float, dict[str, list[float]]]:
    """Best temperature and the best-of-n curve of each (keys are the temperatures as text).

    ``sample_and_score(temperature, k)`` returns, per prompt, the rewards of ``k`` samples.
    Ties at n = K go to the curve with the larger area, then to the lower temperature.
    """
    if not temperatures:
        raise ValueError("the temperature grid is empty")
    curves: dict[str, list[float]] = {}
    best_t, best_key = None, None
    for t in temperatures:
        curve = mean_curve(sample_and_score(float(t), k))
        curves[f"{t:g}"] = curve
        key = (curve[-1], sum(curve), -t)
        if best_key is None or key > best_key:
            best_t, best_key = float(t), key
    return best_t, curves
