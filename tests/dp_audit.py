"""A black-box auditor of differentially private releases (after Jagielski et al.,
"Auditing Differentially Private Machine Learning", 2020, and Nasr et al.,
"Adversary Instantiation", 2021).

For neighbouring datasets D (without a person) and D' (with the person), the
auditor draws many releases of each and runs a distinguishing test: "is the
score of this release at or above t?" (or at or below). An epsilon-DP
mechanism keeps P_D'(test) <= e^epsilon * P_D(test) for every test, both ways
round, so

    epsilon >= ln(TPR / FPR)

for the test's true and false positive rates. With Clopper-Pearson bounds,
``ln(TPR_lower / FPR_upper)`` is a lower bound on the mechanism's real epsilon
that holds with probability at least ``1 - alpha`` (``alpha / 2`` on each rate,
one-sided): if it exceeds the declared epsilon, the mechanism is broken (or
the run was a 1-in-1/alpha fluke).

The score of a release is the released value of each cell (output column,
group key) the person is in, clipped to the range between the cell's centres
(mean released values) on the two sides and signed towards D', summed over the
cells: for Laplace noise of one scale, that is the log likelihood ratio of the
two hypotheses (the Neyman-Pearson test), and it needs nothing but releases.
The centres and the test (threshold, direction) are chosen on calibration
releases and the rates counted on fresh ones, so the choice cannot flatter
the bound.

Pure functions over callables; only ``math``, ``statistics`` and numpy (no
scipy: the beta quantile is a bisection on the regularized incomplete beta).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pyarrow as pa

Key = tuple[Any, ...]


# -- Clopper-Pearson -----------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for numerator in (
            m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta I_x(a, b): the CDF of Beta(a, b) at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b), by bisection (the CDF is increasing)."""
    low, high = 0.0, 1.0
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if beta_cdf(middle, a, b) < q:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds on a binomial rate, each at confidence 1 - alpha:
    P(rate < lower) <= alpha and P(rate > upper) <= alpha."""
    if not 0 <= successes <= trials or trials < 1 or not 0 < alpha < 1:
        raise ValueError("need 0 <= successes <= trials, trials >= 1 and 0 < alpha < 1")
    lower = 0.0 if successes == 0 else beta_quantile(alpha, successes, trials - successes + 1)
    upper = (
        1.0 if successes == trials else beta_quantile(1 - alpha, successes + 1, trials - successes)
    )
    return lower, upper


def epsilon_lower_bound(
    true_positives: int, false_positives: int, trials: int, alpha: float
) -> float:
    """ln(TPR_lower / FPR_upper), each bound one-sided at alpha / 2, so the bound
    holds with confidence 1 - alpha; 0 when the test shows nothing."""
    tpr_lower, _ = clopper_pearson(true_positives, trials, alpha / 2)
    _, fpr_upper = clopper_pearson(false_positives, trials, alpha / 2)
    if tpr_lower <= fpr_upper:
        return 0.0
    return math.log(tpr_lower / fpr_upper)


def _wilson_bound(
    true_rate: np.ndarray, false_rate: np.ndarray, trials: int, alpha: float
) -> np.ndarray:
    """:func:`epsilon_lower_bound` approximated (Wilson score bounds) for many tests at
    once: the bound that rates like these would give on ``trials`` releases."""
    z = NormalDist().inv_cdf(1 - alpha / 2)

    def centre_and_spread(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        denominator = 1 + z * z / trials
        centre = (p + z * z / (2 * trials)) / denominator
        spread = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
        return centre, spread

    tc, ts = centre_and_spread(true_rate)
    fc, fs = centre_and_spread(false_rate)
    lower, upper = np.maximum(tc - ts, 0.0), np.minimum(fc + fs, 1.0)
    with np.errstate(divide="ignore"):
        return np.where(lower > upper, np.log(lower / np.maximum(upper, 1e-300)), 0.0)


# -- the audit -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What the audit of one released statistic found."""

    statistic: str
    releases: int  # per side, counted (after calibration)
    true_positives: int
    false_positives: int
    epsilon_lower_bound: float
    test: str  # the distinguishing test, for the report

    @property
    def estimate(self) -> float:
        """The plug-in ln(TPR / FPR): the bound without its confidence margin."""
        if self.false_positives == 0 or self.true_positives == 0:
            return math.inf if self.true_positives else 0.0
        return math.log(self.true_positives / self.false_positives)


