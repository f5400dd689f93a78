"""`propensity train`: point-in-time training and validation sets through Feast, two
baselines, a LightGBM classifier with early stopping on the validation month, Platt
calibration, metrics, slices, behavioural checks, a report, and registration in the store.

Validation-month figures are those the model was early-stopped and calibrated on: the honest
test is `propensity evaluate` on a later month.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from propensity import drift, model_store
from propensity import features as F
from propensity.lake import list_objects, read_table
from propensity.lineage import file_sha256, lineage, objects_sha256
from propensity.model import (
    COLUMN_NAMES,
    Calibration,
    PropensityModel,
    encode,
    monotone_constraints,
)
from propensity.settings import Settings
from propensity.training import checks, metrics, report
from propensity.training.dataset import (
    LABEL,
    DatasetError,
    file_points,
    from_lake,
    with_request_time_features,
)

# Shallow trees, large leaves, L2 and subsampling: the months differ (a model that fits
# October's details loses on November), so the model is kept simple and stopped early.
LGB_PARAMS = {
    "objective": "binary", "metric": "auc", "learning_rate": 0.03, "num_leaves": 15,
    "min_data_in_leaf": 100, "lambda_l2": 10.0, "feature_fraction": 0.8,
    "bagging_fraction": 0.8, "bagging_freq": 1, "monotone_constraints_method": "advanced",
    "seed": 7, "deterministic": True, "num_threads": 2, "verbose": -1,
}
MAX_ROUNDS = 2000
# One row order whatever the source (bagging depends on it): the same data, the same model.
ROW_ORDER = [F.EVENT_TIMESTAMP, F.SESSION_ID, "event_id"]
EARLY_STOPPING_ROUNDS = 100
BASELINE_COUNTS = ("event_count", "view_count", "add_to_cart_count", "remove_from_cart_count")


@dataclass
class TrainResult:
    version: str | None
    promoted: bool
    reason: str
    out: str
    metrics: dict = field(default_factory=dict)

    def format(self) -> str:
        valid = self.metrics["validation"]
        lines = [f"validation ({valid['points']} points, {valid['sessions']} sessions): "
                 "ROC AUC [95% CI]"]
        for name, m in {"lightgbm": valid, **self.metrics["baselines"]}.items():
            low, high = m["roc_auc_ci95"] or (float("nan"), float("nan"))
            lines.append(f"  {name:<20} {m['roc_auc']:.4f} [{low:.4f}, {high:.4f}]  "
                         f"PR AUC {m['pr_auc']:.4f}")
        for check in self.metrics["checks"]:
            lines.append(f"check {check['name']:<6} {'passed' if check['passed'] else 'FAILED'}"
                         f": {check['detail']}")
        flagged = [f"{s['slice']}={s['value']}" for s in self.metrics["slices"] if s["flagged"]]
        lines.append(f"slices flagged (AUC > 10% below overall): {', '.join(flagged) or 'none'}")
        state = "promoted to latest" if self.promoted else "not promoted"
        lines.append(f"version {self.version}: {state} ({self.reason}); report in {self.out}")
        return "\n".join(lines)


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(np.int8)


# -- baselines ---------------------------------------------------------------------------

def cart_heuristic(train: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """"add_to_cart_count > 0", as the training purchase rate of its two groups."""
    carted = train["add_to_cart_count"] > 0
    rates = train[LABEL].groupby(carted).mean()
    return (frame["add_to_cart_count"] > 0).map(rates).fillna(train[LABEL].mean()).to_numpy()


def count_regression(train: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """A logistic regression on the session's log counts."""
    def inputs(f: pd.DataFrame) -> np.ndarray:
        return np.log1p(f[list(BASELINE_COUNTS)].to_numpy(np.float64))

    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    fitted.fit(inputs(train), labels(train))
    return fitted.predict_proba(inputs(frame))[:, 1]


# -- the model ---------------------------------------------------------------------------

def fit_booster(train: pd.DataFrame, valid: pd.DataFrame, params: dict | None = None,
                columns: tuple[str, ...] = COLUMN_NAMES) -> lgb.Booster:
    """LightGBM with monotone constraints, positives weighted up to balance the classes,
    early-stopped on the validation AUC."""
    y = labels(train)
    chosen = {**_params(y, columns), **(params or {})}
    booster = lgb.train(
        chosen, lgb.Dataset(encode(train, columns), y, feature_name=list(columns)),
        MAX_ROUNDS,
        valid_sets=[lgb.Dataset(encode(valid, columns), labels(valid))],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])
    # Keep only the trees up to the best iteration: the stored model is the early-stopped one.
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))


def fit_booster_rounds(frame: pd.DataFrame, rounds: int,
                       columns: tuple[str, ...] = COLUMN_NAMES) -> lgb.Booster:
    """LightGBM as fit_booster, for a number of trees already chosen (no early stopping)."""
    y = labels(frame)
    return lgb.train(_params(y, columns), lgb.Dataset(encode(frame, columns), y,
                                                      feature_name=list(columns)), rounds)


