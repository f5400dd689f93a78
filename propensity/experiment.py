"""A/B statistics of conversion between two variants: the two-proportion z-test with the
difference's confidence interval, and the sample size a lift needs. Pure (the standard normal
of Python's statistics module).

The unit is the shopper the scorer assigns (propensity/rollout.py: the user, or the session
when anonymous), so units are independent, as the test assumes; sessions of one user would not
be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

ALPHA = 0.05
POWER = 0.80
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Conversions:
    units: int
    converted: int

    @property
    def rate(self) -> float | None:
        return self.converted / self.units if self.units else None


@dataclass(frozen=True)
class Comparison:
    """Treatment against control: rates, their difference with its (1 - alpha) interval,
    the relative lift, and the two-sided p-value of "no difference"."""

    control_rate: float
    treatment_rate: float
    difference: float
    interval: tuple[float, float]
    relative_lift: float | None
    z: float
    p_value: float


def compare(control: Conversions, treatment: Conversions, alpha: float = ALPHA
            ) -> Comparison | None:
    """The two-proportion z-test (pooled variance) and the Wald interval of the difference
    (unpooled); None until both variants have units and some conversion."""
    if not control.units or not treatment.units:
        return None
    p1, p2 = control.rate, treatment.rate
    pooled = (control.converted + treatment.converted) / (control.units + treatment.units)
    if pooled in (0.0, 1.0):
        return None
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / control.units + 1 / treatment.units))
    z = (p2 - p1) / se_pooled
    se = math.sqrt(p1 * (1 - p1) / control.units + p2 * (1 - p2) / treatment.units)
    half = _NORMAL.inv_cdf(1 - alpha / 2) * se
    return Comparison(p1, p2, p2 - p1, (p2 - p1 - half, p2 - p1 + half),
                      (p2 - p1) / p1 if p1 else None, z, 2 * (1 - _NORMAL.cdf(abs(z))))


def sample_size(baseline_rate: float, relative_lift: float, alpha: float = ALPHA,
                power: float = POWER) -> int:
    """Units per variant for a two-sided two-proportion test to detect a relative lift of the
    baseline conversion rate at the given power."""
    if not 0 < baseline_rate < 1:
        raise ValueError(f"baseline conversion rate {baseline_rate}: between 0 and 1")
    treated = baseline_rate * (1 + relative_lift)
    if not 0 < treated < 1 or relative_lift == 0:
        raise ValueError(f"a lift of {relative_lift:+.1%} on {baseline_rate:.3f} is no rate "
                         "to detect")
    z_alpha, z_power = _NORMAL.inv_cdf(1 - alpha / 2), _NORMAL.inv_cdf(power)
    mean = (baseline_rate + treated) / 2
    numerator = (z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_power * math.sqrt(
        baseline_rate * (1 - baseline_rate) + treated * (1 - treated))) ** 2
    return math.ceil(numerator / (treated - baseline_rate) ** 2)
