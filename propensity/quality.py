"""A probability score's quality against outcomes, from binned counts: ROC AUC, PR AUC
(average precision), the reliability table and expected calibration error, precision and
recall in the top fractions, the positive rate and the share of degraded answers.

Counts, not rows: the monitor adds a day's predictions batch by batch into `ScoreCounts` (a
fixed 10,000 bins of the score per model version and variant), so its memory does not grow with
the day. Scores in one bin count as tied; at a bin's width of 0.0001 that moves an AUC by less
than the bootstrap interval ever shows, and on scores that are distinct bins the figures equal
the row-wise definitions of training/metrics.py (tests/test_monitor.py checks both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCORE_BINS = 10_000
RELIABILITY_BINS = 10  # equal-width, as training's reliability curve
TOP_FRACTIONS = (0.05, 0.10)


def score_bins(score: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(score, np.float64) * SCORE_BINS).astype(np.int64),
                   0, SCORE_BINS - 1)


def _zeros() -> np.ndarray:
    return np.zeros(SCORE_BINS, np.int64)


@dataclass
class ScoreCounts:
    """Positives and negatives per score bin, the scores' sum per bin (for calibration), and
    how many of the answers were degraded."""

    positives: np.ndarray = field(default_factory=_zeros)
    negatives: np.ndarray = field(default_factory=_zeros)
    score_sum: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS))
    degraded: int = 0

    def add(self, score: np.ndarray, label: np.ndarray, degraded: np.ndarray) -> None:
        bins = score_bins(score)
        label = np.asarray(label, bool)
        self.positives += np.bincount(bins[label], minlength=SCORE_BINS)
        self.negatives += np.bincount(bins[~label], minlength=SCORE_BINS)
        self.score_sum += np.bincount(bins, weights=np.asarray(score, np.float64),
                                      minlength=SCORE_BINS)
        self.degraded += int(np.count_nonzero(degraded))

    @property
    def points(self) -> int:
        return int(self.positives.sum() + self.negatives.sum())


def roc_auc(counts: ScoreCounts) -> float | None:
    """P(a positive outscores a negative), ties counted half; None with one class only."""
    positives, negatives = counts.positives[::-1], counts.negatives[::-1]
    total_pos, total_neg = positives.sum(), negatives.sum()
    if not total_pos or not total_neg:
        return None
    above = np.cumsum(positives) - positives
    return float(np.sum(negatives * (above + positives / 2)) / (total_pos * total_neg))


def pr_auc(counts: ScoreCounts) -> float | None:
    """Average precision: precision at each threshold weighted by the recall it adds."""
    positives, negatives = counts.positives[::-1], counts.negatives[::-1]
    if not positives.sum():
        return None
    used = (positives + negatives) > 0
    hits, flagged = np.cumsum(positives)[used], np.cumsum(positives + negatives)[used]
    recall = hits / positives.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * hits / flagged))


def top(counts: ScoreCounts, fraction: float) -> dict[str, float | int | None]:
    """Precision and recall of the round(fraction x points) highest scores (at least one); the
    bin at the boundary counts pro rata."""
    positives, negatives = counts.positives[::-1], counts.negatives[::-1]
    sizes = positives + negatives
    n = int(sizes.sum())
    if not n:
        return {"flagged": 0, "precision": None, "recall": None}
    k = max(1, round(fraction * n))
    before = np.cumsum(sizes) - sizes
    boundary = int(np.searchsorted(np.cumsum(sizes), k))
    hits = positives[:boundary].sum() + positives[boundary] * (
        (k - before[boundary]) / sizes[boundary])
    total_pos = positives.sum()
    return {"flagged": k, "precision": float(hits / k),
            "recall": float(hits / total_pos) if total_pos else None}


def reliability(counts: ScoreCounts) -> list[dict]:
    """Mean predicted probability against the observed rate in equal-width bins of the score
    (those with points)."""
    group = np.arange(SCORE_BINS) * RELIABILITY_BINS // SCORE_BINS
    points = np.bincount(group, counts.positives + counts.negatives, RELIABILITY_BINS)
    positives = np.bincount(group, counts.positives, RELIABILITY_BINS)
    sums = np.bincount(group, counts.score_sum, RELIABILITY_BINS)
    return [{"low": b / RELIABILITY_BINS, "high": (b + 1) / RELIABILITY_BINS,
             "points": int(points[b]), "mean_predicted": float(sums[b] / points[b]),
             "observed_rate": float(positives[b] / points[b])}
            for b in range(RELIABILITY_BINS) if points[b]]


def expected_calibration_error(table: list[dict]) -> float | None:
    """The points-weighted mean gap between predicted and observed in the reliability table."""
    n = sum(row["points"] for row in table)
    return None if not n else float(sum(
        row["points"] / n * abs(row["observed_rate"] - row["mean_predicted"]) for row in table))


def summary(counts: ScoreCounts) -> dict:
    """Every live-quality figure of one model version and variant."""
    n = counts.points
    table = reliability(counts)
    out = {"points": n, "positives": int(counts.positives.sum()),
           "positive_rate": float(counts.positives.sum() / n) if n else None,
           "degraded_share": counts.degraded / n if n else None,
           "roc_auc": roc_auc(counts), "pr_auc": pr_auc(counts),
           "ece": expected_calibration_error(table), "reliability": table}
    for fraction in TOP_FRACTIONS:
        figures = top(counts, fraction)
        out[f"precision_top{round(fraction * 100)}"] = figures["precision"]
        out[f"recall_top{round(fraction * 100)}"] = figures["recall"]
    return out
