"""The prediction log's format, shared by the scorer that writes it (serving/prediction_log.py)
and the monitor that reads it (monitoring/).

Objects: `<PROPENSITY_PREDICTIONS_URI>/date=YYYY-MM-DD/<instance>-<seq>.parquet` (lake.py),
dated by the moment answered (UTC). A row is one model's score of one request: the answer (variant
`champion` or `challenger`), or a shadow model's score beside it (variant `shadow`, the
answer's request id); `features` is the row the model scored, in that model version's column
order (model.json in the model store).
"""

from __future__ import annotations

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
ANSWERED_AT = "answered_at"  # the moment answered: what dates an object
LOG_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    (ANSWERED_AT, TIMESTAMP),
    ("as_of", TIMESTAMP),
    ("session_id", pa.string()),
    ("user_id", pa.int64()),
    ("product_id", pa.int64()),
    ("model_version", pa.string()),
    ("variant", pa.string()),
    ("propensity", pa.float64()),
    ("degraded", pa.bool_()),
    ("features", pa.list_(pa.float64())),
])
