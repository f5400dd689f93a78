"""`propensity monitor ab --days FROM:TO`: conversion per variant over an experiment's days.

The unit is the shopper the scorer assigns a variant to (propensity/rollout.py: the user, or
the session when anonymous); a shopper converted when one of their scored sessions purchased
after a prediction (the monitor's label, monitoring/outcomes.py). The experiment starts with the
challenger's first answer in the days: the champion's answers before it are not counted (they
had no rival). Shoppers answered by both variants (the plan changed during the days, e.g. a
canary widened) are left out and counted.
Shadow scores answer no one and take no part. The test: two proportions
(propensity/experiment.py), with the units each variant would need to detect the given lift of
the champion's rate at 80% power, alpha 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from propensity import experiment
from propensity.experiment import Comparison, Conversions
from propensity.lake import day_dataset
from propensity.monitoring.outcomes import LABEL, labelled_batches
from propensity.predictions import TIMESTAMP
from propensity.rollout import CHALLENGER, CHAMPION, SESSION_KEY, USER_KEY
from propensity.settings import Settings

SHOPPER = "shopper"


@dataclass(frozen=True)
class AbTest:
    """The experiment's days (inclusive) and the relative lift to size the test for."""

    first: date
    last: date
    lift: float = 0.05

    def days(self) -> list[date]:
        return [self.first + timedelta(n) for n in range((self.last - self.first).days + 1)]


@dataclass(frozen=True)
class AbResult:
    test: AbTest
    conversions: dict[str, Conversions]  # per variant (champion, challenger)
    versions: dict[str, list[str]] = field(default_factory=dict)  # the versions per variant
    mixed: int = 0  # shoppers answered by both variants: left out
    started: datetime | None = None  # the challenger's first answer
    comparison: Comparison | None = None  # challenger against champion
    needed_per_variant: int | None = None  # units per variant to detect the lift

    def format(self) -> str:
        since = f" from {self.started:%Y-%m-%d %H:%M:%S} UTC" if self.started else ""
        lines = [f"A/B {self.test.first}..{self.test.last}{since}: conversion per shopper "
                 f"(user, or session when anonymous) after a prediction"]
        for variant in (CHAMPION, CHALLENGER):
            c = self.conversions.get(variant, Conversions(0, 0))
            rate = "n/a" if c.rate is None else f"{c.rate:.4f}"
            versions = ", ".join(self.versions.get(variant, [])) or "-"
            lines.append(f"  {variant:<10} {c.units:>8} shoppers {c.converted:>7} converted "
                         f"rate {rate}  versions {versions}")
        if self.mixed:
            lines.append(f"  {self.mixed} shoppers answered by both variants left out")
        if self.comparison is None:
            lines.append("  no test yet: both variants need shoppers and a conversion")
        else:
            k = self.comparison
            low, high = k.interval
            lift = "n/a" if k.relative_lift is None else f"{k.relative_lift:+.1%}"
            lines.append(f"  difference {k.difference:+.4f} (95% CI {low:+.4f} .. {high:+.4f}), "
                         f"relative lift {lift}, z {k.z:.2f}, p {k.p_value:.4f}")
        if self.needed_per_variant is not None:
            lines.append(f"  to detect a {self.test.lift:+.0%} lift (80% power, alpha 0.05): "
                         f"{self.needed_per_variant:,} shoppers per variant")
        return "\n".join(lines)


def shopper_keys(user_id: pa.ChunkedArray, session_id: pa.ChunkedArray) -> pa.ChunkedArray:
    """The assignment's key per row, as propensity.rollout.shopper_key makes it."""
    return pc.if_else(pc.is_valid(user_id),
                      pc.binary_join_element_wise(USER_KEY, pc.cast(user_id, pa.string()), ""),
                      pc.binary_join_element_wise(SESSION_KEY, session_id, ""))


def experiment_start(settings: Settings, days: list[date]) -> datetime | None:
    """When the challenger first answered in these days (None: it never did)."""
    log = day_dataset(settings, settings.predictions_uri, days)
    if log is None:
        return None
    times = log.to_table(columns=["answered_at"],
                         filter=ds.field("variant") == CHALLENGER)["answered_at"]
    return pc.min(times).as_py() if len(times) else None


def run(settings: Settings, test: AbTest) -> AbResult:
    per_shopper: list[pa.Table] = []
    per_version: list[pa.Table] = []
    # Both variants from the challenger's first answer on: the champion's answers before it
    # had no rival, and counting them would compare different periods.
    started = experiment_start(settings, test.days())
    for table in labelled_batches(settings, test.days(), ["user_id", "variant",
                                                          "model_version", "answered_at"]):
        answered = table.filter(pc.is_in(table["variant"], pa.array([CHAMPION, CHALLENGER])))
        if started is not None:
            answered = answered.filter(pc.greater_equal(answered["answered_at"],
                                                        pa.scalar(started, TIMESTAMP)))
        answered = answered.append_column(
            SHOPPER, shopper_keys(answered["user_id"], answered["session_id"]))
        per_shopper.append(answered.group_by([SHOPPER, "variant"]).aggregate([(LABEL, "max")]))
        per_version.append(answered.group_by(["variant", "model_version"]).aggregate([]))
    if not per_shopper:
        return AbResult(test, {})
    shoppers = pa.concat_tables(per_shopper).group_by([SHOPPER, "variant"]).aggregate(
        [(f"{LABEL}_max", "max")]).rename_columns([SHOPPER, "variant", LABEL])
    variants_of = shoppers.group_by(SHOPPER).aggregate([("variant", "count")])
    single = variants_of.filter(pc.equal(variants_of["variant_count"], 1))[SHOPPER]
    kept = shoppers.filter(pc.is_in(shoppers[SHOPPER], single))
    conversions = {}
    for variant in (CHAMPION, CHALLENGER):
        mine = kept.filter(pc.equal(kept["variant"], variant))[LABEL]
        conversions[variant] = Conversions(len(mine), int(pc.sum(mine.cast(pa.int64())).as_py()
                                                           or 0))
    versions = pa.concat_tables(per_version).group_by(["variant", "model_version"]).aggregate([])
    by_variant: dict[str, list[str]] = {}
    for variant, version in sorted(zip(versions["variant"].to_pylist(),
                                       versions["model_version"].to_pylist(), strict=True)):
        by_variant.setdefault(variant, []).append(version)
    baseline = conversions[CHAMPION].rate
    needed = (experiment.sample_size(baseline, test.lift) if baseline and baseline < 1
              else None)
    return AbResult(test, conversions, by_variant, len(variants_of) - len(single), started,
                    experiment.compare(conversions[CHAMPION], conversions[CHALLENGER]), needed)
