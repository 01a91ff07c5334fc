"""Paired per-case comparison of two arms, as `benchmarks/PROTOCOL.md` prescribes.

Two arms (two models, say) scored on the same test cases give one difference per case. What is
reported for them: the number of cases, the mean and median difference, the two-sided Wilcoxon
signed-rank p-value (`scipy.stats.wilcoxon`, ``zero_method="wilcox"``: a case on which the arms
tie carries no sign and is left out of the ranks) and a percentile bootstrap 95 % interval of the
mean difference (`scipy.stats.bootstrap`, 10,000 resamples of the cases, a fixed seed). The words
follow the interval alone: an interval that contains 0 is "no difference".

NumPy and SciPy only (no TensorFlow), so that reports can be recomputed from a results JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
ZERO_METHOD = "wilcox"
VERDICTS = ("A better", "B better", "no difference")


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Compares arm A with arm B on the same cases, case by case.

    Args:
        a: arm A's score per case.
        b: arm B's score on the same cases, in the same order.
        seed: seeds the bootstrap (same seed, same interval).
        resamples: bootstrap resamples of the cases.
        higher_is_better: True for DSC; False for a measure where lower is better (slice
            consistency), which turns the verdict's direction, never the differences' sign.

    Returns:
        ``{"n", "n_dropped", "mean_difference", "median_difference", "wilcoxon_p",
        "ci_low", "ci_high", "verdict", "a_better_cases", "b_better_cases", "ties",
        "method"}``. Differences are ``a - b``; pairs where either value is NaN (a case
        without ambiguous slices has no ambiguous-slice DSC) are dropped and counted in
        ``n_dropped``. ``verdict`` is ``"no difference"`` when the interval contains 0, else
        ``"A better"`` or ``"B better"`` by the sign of the mean difference and
        ``higher_is_better``. All differences zero: p 1, interval [0, 0], no difference.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or fewer than 2 pairs remain.
    """
    from scipy import stats

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(
            f"paired comparison needs one score per case in each arm; got {x.size} and {y.size}"
        )
    keep = ~(np.isnan(x) | np.isnan(y))
    diff = x[keep] - y[keep]
    if diff.size < 2:
        raise ValueError(
            f"paired comparison needs at least 2 cases scored in both arms; got {diff.size}"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1; got {resamples}")
    if np.all(diff == 0):
        # scipy warns (0 / 0) here; no case tells the arms apart.
        p, low, high = 1.0, 0.0, 0.0
    else:
        p = float(stats.wilcoxon(diff, zero_method=ZERO_METHOD, alternative="two-sided").pvalue)
        interval = stats.bootstrap(
            (diff,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=int(resamples),
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    mean = float(diff.mean())
    return {
        "n": int(diff.size),
        "n_dropped": int(x.size - diff.size),
        "mean_difference": mean,
        "median_difference": float(np.median(diff)),
        "wilcoxon_p": p,
        "ci_low": low,
        "ci_high": high,
        "verdict": verdict(mean, low, high, higher_is_better=higher_is_better),
        "a_better_cases": int(np.sum(diff > 0 if higher_is_better else diff < 0)),
        "b_better_cases": int(np.sum(diff < 0 if higher_is_better else diff > 0)),
        "ties": int(np.sum(diff == 0)),
        "method": {
            "difference": "a - b, per case",
            "wilcoxon": f"scipy.stats.wilcoxon, two-sided, zero_method={ZERO_METHOD!r}, "
            "method='auto'",
            "interval": f"percentile bootstrap of the mean difference, {CONFIDENCE:.0%}, "
            f"{int(resamples)} resamples, numpy default_rng({seed})",
            "higher_is_better": bool(higher_is_better),
        },
    }


def verdict(mean: float, low: float, high: float, *, higher_is_better: bool = True) -> str:
    """The protocol's words for an interval of ``a - b``: "no difference" when it holds 0.

    Args:
        mean: the mean difference ``a - b``.
        low: the interval's lower end.
        high: the interval's upper end.
        higher_is_better: whether a positive difference favours A.

    Returns:
        One of `VERDICTS`.
    """
    if not all(math.isfinite(v) for v in (mean, low, high)) or low <= 0.0 <= high:
        return "no difference"
    a_ahead = mean > 0 if higher_is_better else mean < 0
    return "A better" if a_ahead else "B better"