def cells_of(table: pa.Table, groups: Sequence[str], cells: dict[str, list[Key]]) -> np.ndarray:
    """The released values of the audited cells, in the order of ``cells``."""
    rows = {tuple(r[g] for g in groups): r for r in table.to_pylist()}
    return np.array([float(rows[key][column]) for column, keys in cells.items() for key in keys])


def _scores(values: np.ndarray, without: np.ndarray, with_: np.ndarray) -> np.ndarray:
    """Per release: each cell clipped between its two centres, signed towards D', summed."""
    low, high = np.minimum(without, with_), np.maximum(without, with_)
    sign = np.sign(with_ - without)
    return (np.clip(values, low, high) * sign).sum(axis=1)


def _counts(scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many scores are >= and <= each threshold."""
    ordered = np.sort(scores)
    at_least = len(ordered) - np.searchsorted(ordered, thresholds, side="left")
    at_most = np.searchsorted(ordered, thresholds, side="right")
    return at_least, at_most


def _choose_test(
    without: np.ndarray, with_: np.ndarray, trials: int, alpha: float
) -> tuple[float, str, bool]:
    """The test (threshold, ">=" or "<=", whether D' is the positive side) whose rates on
    these calibration scores would give the best bound on ``trials`` fresh releases."""
    thresholds = np.unique(np.concatenate([without, with_]))
    if len(thresholds) > 400:
        thresholds = np.unique(np.quantile(thresholds, np.linspace(0, 1, 401)))
    ge_with, le_with = _counts(with_, thresholds)
    ge_without, le_without = _counts(without, thresholds)
    best: tuple[float, float, str, bool] = (-1.0, 0.0, ">=", True)
    for event, in_with, in_without in (
        (">=", ge_with / len(with_), ge_without / len(without)),
        ("<=", le_with / len(with_), le_without / len(without)),
    ):
        for with_positive, tpr, fpr in ((True, in_with, in_without), (False, in_without, in_with)):
            bounds = _wilson_bound(tpr, fpr, trials, alpha)
            i = int(np.argmax(bounds))
            if bounds[i] > best[0]:
                best = (float(bounds[i]), float(thresholds[i]), event, with_positive)
    return best[1], best[2], best[3]


def audit(
    without: Callable[[], pa.Table],
    with_: Callable[[], pa.Table],
    groups: Sequence[str],
    statistics: dict[str, dict[str, list[Key]]],
    *,
    releases: int,
    calibration: int,
    alpha: float,
) -> dict[str, Finding]:
    """Audit every statistic (name -> the cells its test reads: output column -> the
    group keys the person is in) on the same releases of D (``without``) and D'.

    ``calibration`` releases per side fix each cell's centre (mean) per side and the
    test; ``releases`` fresh ones per side are counted.
    """
    columns: dict[str, list[Key]] = {}
    for cells in statistics.values():
        for column, keys in cells.items():
            known = columns.setdefault(column, [])
            known.extend(key for key in keys if key not in known)
    index = [(column, key) for column, keys in columns.items() for key in keys]

    def draw(release: Callable[[], pa.Table], n: int) -> np.ndarray:
        return np.stack([cells_of(release(), groups, columns) for _ in range(n)])

    calibrate = {False: draw(without, calibration), True: draw(with_, calibration)}
    counted = {False: draw(without, releases), True: draw(with_, releases)}
    findings = {}
    for name, cells in statistics.items():
        chosen = [index.index((column, key)) for column, keys in cells.items() for key in keys]
        centre = {side: calibrate[side][:, chosen].mean(axis=0) for side in (False, True)}

        def score(
            values: np.ndarray, chosen: list[int] = chosen, centre: dict[bool, Any] = centre
        ) -> np.ndarray:
            return _scores(values[:, chosen], centre[False], centre[True])

        threshold, event, with_positive = _choose_test(
            score(calibrate[False]), score(calibrate[True]), releases, alpha
        )
        hits = {}
        for side in (False, True):
            s = score(counted[side])
            hits[side] = int(np.sum(s >= threshold if event == ">=" else s <= threshold))
        tp, fp = (hits[True], hits[False]) if with_positive else (hits[False], hits[True])
        findings[name] = Finding(
            statistic=name,
            releases=releases,
            true_positives=tp,
            false_positives=fp,
            epsilon_lower_bound=epsilon_lower_bound(tp, fp, releases, alpha),
            test=f"score {event} {threshold:.4g} flags {'with' if with_positive else 'without'}",
        )
    return findings
