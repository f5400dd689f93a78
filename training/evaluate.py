"""`propensity evaluate`: scores every prediction point of a REES46 file with a stored model
(features through the streaming fold and Feast, as in training), writes the scores, and
measures them against the file's labels: no retraining, no tuning."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from propensity import events
from propensity import features as F
from propensity.model import PropensityModel
from propensity.training import metrics
from propensity.training.dataset import LABEL, DatasetError

PREDICTION_COLUMNS = ("user_session", "event_time", "score")


def write_predictions(points: pd.DataFrame, scores, path: Path) -> None:
    """One row per point: user_session, event_time, score (CSV for .csv, else Parquet)."""
    frame = pd.DataFrame({"user_session": points[F.SESSION_ID].to_numpy(),
                          "event_time": points["event_time"].to_numpy(),
                          "score": scores})[list(PREDICTION_COLUMNS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def evaluate(model: PropensityModel, points: pd.DataFrame, checked: events.Validated,
             events_file: Path, history: list[Path], predictions_out: Path) -> dict:
    """Scores the file's points (training.dataset.file_points) with `model`, writes the scores
    and measures them."""
    if points.empty:
        raise DatasetError(f"{events_file}: no prediction points (no valid event before a "
                           "session's first purchase)")
    scores = model.predict(points)
    write_predictions(points, scores, predictions_out)
    y = points[LABEL].to_numpy()
    sessions = points[F.SESSION_ID].to_numpy()
    two_classes = len(set(y.tolist())) == 2
    return {
        "model_version": model.version,
        "events": str(events_file),
        "history": [str(p) for p in history],
        "event_times": f"{points['event_time'].min()} .. {points['event_time'].max()}",
        "invalid_rows": dict(checked.reason_counts()),
        "predictions": str(predictions_out),
        "metrics": metrics.summary(y, scores, sessions) if two_classes else None,
        "reliability": metrics.reliability(y, scores),
        "slices": metrics.slices(points, y, scores) if two_classes else [],
    }
