"""The streaming sink's pieces that need no running stack."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.utils import _convert_arrow_to_proto

from feature_repo import definitions
from feature_repo.online import online_rows
from propensity import events
from propensity import features as F
from propensity.settings import Settings
from streaming.sinks import SESSION_COLUMNS, SESSION_PRODUCT_COLUMNS
from tests.test_streaming import COSMETICS


def _snapshots() -> pd.DataFrame:
    valid = events.validate_file(COSMETICS).valid
    rng = np.random.default_rng(1)
    valid["device_type"] = np.where(rng.random(len(valid)) < 0.5, "mobile", None)
    return F.snapshots(valid)


def test_online_rows_are_byte_identical_to_feasts_own_conversion() -> None:
    snapshots = _snapshots()
    settings = Settings()
    for view_name, columns, join_keys in (
            (F.SESSION_VIEW, SESSION_COLUMNS, {F.SESSION_ID: "STRING"}),
            (F.SESSION_PRODUCT_VIEW, SESSION_PRODUCT_COLUMNS,
             {F.SESSION_ID: "STRING", F.PRODUCT_ID: "INT64"})):
        from feast import ValueType

        keys = {k: ValueType[v] for k, v in join_keys.items()}
        view = definitions.feature_view(settings, view_name)
        table = pa.Table.from_pandas(snapshots[list(columns)], preserve_index=False)
        ours = online_rows(table, view, keys)
        feasts = _convert_arrow_to_proto(table, view, keys)
        assert len(ours) == len(feasts) == len(snapshots)
        for (key, values, ts, created), (key2, values2, ts2, created2) in zip(
                ours, feasts, strict=True):
            assert key.SerializeToString() == key2.SerializeToString()
            assert {n: v.SerializeToString() for n, v in values.items()} == {
                n: v.SerializeToString() for n, v in values2.items()}
            assert (ts, created) == (ts2, created2)
