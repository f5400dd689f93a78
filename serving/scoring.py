"""Scoring one request from its online features: the request-time features, the model's
row in its stored column order, the calibrated propensity and the top contributions. Pure
functions; the I/O is in serving/online.py and serving/app.py."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np

from propensity import features as F
from propensity.model import PropensityModel, encode_row


def _seconds(value: datetime | None) -> float:
    return math.nan if value is None else value.timestamp()


def model_values(stored: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Stored features plus those derived at the moment of the request (UTC datetimes),
    by the function training uses."""
    derived = F.request_time_features(_seconds(stored.get(F.LAST_PURCHASE_AT.name)),
                                      _seconds(stored.get("last_product_view_at")),
                                      now.timestamp())
    return {**stored, **derived}


def score(model: PropensityModel, values: dict[str, Any]) -> tuple[float, np.ndarray]:
    """The calibrated propensity and the row it was computed from."""
    row = encode_row(values, model.columns)
    return float(model.calibration.apply(model.raw_one(row))), row


def explain(model: PropensityModel, row: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    """The columns that moved this score most (SHAP, raw-score units), largest first."""
    contributions = model.contributions(row)[0, :-1]
    order = np.argsort(-np.abs(contributions), kind="stable")[:top]
    return [{"feature": model.columns[i],
             "value": None if np.isnan(row[0, i]) else float(row[0, i]),
             "contribution": float(contributions[i])} for i in order]