def _params(y: np.ndarray, columns: tuple[str, ...]) -> dict:
    """LGB_PARAMS with the columns' monotone constraints and positives weighted up to
    balance the classes."""
    return {**LGB_PARAMS, "monotone_constraints": monotone_constraints(columns),
            "scale_pos_weight": (len(y) - y.sum()) / max(y.sum(), 1)}


def fit_calibration(raw: np.ndarray, y: np.ndarray) -> Calibration:
    fitted = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
    return Calibration(float(fitted.coef_[0, 0]), float(fitted.intercept_[0]))


def cross_fitted(raw: np.ndarray, y: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """Calibrated probabilities where each session's comes from a calibration fitted on the
    other half of the sessions: the calibration's quality without scoring its own fit."""
    out = np.empty(len(raw))
    for fit, held in GroupKFold(n_splits=2).split(raw, y, sessions):
        out[held] = fit_calibration(raw[fit], y[fit]).apply(raw[held])
    return out


def _time_range(frame: pd.DataFrame) -> str:
    times = frame["event_time"]
    return f"{times.min():%Y-%m-%d %H:%M} .. {times.max():%Y-%m-%d %H:%M} UTC"


def fit_model(train_set: pd.DataFrame, valid_set: pd.DataFrame
              ) -> tuple[PropensityModel, np.ndarray]:
    """The booster, calibrated on the validation set; and its raw validation scores."""
    booster = fit_booster(train_set, valid_set)
    raw = PropensityModel(booster, COLUMN_NAMES).raw(encode(valid_set, COLUMN_NAMES))
    return PropensityModel(booster, COLUMN_NAMES,
                           fit_calibration(raw, labels(valid_set))), raw


def assess(model: PropensityModel, raw: np.ndarray, train_set: pd.DataFrame,
           valid_set: pd.DataFrame, valid_events: pd.DataFrame, timeout_s: float
           ) -> tuple[dict, dict[str, bytes]]:
    """Validation metrics (model and baselines), calibration, slices, behavioural checks and
    feature contributions, as a summary and plots."""
    y, sessions = labels(valid_set), valid_set[F.SESSION_ID].to_numpy()
    scores = model.calibration.apply(raw)
    uncalibrated = Calibration().apply(raw)
    honest = cross_fitted(raw, y, sessions)  # the model's probability metrics
    baselines = {"cart_heuristic": cart_heuristic(train_set, valid_set),
                 "count_regression": count_regression(train_set, valid_set)}
    results = checks.run_checks(model, checks.probes(valid_events, valid_set), timeout_s)
    contributions = model.contributions(encode(valid_set, model.columns))[:, :-1]
    importance = dict(sorted(zip(model.columns, np.abs(contributions).mean(axis=0).tolist(),
                                 strict=True), key=lambda kv: -kv[1]))
    summary = {
        "validation": metrics.summary(y, scores, sessions, honest),
        "baselines": {name: metrics.summary(y, score, sessions)
                      for name, score in baselines.items()},
        "calibration": {"method": "platt (fitted on validation)", **asdict(model.calibration),
                        "reliability_before": metrics.reliability(y, uncalibrated),
                        "reliability_after_cross_fitted": metrics.reliability(y, honest)},
        "slices": metrics.slices(valid_set, y, scores),
        "checks": checks.as_dicts(results),
        "checks_passed": all(r.passed for r in results),
        "mean_abs_shap": importance,
    }
    plots = report.plots(y, {"lightgbm": scores, **baselines}, uncalibrated, honest,
                         importance)
    return summary, plots


def version_summary(data: TrainingData, train_set: pd.DataFrame, valid_set: pd.DataFrame,
                    trees: int, assessment: dict) -> dict:
    """A version's metadata: where it learnt and was validated, the rows, the parameters,
    and the assessment (metrics, calibration, slices, checks)."""
    return {
        "trained_on": data.train_source,
        "validated_on": data.valid_source,
        "history": data.history,
        "rows": {"train": len(train_set), "validation": len(valid_set),
                 "train_positive_rate": float(labels(train_set).mean()),
                 "validation_positive_rate": float(labels(valid_set).mean()),
                 "invalid_rows": data.invalid},
        "params": {**LGB_PARAMS, "trees": trees},
        **assessment,
        "lineage": lineage(data.identity),
    }


def version_files(model: PropensityModel, summary: dict, plots: dict[str, bytes],
                  trained_on: pd.DataFrame, out: Path) -> dict[str, bytes]:
    """A version's files for the store (the model, its plots, training profile, metrics and
    card), also written to `out`."""
    files = {**model.to_files(), **plots,
             drift.PROFILE_FILE: json.dumps(training_profile(model, trained_on)).encode(),
             "metrics.json": json.dumps(summary, indent=2, default=str).encode(),
             "model_card.md": report.model_card(summary).encode()}
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content)
    return files


