"""Drift of the model's inputs and score, live against training: each model version's
training profile, the same histograms of live rows, and the population stability index.

A profile (`profile.json` beside the version in the model store) holds, per numeric column of
the model's row, the edges of its training deciles (ties merged) and the share of training rows
in each bin plus a bin for missing values; per categorical feature (one-hot in the row), the
share of each value, of an unknown one and of missing; and the calibrated score's deciles.
Live rows are counted into the same bins, batch by batch (`Histograms`), so the monitor's memory
does not grow with the day.

PSI = sum over bins of (live - training) x ln(live / training), shares floored at 0.0001 so an
empty bin stays finite. The design's flags: a feature above 0.25, the score above 0.2. A small
function of our own rather than Evidently: Evidently computes from DataFrames of rows (the whole
day in memory) and brings a large dependency tree to the jobs' image, while PSI over fixed bins
is five lines that tests/test_monitor.py checks by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from propensity.model import column

FEATURE_PSI_FLAG = 0.25
SCORE_PSI_FLAG = 0.20
PROFILE_FILE = "profile.json"
SCORE = "score"
MISSING, OTHER = "missing", "other"
_FLOOR = 1e-4
_DECILES = np.linspace(0.1, 0.9, 9)


def quantile_edges(values: np.ndarray) -> list[float]:
    """The deciles of the known values, ties merged (a count feature may have few)."""
    known = values[~np.isnan(values)]
    return [] if not known.size else np.unique(np.quantile(known, _DECILES)).tolist()


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts in the bins (-inf, e1], (e1, e2], ..., (ek, inf), then missing."""
    values = np.asarray(values, np.float64)
    missing = np.isnan(values)
    which = np.searchsorted(np.asarray(edges, np.float64), values[~missing], side="left")
    return np.r_[np.bincount(which, minlength=len(edges) + 1), missing.sum()].astype(np.int64)


def categorical_groups(columns: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """feature -> [(column index, value)] of the one-hot columns of each categorical feature."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for i, name in enumerate(columns):
        spec = column(name)
        if spec.category is not None:
            groups.setdefault(spec.feature.name, []).append((i, spec.category))
    return groups


def category_counts(matrix: np.ndarray, members: list[tuple[int, str]]) -> np.ndarray:
    """Counts of each value, of none of them (OTHER) and of missing, from one-hot columns."""
    block = matrix[:, [i for i, _ in members]]
    missing = np.isnan(block).all(axis=1)
    hot = np.nan_to_num(block) == 1
    which = np.where(hot.any(axis=1), hot.argmax(axis=1), len(members))
    counts = np.bincount(which[~missing], minlength=len(members) + 1)
    return np.r_[counts, missing.sum()].astype(np.int64)


def category_values(members: list[tuple[int, str]]) -> list[str]:
    return [value for _, value in members] + [OTHER, MISSING]


@dataclass
class Histograms:
    """Live counts in a profile's bins, added batch by batch."""

    profile: dict
    counts: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, matrix: np.ndarray, scores: np.ndarray) -> None:
        columns = self.profile["columns"]
        for name, spec in self.profile["numeric"].items():
            self._add(name, bin_counts(matrix[:, columns.index(name)], spec["edges"]))
        for feature, members in categorical_groups(columns).items():
            self._add(feature, category_counts(matrix, members))
        self._add(SCORE, bin_counts(scores, self.profile[SCORE]["edges"]))

    def _add(self, name: str, counts: np.ndarray) -> None:
        self.counts[name] = self.counts.get(name, 0) + counts


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * len(counts)


def profile(columns: Sequence[str], matrix: np.ndarray, scores: np.ndarray) -> dict:
    """The training profile of a model version from its training rows and scores."""
    numeric, categorical = {}, {}
    grouped = categorical_groups(columns)
    one_hot = {i for members in grouped.values() for i, _ in members}
    for i, name in enumerate(columns):
        if i not in one_hot:
            edges = quantile_edges(matrix[:, i])
            numeric[name] = {"edges": edges, "shares": _shares(bin_counts(matrix[:, i], edges))}
    for feature, members in grouped.items():
        categorical[feature] = {"values": category_values(members),
                                "shares": _shares(category_counts(matrix, members))}
    edges = quantile_edges(np.asarray(scores, np.float64))
    return {"columns": list(columns), "rows": len(matrix), "numeric": numeric,
            "categorical": categorical,
            SCORE: {"edges": edges, "shares": _shares(bin_counts(scores, edges))}}


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """The population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def report(histograms: Histograms) -> list[dict]:
    """PSI per feature and for the score, live against training, with the flags and both
    share vectors (for the plots), largest first."""
    rows = []
    training = {**histograms.profile["numeric"], **histograms.profile["categorical"],
                SCORE: histograms.profile[SCORE]}
    for name, counts in histograms.counts.items():
        expected = training[name]["shares"]
        live = _shares(counts)
        value = psi(expected, live)
        limit = SCORE_PSI_FLAG if name == SCORE else FEATURE_PSI_FLAG
        rows.append({"name": name, "kind": "score" if name == SCORE else "feature",
                     "psi": value, "flagged": value > limit, "live_rows": int(counts.sum()),
                     "training_shares": expected, "live_shares": live,
                     "bins": _bin_labels(training[name])})
    return sorted(rows, key=lambda r: -r["psi"])


def _bin_labels(spec: dict) -> list[str]:
    if "values" in spec:
        return list(spec["values"])
    edges = spec["edges"]
    if not edges:
        return ["all", MISSING]
    middle = [f"{low:.4g} .. {high:.4g}" for low, high in itertools.pairwise(edges)]
    return [f"<= {edges[0]:.4g}", *middle, f"> {edges[-1]:.4g}", MISSING]
