"""Evaluation metrics of a score against labels: ranking, probability quality, operating
points, bootstrap intervals, reliability curve and slices. Pure functions of arrays.

Points of one session are correlated (a session contributes a point per event), so the
bootstrap resamples sessions, not points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from propensity import features as F
from propensity.quality import RELIABILITY_BINS, TOP_FRACTIONS

THRESHOLDS = (0.5, 0.7, 0.9)
SLICE_FLAG_RATIO = 0.9  # a slice whose AUC is more than 10% below overall is flagged


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC, None when only one class is present."""
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def _precision_recall(y: np.ndarray, flagged: np.ndarray) -> dict[str, float | int | None]:
    hits = int((flagged & (y == 1)).sum())
    return {"flagged": int(flagged.sum()),
            "precision": hits / flagged.sum() if flagged.any() else None,
            "recall": hits / (y == 1).sum() if (y == 1).any() else None}


def bootstrap_auc(y: np.ndarray, score: np.ndarray, groups: np.ndarray,
                  resamples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """95% interval of the AUC over resampled groups (sessions).

    A resample is a count per group; its AUC is the AUC of the points weighted by their
    group's count (the same as the AUC of the repeated rows), from positive and negative
    weight per distinct score: one pass of bincounts instead of a sort per resample."""
    codes, _ = pd.factorize(groups)
    levels, by_level = np.unique(score, return_inverse=True)
    positive = np.asarray(y) == 1
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, codes.max() + 1, codes.max() + 1),
                             minlength=codes.max() + 1)
        weight = counts[codes].astype(float)
        pos = np.bincount(by_level, weights=weight * positive, minlength=len(levels))
        neg = np.bincount(by_level, weights=weight * ~positive, minlength=len(levels))
        value = _weighted_auc(pos, neg)
        if value is not None:
            values.append(value)
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _weighted_auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """ROC AUC from positive and negative weights per distinct score, in rising order: each
    positive beats the negatives below it and ties half of those at its score."""
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + neg / 2)).sum() / (total_pos * total_neg))


def summary(y: np.ndarray, score: np.ndarray, groups: np.ndarray,
            probability: np.ndarray | None = None, resamples: int = 1000) -> dict:
    """Every headline metric of a probability score: ranking metrics (AUCs, top fractions)
    of `score`, probability metrics (log loss, Brier, thresholds) of `probability`, which
    defaults to the score (another calibration of the same ranking, say)."""
    y = np.asarray(y, dtype=np.int8)
    score = np.asarray(score, dtype=np.float64)
    probability = score if probability is None else np.asarray(probability, np.float64)
    out: dict = {"points": len(y), "positives": int(y.sum()),
                 "sessions": int(pd.Series(groups).nunique()),
                 "roc_auc": auc(y, score),
                 "roc_auc_ci95": bootstrap_auc(y, score, np.asarray(groups), resamples),
                 "pr_auc": float(average_precision_score(y, score)) if y.any() else None}
    clipped = np.clip(probability, 1e-7, 1 - 1e-7)
    out["log_loss"] = float(log_loss(y, clipped, labels=[0, 1]))
    out["brier"] = float(brier_score_loss(y, probability))
    out["at_threshold"] = {str(t): _precision_recall(y, probability >= t) for t in THRESHOLDS}
    ranked = np.argsort(-score, kind="stable")
    out["top"] = {}
    for fraction in TOP_FRACTIONS:
        flagged = np.zeros(len(y), dtype=bool)
        flagged[ranked[:max(1, round(fraction * len(y)))]] = True
        out["top"][f"{fraction:.0%}"] = _precision_recall(y, flagged)
    return out


def reliability(y: np.ndarray, probability: np.ndarray, bins: int = RELIABILITY_BINS
                ) -> list[dict]:
    """Mean predicted probability against the observed rate, in equal-width bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                         "points": int(members.sum()),
                         "mean_predicted": float(probability[members].mean()),
                         "observed_rate": float(y[members].mean())})
    return rows


def _hour_band(hours: pd.Series) -> pd.Series:
    return pd.cut(hours, [-1, 5, 11, 17, 23],
                  labels=["00-05", "06-11", "12-17", "18-23"]).astype(str)


# Slices of prediction points: name -> function of the points frame giving each point's group.
SLICES: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "user": lambda f: np.where(f[F.LIFETIME_SESSION_COUNT.name].fillna(0) > 0,
                               "returning", "new"),
    "cart": lambda f: np.where(f["add_to_cart_count"] > 0, "with cart", "without cart"),
    "hour band (UTC)": lambda f: _hour_band(f["hour_of_day"]),
    "device": lambda f: f["device_type"].fillna("unknown"),
}


def slices(points: pd.DataFrame, y: np.ndarray, score: np.ndarray) -> list[dict]:
    """AUC per slice; a slice more than 10% below the overall AUC is flagged. Device
    slices appear only when the data has devices."""
    overall = auc(y, score)
    rows = []
    for name, group_of in SLICES.items():
        groups = pd.Series(np.asarray(group_of(points), dtype=object), index=points.index)
        if name == "device" and set(groups) <= {"unknown"}:
            continue
        for value in sorted(groups.unique()):
            members = (groups == value).to_numpy()
            value_auc = auc(y[members], score[members])
            rows.append({"slice": name, "value": value, "points": int(members.sum()),
                         "positives": int(y[members].sum()), "roc_auc": value_auc,
                         "flagged": bool(value_auc is not None and overall is not None
                                         and value_auc < SLICE_FLAG_RATIO * overall)})
    return rows
