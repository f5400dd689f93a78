"""Checks on computed features before anything is published: nulls, ranges, uniqueness and
counts against the input. A failed check stops the publish with a report of every failure."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from propensity import features as F
from propensity.batch.errors import BatchError


class ValidationError(BatchError):
    """Computed features failed their checks; nothing was published."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__(report.render())
        self.report = report


@dataclass
class CheckReport:
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, name: str, bad: pd.Series | bool, frame: pd.DataFrame | None = None,
              show: list[str] | None = None) -> None:
        """Record check `name`; `bad` is a row mask (examples come from `frame`) or a flag."""
        self.checked += 1
        if isinstance(bad, bool):
            if bad:
                self.failures.append(name)
            return
        count = int(bad.sum())
        if count:
            examples = ""
            if frame is not None:
                examples = "; e.g. " + frame.loc[bad, show or list(frame.columns)].head(3).to_json(
                    orient="records", date_format="iso")
            self.failures.append(f"{name}: {count} of {len(bad)} rows{examples}")

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        if self.ok:
            return f"all {self.checked} checks passed"
        lines = [f"{len(self.failures)} of {self.checked} feature checks failed; "
                 "nothing was published:"]
        return "\n".join([lines[0], *(f"  - {failure}" for failure in self.failures)])


_NON_NEGATIVE = {
    F.USER_VIEW: [F.LIFETIME_PURCHASE_COUNT, F.AVG_ORDER_VALUE_90D],
    F.PRODUCT_VIEW: [F.PURCHASE_COUNT_30D, F.VIEW_COUNT_30D, F.VIEW_TO_PURCHASE_RATE_30D,
                     F.AVG_PRICE_7D],
}
_NOT_NULL = {
    F.USER_VIEW: [F.LIFETIME_PURCHASE_COUNT, F.LIFETIME_SESSION_COUNT],
    F.PRODUCT_VIEW: [F.PURCHASE_COUNT_30D, F.VIEW_COUNT_30D],
}


def check_view(report: CheckReport, view: str, key: str, rows: pd.DataFrame,
               label: str) -> None:
    """Per-row checks of one view's snapshots (join key, event_timestamp, features)."""
    for column in (key, F.EVENT_TIMESTAMP, *(f.name for f in _NOT_NULL[view])):
        report.check(f"{label}.{column} is null", rows[column].isna(), rows, [key])
    for feature in _NON_NEGATIVE[view]:
        report.check(f"{label}.{feature.name} < 0", rows[feature.name] < 0, rows,
                     [key, feature.name])
    report.check(f"{label}: repeated ({key}, {F.EVENT_TIMESTAMP})",
                 rows.duplicated([key, F.EVENT_TIMESTAMP]), rows, [key, F.EVENT_TIMESTAMP])
    if view == F.USER_VIEW:
        report.check(f"{label}.{F.LIFETIME_SESSION_COUNT.name} < 1",
                     rows[F.LIFETIME_SESSION_COUNT.name] < 1, rows, [key])
        report.check(f"{label}.{F.LAST_PURCHASE_AT.name} after the snapshot",
                     rows[F.LAST_PURCHASE_AT.name] >= rows[F.EVENT_TIMESTAMP], rows, [key])
        report.check(f"{label}: purchases without {F.LAST_PURCHASE_AT.name}",
                     (rows[F.LIFETIME_PURCHASE_COUNT.name] > 0)
                     & rows[F.LAST_PURCHASE_AT.name].isna(), rows, [key])
    else:
        rate = rows[F.VIEW_TO_PURCHASE_RATE_30D.name]
        report.check(f"{label}.{F.VIEW_TO_PURCHASE_RATE_30D.name} without views",
                     rate.notna() & (rows[F.VIEW_COUNT_30D.name] == 0), rows, [key])


def check_totals(report: CheckReport, totals: dict[str, int], users: pd.DataFrame,
                 products: pd.DataFrame) -> None:
    """The latest snapshots against counts taken directly from the input."""
    published = {
        "users": len(users),
        "products": len(products),
        "purchases": int(users[F.LIFETIME_PURCHASE_COUNT.name].sum()),
        "user_sessions": int(users[F.LIFETIME_SESSION_COUNT.name].sum()),
    }
    for name, value in published.items():
        report.check(f"latest snapshots count {value} {name}, the input has {totals[name]}",
                     value != totals[name])


def validate(views: dict[str, tuple[str, pd.DataFrame, pd.DataFrame]],
             totals: dict[str, int]) -> CheckReport:
    """`views`: view name -> (join key, rows to publish, latest row per entity)."""
    report = CheckReport()
    for view, (key, rows, latest) in views.items():
        check_view(report, view, key, rows, view)
        check_view(report, view, key, latest, f"{view} (latest)")
    check_totals(report, totals, views[F.USER_VIEW][2], views[F.PRODUCT_VIEW][2])
    return report
