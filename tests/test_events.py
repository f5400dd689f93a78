"""The event contract, table-driven: every rule, both input forms, identity and round trips."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pandas as pd
import pytest

from propensity import events
from propensity.events import Reason
from propensity.ops.testing import write_csv
from propensity.samples import MULTICAT_SAMPLE

BASE = {
    "event_time": "2019-10-01 00:00:00 UTC",
    "event_type": "view",
    "product_id": "44600062",
    "category_id": "2103807459595387724",
    "category_code": "",
    "brand": "shiseido",
    "price": "35.79",
    "user_id": "541312140",
    "user_session": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
}


def _json(**changes: object) -> bytes:
    event = {k: v for k, v in {**BASE, **changes}.items() if v is not ...}
    return orjson.dumps(event)


def _outcome(payload: bytes | str) -> tuple[str | None, str | None]:
    result = events.validate(events.frame_from_json([payload]))
    if len(result.valid):
        return None, None
    row = result.invalid.iloc[0]
    return row[events.REASON], row[events.DETAIL]


CASES = [
    # (case, payload, expected reason, detail contains)
    ("valid REES46 event", _json(), None, None),
    ("numbers as JSON numbers", _json(product_id=44600062, price=35.79, user_id=1), None, None),
    ("ISO time with Z", _json(event_time="2019-10-01T00:00:00Z"), None, None),
    ("ISO time with offset", _json(event_time="2019-10-01T02:00:00+02:00"), None, None),
    ("optional fields absent", _json(category_id=..., category_code=..., brand=...), None, None),
    ("extra optional fields", _json(event_id="e-1", device_type="mobile", channel="web"),
     None, None),
    ("unknown fields ignored", _json(referrer="x"), None, None),
    ("zero price", _json(price="0"), None, None),
    ("not JSON", b"{not json", Reason.MALFORMED, "not JSON"),
    ("JSON but not an object", b"[1, 2]", Reason.MALFORMED, "not a JSON object"),
    ("nested value", _json(brand={"a": 1}), Reason.MALFORMED, "brand"),
    ("boolean value", _json(price=True), Reason.MALFORMED, "price"),
    ("too large", _json(brand="x" * events.MAX_EVENT_BYTES), Reason.TOO_LARGE, "bytes"),
    ("missing session", _json(user_session=...), Reason.MISSING_FIELD, "user_session"),
    ("empty session", _json(user_session="  "), Reason.MISSING_FIELD, "user_session"),
    ("null user", _json(user_id=None), Reason.MISSING_FIELD, "user_id"),
    ("missing time", _json(event_time=...), Reason.MISSING_FIELD, "event_time"),
    ("missing type", _json(event_type=""), Reason.MISSING_FIELD, "event_type"),
    ("missing product", _json(product_id=...), Reason.MISSING_FIELD, "product_id"),
    ("missing price", _json(price=...), Reason.MISSING_FIELD, "price"),
    ("time without zone", _json(event_time="2019-10-01 00:00:00"), Reason.BAD_TIMESTAMP, None),
    ("impossible date", _json(event_time="2019-13-01 00:00:00 UTC"), Reason.BAD_TIMESTAMP, None),
    ("not a time", _json(event_time="yesterday"), Reason.BAD_TIMESTAMP, None),
    ("unknown type", _json(event_type="click"), Reason.BAD_EVENT_TYPE, None),
    ("type case matters", _json(event_type="VIEW"), Reason.BAD_EVENT_TYPE, None),
    ("letters in id", _json(product_id="12a"), Reason.BAD_ID, "product_id"),
    ("negative id", _json(user_id="-5"), Reason.BAD_ID, "user_id"),
    ("id beyond int64", _json(category_id="99999999999999999999"), Reason.BAD_ID,
     "category_id"),
    ("fractional id", _json(product_id=1.5), Reason.BAD_ID, "product_id"),
    ("overlong session", _json(user_session="s" * 129), Reason.BAD_ID, "user_session"),
    ("overlong event id", _json(event_id="e" * 129), Reason.BAD_ID, "event_id"),
    ("price not a number", _json(price="abc"), Reason.BAD_PRICE, None),
    ("price infinite", _json(price="inf"), Reason.BAD_PRICE, None),
    ("price NaN", _json(price="nan"), Reason.BAD_PRICE, None),
    ("negative price", _json(price="-0.01"), Reason.NEGATIVE_PRICE, None),
    ("first failing rule wins", _json(user_session=..., price="-1"), Reason.MISSING_FIELD,
     "user_session"),
]


@pytest.mark.parametrize(("case", "payload", "reason", "detail"), CASES,
                         ids=[c[0] for c in CASES])
def test_rule(case: str, payload: bytes, reason: str | None, detail: str | None) -> None:
    got_reason, got_detail = _outcome(payload)
    assert got_reason == reason
    if detail is not None:
        assert detail in got_detail


def test_invalid_rows_keep_their_payload_and_valid_rows_their_order() -> None:
    payloads = [_json(price="-1"), _json(user_id="1"), b"{", _json(user_id="2")]
    result = events.validate(events.frame_from_json(payloads, {"seq": [10, 11, 12, 13]}))
    assert result.valid["user_id"].tolist() == [1, 2]
    assert result.valid["seq"].tolist() == [11, 13]
    assert result.invalid[events.PAYLOAD].tolist() == [payloads[0].decode(), "{"]
    assert result.invalid["seq"].tolist() == [10, 12]
    assert result.reason_counts() == {"negative_price": 1, "malformed": 1}


def test_typed_values() -> None:
    valid = events.validate(events.frame_from_json([
        _json(event_time="2019-10-01T02:00:00.5+02:00", brand=" shiseido ", category_code=""),
    ])).valid.iloc[0]
    assert valid["event_time"] == pd.Timestamp("2019-10-01 00:00:00.5", tz="UTC")
    assert valid["brand"] == "shiseido"
    assert valid["category_code"] is None
    assert valid["device_type"] is None
    assert valid["product_id"] == 44600062
    assert valid["category_id"] == 2103807459595387724
    assert valid["price"] == pytest.approx(35.79)


def test_identity_is_stable_across_forms_and_given_ids_win(tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path / "one.csv", [list(BASE.values()), list(BASE.values())])
    from_csv = events.validate(next(events.read_csv(csv_file))).valid["event_id"].tolist()
    from_json = events.validate(events.frame_from_json([_json()])).valid["event_id"].tolist()
    assert from_csv == from_json * 2  # repeated rows share one identity, whatever the form
    different = events.validate(events.frame_from_json([_json(price="35.80")])).valid
    assert different["event_id"].tolist() != from_json
    given = events.validate(events.frame_from_json([_json(event_id="shop-42")])).valid
    assert given["event_id"].tolist() == ["shop-42"]


def test_csv_rows_of_wrong_width_are_malformed_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv.gz"
    write_csv(path, [list(BASE.values()), ["2019-10-01 00:00:00 UTC", "view", "1"],
                     list(BASE.values())])
    frames = list(events.read_csv(path))
    result = events.validate(pd.concat(frames, ignore_index=True))
    assert len(result.valid) == 2
    assert result.invalid[events.REASON].tolist() == ["malformed"]
    assert result.invalid[events.PAYLOAD].tolist() == ["2019-10-01 00:00:00 UTC,view,1"]


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 256])  # one block, and lines across many
def test_a_line_that_is_not_utf8_is_one_malformed_row_not_a_lost_file(
        tmp_path: Path, chunk_bytes: int) -> None:
    good = ",".join(BASE.values()).encode()
    bad = good.replace(b"shiseido", b"shis\xffido")
    path = tmp_path / "mixed.csv.gz"
    with gzip.open(path, "wb") as out:
        out.write(b",".join(c.encode() for c in events.REES46_COLUMNS) + b"\n")
        out.write(b"\n".join([good] * 20 + [bad] + [good] * 20) + b"\n")
    result = events.validate(pd.concat(events.read_csv(path, chunk_bytes), ignore_index=True))
    assert len(result.valid) == 40
    assert result.invalid[events.REASON].tolist() == ["malformed"]
    assert result.invalid[events.PAYLOAD].tolist() == [bad.decode(errors="backslashreplace")]
    assert result.invalid[events.DETAIL].tolist() == ["not UTF-8 text"]


def test_a_truncated_gz_gives_its_rows_then_says_it_breaks_off(tmp_path: Path) -> None:
    whole = tmp_path / "whole.csv.gz"
    rows = [[*list(BASE.values())[:-1], f"session-{i}"] for i in range(5000)]
    write_csv(whole, rows)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    frames = []
    with pytest.raises(events.ContractError, match="breaks off after"):
        frames.extend(events.read_csv(cut, chunk_bytes=4096))
    result = events.validate(pd.concat(frames, ignore_index=True))
    sessions = result.valid["user_session"].tolist()
    assert 0 < len(sessions) < 5000
    assert sessions == [f"session-{i}" for i in range(len(sessions))]  # whole rows, in order
    assert result.invalid[events.DETAIL].tolist() == ["the file breaks off in this line"]


def test_invalid_csv_rows_keep_a_faithful_payload(tmp_path: Path) -> None:
    row = {**BASE, "brand": "a, quoted brand", "price": "-3"}
    path = write_csv(tmp_path / "x.csv", [list(row.values())])
    invalid = events.validate(next(events.read_csv(path))).invalid
    assert invalid[events.PAYLOAD].tolist() == [
        ",".join(f'"{v}"' if "," in v else v for v in row.values())]


def test_csv_with_optional_columns(tmp_path: Path) -> None:
    header = [*events.REES46_COLUMNS, "event_id", "device_type", "channel"]
    path = write_csv(tmp_path / "x.csv", [[*BASE.values(), "e-9", "mobile", "app"]], header)
    valid = events.validate(next(events.read_csv(path))).valid.iloc[0]
    assert (valid["event_id"], valid["device_type"], valid["channel"]) == ("e-9", "mobile", "app")


def test_csv_without_the_rees46_columns_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [["1", "2"]], header=["a", "b"])
    with pytest.raises(events.ContractError, match="REES46 columns"):
        list(events.read_csv(path))


def test_real_sample_round_trips_through_json() -> None:
    frames = [events.validate(raw) for raw in events.read_csv(MULTICAT_SAMPLE)]
    valid = pd.concat([f.valid for f in frames], ignore_index=True)
    assert len(valid) == 17434
    assert sum(len(f.invalid) for f in frames) == 0
    again = events.validate(events.frame_from_json(events.to_json(valid)))
    assert again.invalid.empty
    pd.testing.assert_frame_equal(again.valid, valid)
    arrow = events.to_arrow(valid)
    assert arrow.schema.equals(events.EVENT_SCHEMA)


def test_split_record() -> None:
    assert events.split_record(b'{"a":1}\n\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']
