"""The propensity model as training, evaluation and the scorer use it: which features it reads
and how they become a numeric row (`COLUMNS`, `encode`), the booster with its probability
calibration (`PropensityModel`), and its files (`to_files`, `from_files`).

The stored column order is the contract: a model is scored on exactly the columns it was
trained on, in that order, whatever this module lists today.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np

from propensity import features as F
from propensity.events import EVENT_TYPES

# Stored features the model does not read, and why.
NOT_MODEL_INPUTS = {
    "purchase_count": "always 0 at a prediction point (points precede the first purchase)",
    "device_type": "absent from REES46: nothing to learn from (a slice when present)",
    "channel": "absent from REES46: nothing to learn from",
    F.PREFERRED_PRODUCT_CATEGORY.name: "a category name; the request has no category to match",
    "last_product_view_at": "read as seconds_since_last_product_view",
    F.LAST_PURCHASE_AT.name: "read as days_since_last_purchase",
}
# String features the model reads one-hot, with their values and the monotone direction of
# each indicator: a cart event as the latest one is a stronger sign of intent than a view or
# a removal.
CATEGORIES = {"last_event_type": {"view": -1, "cart": 1, "remove_from_cart": -1}}
assert set(CATEGORIES["last_event_type"]) <= set(EVENT_TYPES)


@dataclass(frozen=True)
class Column:
    """One column of the model's numeric row."""

    name: str
    feature: F.Feature
    category: str | None = None  # the string value this indicator is 1 for
    monotone: int = 0


def _columns() -> tuple[Column, ...]:
    specs = (*F.SESSION_FEATURES, *F.SESSION_PRODUCT_FEATURES, *F.USER_FEATURES,
             *F.PRODUCT_FEATURES, *F.REQUEST_TIME_FEATURES)
    columns: list[Column] = []
    for spec in specs:
        if spec.name in NOT_MODEL_INPUTS:
            continue
        if spec.name in CATEGORIES:
            columns += [Column(f"{spec.name}={value}", spec, value, direction)
                        for value, direction in CATEGORIES[spec.name].items()]
        elif spec.dtype in ("int64", "float64", "bool"):
            columns.append(Column(spec.name, spec, monotone=spec.monotone))
        else:
            raise ValueError(f"feature {spec.name} ({spec.dtype}) has no model encoding: "
                             "list it in NOT_MODEL_INPUTS or CATEGORIES")
    return tuple(columns)


COLUMNS: tuple[Column, ...] = _columns()
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
_BY_NAME = {c.name: c for c in COLUMNS}


def column(name: str) -> Column:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"model column {name!r} is unknown to this code version") from None


def source_features(names: Sequence[str] = COLUMN_NAMES) -> tuple[str, ...]:
    """The stored feature names behind model columns (each once, in order)."""
    return tuple(dict.fromkeys(column(n).feature.name for n in names))


def encode(values: Mapping[str, Any], names: Sequence[str] = COLUMN_NAMES) -> np.ndarray:
    """Rows of feature values (a DataFrame or a mapping of name -> sequence) as the model's
    float matrix, in the order of `names`; None and NaN become NaN (LightGBM's missing)."""
    out: list[np.ndarray] = []
    for name in names:
        spec = column(name)
        raw = values[spec.feature.name]
        if spec.category is not None:
            strings = np.asarray(raw, dtype=object)
            known = np.array([v is not None and v == v for v in strings], dtype=bool)
            out.append(np.where(known, strings == spec.category, np.nan).astype(np.float64))
        else:
            out.append(np.asarray(
                [np.nan if v is None else v for v in raw] if _has_none(raw) else raw,
                dtype=np.float64))
    return np.column_stack(out) if out else np.empty((0, 0))


def encode_row(values: Mapping[str, Any], names: Sequence[str] = COLUMN_NAMES) -> np.ndarray:
    """One row of scalar feature values as a (1, n) matrix: `encode` for a single request,
    without building a column per feature (the scorer's hot path)."""
    row = np.empty((1, len(names)), dtype=np.float64)
    for i, name in enumerate(names):
        spec = column(name)
        value = values[spec.feature.name]
        if value is None or value != value:  # None or NaN
            row[0, i] = np.nan
        elif spec.category is not None:
            row[0, i] = float(value == spec.category)
        else:
            row[0, i] = float(value)
    return row


