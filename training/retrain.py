"""`propensity retrain --days N`: a new challenger from the lake's newest days, never a new
champion.

1. The daily batch has run over the lake's last N days (`window`; ops/pipelines.py runs it
   first); their points get every feature point-in-time, as `propensity train --lake` does.
2. Validation is the newest `valid_days` days, by the first point of each session (a session is
   on one side only). When the lake holds no more than that, the newest quarter of its sessions
   validates instead (a newly started lake, the demo's hours), and the summary says so.
3. Settings are chosen on validation (the number of trees by early stopping, the calibration),
   and the validation figures, behavioural checks and report are those of that model: honest
   figures of the chosen settings.
4. The registered model is refit with those settings on all the labelled days, training and
   validation together (a model that has seen the newest days is what a shop wants live), and
   calibrated out of fold: Platt scaling fitted on the scores each session got from a model that
   did not see it (5 session folds). Its behavioural checks must pass too.
5. It is stored and, when every check passed, made the challenger in canary for
   `canary_share` of the shoppers (propensity/rollout.py). Promotion stays a person's call, on
   the monitor's figures (`propensity monitor`, `propensity monitor ab`).

The retrain step of terraform's schedule runs `propensity retrain` under spark-submit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from propensity import cloudwatch, model_store
from propensity import features as F
from propensity.model import COLUMN_NAMES, PropensityModel, encode
from propensity.rollout import Challenger
from propensity.settings import Settings
from propensity.training import checks
from propensity.training.dataset import DatasetError
from propensity.training.train import (
    LABEL,
    ROW_ORDER,
    TrainingData,
    assess,
    fit_booster_rounds,
    fit_calibration,
    fit_model,
    labels,
    lake_identity,
    lake_points,
    version_files,
    version_summary,
)

CALIBRATION_FOLDS = 5
NEWEST_SHARE = 0.25  # of the sessions: validation when the lake is no longer than its window


@dataclass(frozen=True)
class Retrain:
    days: int = 28
    valid_days: int = 7
    canary_share: float = 0.05
    out: Path = Path(".propensity/retrain")

    def __post_init__(self) -> None:
        if self.days < 1 or self.valid_days < 1:
            raise DatasetError("retrain needs at least one day and one validation day")
        if not 0 < self.canary_share < 1:
            raise DatasetError(f"canary share {self.canary_share}: above 0 and below 1")


@dataclass
class RetrainResult:
    version: str
    challenger: Challenger | None
    reason: str
    split: str
    metrics: dict = field(default_factory=dict)

    def format(self) -> str:
        valid, refit = self.metrics["validation"], self.metrics["refit"]
        lines = [f"retrain: {self.split}",
                 f"validation ({valid['points']} points): ROC AUC {valid['roc_auc']:.4f}, "
                 f"PR AUC {valid['pr_auc']:.4f} ({refit['trees']} trees chosen)",
                 f"refit on {refit['points']} points, calibrated out of fold "
                 f"(a = {refit['calibration']['a']:.3f}, b = {refit['calibration']['b']:.3f})"]
        lines += [f"check {c['name']:<6} {'passed' if c['passed'] else 'FAILED'}: {c['detail']}"
                  for c in self.metrics["checks"]]
        lines.append(f"version {self.version}: {self.reason}")
        return "\n".join(lines)


def window(lake_days: list[date], days: int) -> tuple[date, date]:
    if not lake_days:
        raise DatasetError("the event lake is empty: stream or import events first")
    last = max(lake_days)
    return last - timedelta(days - 1), last


def split_sessions(points: pd.DataFrame, valid_from: datetime) -> tuple[pd.Series, str]:
    """Whether each point validates (its session started at or after `valid_from`, or is among
    the newest quarter of the sessions when that leaves either side empty), and how it split."""
    started = points.groupby(F.SESSION_ID)["event_time"].transform("min")
    valid = started >= valid_from
    if valid.all() or not valid.any():
        cut = points.groupby(F.SESSION_ID)["event_time"].min().quantile(1 - NEWEST_SHARE)
        return started >= cut, (f"sessions started from {cut:%Y-%m-%d %H:%M:%S} UTC (the "
                                "newest quarter of the sessions: the lake holds less than the "
                                "validation window)")
    return valid, f"sessions started from {valid_from:%Y-%m-%d} UTC"


def refit(frame: pd.DataFrame, trees: int) -> PropensityModel:
    """The booster on all of `frame` with `trees` trees, calibrated out of fold."""
    y, sessions = labels(frame), frame[F.SESSION_ID].to_numpy()
    matrix = encode(frame, COLUMN_NAMES)
    out_of_fold = np.empty(len(frame))
    folds = min(CALIBRATION_FOLDS, len(np.unique(sessions)))
    for fit, held in GroupKFold(n_splits=folds).split(matrix, y, sessions):
        booster = fit_booster_rounds(frame.iloc[fit], trees)
        out_of_fold[held] = booster.predict(matrix[held], raw_score=True, num_threads=1)
    return PropensityModel(fit_booster_rounds(frame, trees), COLUMN_NAMES,
                           fit_calibration(out_of_fold, y))


def retrain(settings: Settings, request: Retrain, days: tuple[date, date]) -> RetrainResult:
    """A challenger from the lake's `days` (`window`; the daily batch run over them first)."""
    first, last = days
    points, lake = lake_points(settings, first, last)
    points = points.sort_values(ROW_ORDER, ignore_index=True)
    valid_from = datetime.combine(last - timedelta(request.valid_days - 1), time.min, UTC)
    validates, split = split_sessions(points, valid_from)
    train_set, valid_set = points[~validates], points[validates]
    for name, frame in (("training", train_set), ("validation", valid_set)):
        if frame.empty or frame[LABEL].nunique() < 2:
            raise DatasetError(f"the {name} part of lake {first}..{last} needs sessions with "
                               f"and without a purchase ({len(frame)} points)")
    valid_events = lake[lake["user_session"].isin(set(valid_set[F.SESSION_ID]))]
    data = TrainingData(train_set, valid_set, valid_events.reset_index(drop=True),
                        f"lake {first}..{last} (refit on every labelled day)",
                        f"lake {first}..{last}: {split}",
                        identity=lake_identity(settings, first, last))
    chosen, raw = fit_model(data.train, data.valid)
    assessment, plots = assess(chosen, raw, data.train, data.valid, data.valid_events,
                               settings.session_timeout_s)
    everything = pd.concat([data.train, data.valid], ignore_index=True)
    final = refit(everything, chosen.booster.num_trees())
    final_checks = checks.run_checks(final, checks.probes(data.valid_events, data.valid),
                                     settings.session_timeout_s)
    passed = all(c.passed for c in final_checks) and assessment["checks_passed"]
    final.metadata = summary = {
        **version_summary(data, data.train, data.valid, chosen.booster.num_trees(),
                          assessment),
        "checks": checks.as_dicts(final_checks), "checks_passed": passed,
        "refit": {"points": len(everything), "trees": chosen.booster.num_trees(),
                  "calibration": {"method": f"platt, out of fold ({CALIBRATION_FOLDS} session "
                                            "folds)", "a": final.calibration.a,
                                  "b": final.calibration.b},
                  "validation_checks": assessment["checks"]},
    }
    files = version_files(final, summary, plots, everything, request.out)
    version = model_store.put_version(settings, files)
    challenger, reason = None, "stored; behavioural checks failed: not a challenger"
    if passed:
        cloudwatch.report_success(settings, cloudwatch.RETRAIN_SUCCEEDED)
        if model_store.latest(settings) is None:
            reason = "stored; no champion to challenge: `propensity model promote` it by hand"
        else:
            challenger = model_store.canary(settings, version, request.canary_share)
            reason = (f"challenger in canary for {request.canary_share:.1%} of the shoppers "
                      "(`propensity model promote` when the monitor says it is better)")
    return RetrainResult(version, challenger, reason, split, summary)