def training_profile(model: PropensityModel, train_set: pd.DataFrame) -> dict:
    """What the monitor compares live rows with: the training rows' bins and score deciles
    (propensity/drift.py)."""
    matrix = encode(train_set, model.columns)
    return drift.profile(model.columns, matrix, model.predict_matrix(matrix))


@dataclass
class TrainingData:
    """Point-in-time training and validation sets, and the validation events (for the
    behavioural checks' probe sessions)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    valid_events: pd.DataFrame
    train_source: str
    valid_source: str
    history: list[str] = field(default_factory=list)
    invalid: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)  # what the data was read from (lineage.py)


def files_identity(files: list[Path]) -> dict:
    """The input files' identity: each one's SHA-256 by name."""
    return {"kind": "files", "files": {path.name: file_sha256(path) for path in files}}


def lake_identity(settings: Settings, first: date, last: date) -> dict:
    """The lake's identity for a training run over `first`..`last`: the objects of the lake
    and of the feature archive a reader takes up to `last` (training reads both)."""
    objects = [o for uri in (settings.events_uri, settings.features_uri)
               for o in list_objects(settings, uri, until=last)]
    return {"kind": "lake", "first_day": str(first), "last_day": str(last),
            "objects": len(objects), "objects_sha256": objects_sha256(objects)}


def files_data(settings: Settings, train_file: Path, valid_file: Path, history: list[Path]
               ) -> TrainingData:
    """From REES46 files (the daily batch run over their days and the `history` files'
    first)."""
    (train_set, train_checked), (valid_set, valid_checked) = file_points(
        settings, [train_file, valid_file])
    return TrainingData(train_set, valid_set, valid_checked.valid,
                        f"{train_file.name}: {_time_range(train_set)}",
                        f"{valid_file.name}: {_time_range(valid_set)}",
                        [path.name for path in history],
                        {"train": dict(train_checked.reason_counts()),
                         "validation": dict(valid_checked.reason_counts())},
                        files_identity([train_file, valid_file, *history]))


def lake_points(settings: Settings, first: date, last: date) -> tuple[pd.DataFrame,
                                                                    pd.DataFrame]:
    """Points of the days from `first` to `last` (the daily batch run over them first) and
    the lake's events."""
    points = with_request_time_features(from_lake(settings))
    points = points[points["event_time"].dt.date.between(first, last)].reset_index(drop=True)
    return points, read_table(settings, settings.events_uri).to_pandas()


def check_lake_days(train_days: tuple[date, date], valid_days: tuple[date, date]) -> None:
    if not train_days[0] <= train_days[1] < valid_days[0] <= valid_days[1]:
        raise DatasetError("lake days: the training days must come before the validation "
                           "days, each range FROM <= TO")


def lake_data(settings: Settings, train_days: tuple[date, date],
              valid_days: tuple[date, date]) -> TrainingData:
    """From the streamed sessions in the lake, split by the day of each point (the daily
    batch run over the days from the first to the last first)."""
    check_lake_days(train_days, valid_days)
    points, lake = lake_points(settings, train_days[0], valid_days[1])

    def within(times: pd.Series, days: tuple[date, date]) -> pd.Series:
        day = times.dt.date
        return (day >= days[0]) & (day <= days[1])

    train_set = points[within(points["event_time"], train_days)].reset_index(drop=True)
    valid_set = points[within(points["event_time"], valid_days)].reset_index(drop=True)
    valid_events = lake[lake["user_session"].isin(set(valid_set[F.SESSION_ID]))]
    return TrainingData(train_set, valid_set, valid_events.reset_index(drop=True),
                        f"lake {train_days[0]}..{train_days[1]}: {_time_range(train_set)}",
                        f"lake {valid_days[0]}..{valid_days[1]}: {_time_range(valid_set)}",
                        identity=lake_identity(settings, train_days[0], valid_days[1]))


def train(settings: Settings, data: TrainingData, out: Path, register: bool = True
          ) -> TrainResult:
    train_set = data.train.sort_values(ROW_ORDER, ignore_index=True)
    valid_set = data.valid.sort_values(ROW_ORDER, ignore_index=True)
    for name, frame in (("training", train_set), ("validation", valid_set)):
        if frame.empty or frame[LABEL].nunique() < 2:
            raise DatasetError(f"the {name} set needs sessions with and without a purchase "
                               f"({len(frame)} points)")
    model, raw = fit_model(train_set, valid_set)
    assessment, plots = assess(model, raw, train_set, valid_set, data.valid_events,
                               settings.session_timeout_s)
    model.metadata = summary = version_summary(data, train_set, valid_set,
                                               model.booster.num_trees(), assessment)
    files = version_files(model, summary, plots, train_set, out)
    result = TrainResult(None, False, "not registered (--no-register)", str(out), summary)
    if register:
        registration = model_store.register(settings, files,
                                            summary["validation"]["roc_auc"],
                                            summary["checks_passed"])
        result.version, result.promoted, result.reason = (
            registration.version, registration.promoted, registration.reason)
    return result