def _has_none(raw: Any) -> bool:
    return getattr(raw, "dtype", None) in (None, object) and any(v is None for v in raw)


def monotone_constraints(names: Sequence[str] = COLUMN_NAMES) -> list[int]:
    return [column(n).monotone for n in names]


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the booster's raw score: p = 1 / (1 + exp(-(a * raw + b))). Monotone,
    so it keeps the ranking (AUC) and only makes the number mean a probability."""

    a: float = 1.0
    b: float = 0.0

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * raw + self.b)))


class _FastRowPredictor:
    """LightGBM's C API for single-row prediction (LGBM_BoosterPredictForMatSingleRowFast),
    configured once: raw score, all trees, float64 rows, one thread."""

    def __init__(self, booster: lgb.Booster, columns: int) -> None:
        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._lib, self._check = _LIB, _safe_call
        self.columns = columns
        self.handle = ctypes.c_void_p()
        raw_score, all_trees, float64 = 1, -1, 1
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(raw_score), ctypes.c_int(0),
            ctypes.c_int(all_trees), ctypes.c_int(float64), ctypes.c_int32(columns),
            _c_str("num_threads=1"), ctypes.byref(self.handle)))
        self._out = ctypes.c_double()
        self._out_len = ctypes.c_int64()

    def raw(self, row: np.ndarray) -> float:
        row = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
        if row.shape[0] != self.columns:
            raise ValueError(f"row has {row.shape[0]} values, the model {self.columns}")
        self._check(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
            self.handle, row.ctypes.data_as(ctypes.c_void_p), ctypes.byref(self._out_len),
            ctypes.byref(self._out)))
        return self._out.value

    def __del__(self) -> None:
        if self.handle:
            self._lib.LGBM_FastConfigFree(self.handle)


@dataclass
class PropensityModel:
    booster: lgb.Booster
    columns: tuple[str, ...]
    calibration: Calibration = field(default_factory=Calibration)
    metadata: dict[str, Any] = field(default_factory=dict)  # data ranges, params, metrics
    version: str | None = None
    _fast: _FastRowPredictor | None = field(default=None, repr=False, compare=False)

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        return self.booster.predict(matrix, raw_score=True, num_threads=1)

    def raw_one(self, row: np.ndarray) -> float:
        """The raw score of one row through LightGBM's single-row fast path (the scorer's:
        about 5 us instead of 60 for `Booster.predict`'s per-call set-up). Not thread-safe:
        one event loop per model."""
        if self._fast is None:
            self._fast = _FastRowPredictor(self.booster, len(self.columns))
        return self._fast.raw(row)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Calibrated propensities for rows already in `self.columns` order."""
        return self.calibration.apply(self.raw(matrix))

    def predict(self, values: Mapping[str, Any]) -> np.ndarray:
        """Calibrated propensities for rows of named feature values."""
        return self.predict_matrix(encode(values, self.columns))

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """SHAP values per column (raw-score units), the bias in the last column."""
        return self.booster.predict(matrix, pred_contrib=True, num_threads=1)

    # -- files ----------------------------------------------------------------------------

    MODEL_FILE = "model.txt"  # LightGBM's text format
    SPEC_FILE = "model.json"  # columns in order, calibration, metadata

    def to_files(self) -> dict[str, bytes]:
        spec = {"columns": list(self.columns),
                "calibration": {"method": "platt", "a": self.calibration.a,
                                "b": self.calibration.b},
                "metadata": self.metadata}
        return {self.MODEL_FILE: self.booster.model_to_string().encode(),
                self.SPEC_FILE: json.dumps(spec, indent=2, default=str).encode()}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], version: str | None = None
                   ) -> PropensityModel:
        spec = json.loads(files[cls.SPEC_FILE])
        columns = tuple(spec["columns"])
        for name in columns:
            column(name)  # a column this code cannot encode fails here, not at scoring
        booster = lgb.Booster(model_str=files[cls.MODEL_FILE].decode())
        if booster.num_feature() != len(columns):
            raise ValueError(f"booster has {booster.num_feature()} features, "
                             f"the spec lists {len(columns)} columns")
        calibration = Calibration(spec["calibration"]["a"], spec["calibration"]["b"])
        return cls(booster, columns, calibration, spec.get("metadata", {}), version)
