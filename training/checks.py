"""Behavioural checks a model must pass before it can be registered as `latest`.

Each check builds probe sessions from real validation events, changes them in one way, runs
the changed events through the streaming fold (`features.snapshots`), joins the batch
features of the original point and compares the model's scores:
- ids: new session, user and product ids, nothing else: every score identical;
- cart: one more cart event (the probed product, one second later): no score lower;
- price: every price (and every batch money feature) moved by up to +-1%: scores stay close.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from propensity import features as F
from propensity.model import PropensityModel
from propensity.training.dataset import with_request_time_features

CART_TOLERANCE = 0.005  # a cart event may not lower a score by more than this
PRICE_NOISE = 0.01  # relative price change of the price check
PRICE_TOLERANCE = 0.02  # largest score change that price noise may cause
_BATCH_COLUMNS = tuple(f.name for f in (*F.USER_FEATURES, *F.PRODUCT_FEATURES))
_ID_OFFSET = 10**12
_RENAMED = "renamed-"


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    figures: dict = field(default_factory=dict)


@dataclass
class Probes:
    """Probe sessions: each one's events up to a cut point, and the cut point's row."""

    events: pd.DataFrame  # valid events, probe sessions renamed probe-<n>
    points: pd.DataFrame  # one row per probe, indexed by probe session id


def probes(events: pd.DataFrame, points: pd.DataFrame, sessions: int = 300,
           seed: int = 0) -> Probes:
    """Cuts `sessions` random sessions of `points` at a random point each."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(points[F.SESSION_ID].unique())[:sessions]
    cuts = (points[points[F.SESSION_ID].isin(chosen)]
            .groupby(F.SESSION_ID, sort=True)
            .sample(1, random_state=seed))
    ordered = F.processing_order(events[events["user_session"].isin(chosen)])
    frames, rows = [], []
    for n, cut in enumerate(cuts.itertuples(index=False)):
        session = ordered[ordered["user_session"] == getattr(cut, F.SESSION_ID)]
        position = int(np.flatnonzero(session["event_id"].to_numpy() == cut.event_id)[0])
        name = f"probe-{n}"
        frames.append(session.iloc[:position + 1].assign(user_session=name))
        rows.append(name)
    return Probes(pd.concat(frames, ignore_index=True),
                  cuts.set_axis(pd.Index(rows, name="probe"), axis=0))


def probe_features(probe: Probes, events: pd.DataFrame | None = None,
                   batch_scale: np.ndarray | None = None, timeout_s: float = 1800,
                   session_prefix: str = "") -> pd.DataFrame:
    """Every model feature at the end of each probe session (optionally with changed
    events, or batch money features scaled per probe)."""
    snapshots = F.snapshots(probe.events if events is None else events, timeout_s)
    last = snapshots.groupby(F.SESSION_ID, sort=False).tail(1).set_index(F.SESSION_ID)
    frame = last.loc[session_prefix + probe.points.index].reset_index()
    batch = probe.points[[*_BATCH_COLUMNS]].reset_index(drop=True)
    if batch_scale is not None:
        for spec in (*F.USER_FEATURES, *F.PRODUCT_FEATURES):
            if spec.currency:
                batch[spec.name] = batch[spec.name] * batch_scale
    return with_request_time_features(pd.concat([frame, batch], axis=1))


def _with_cart_event(events: pd.DataFrame) -> pd.DataFrame:
    last = events.groupby("user_session", sort=False).tail(1)
    added = last.assign(event_type="cart",
                        event_time=last["event_time"] + pd.Timedelta(seconds=1),
                        event_id=last["event_id"] + ":probe-cart")
    return pd.concat([events, added], ignore_index=True)


def _with_new_ids(events: pd.DataFrame) -> pd.DataFrame:
    return events.assign(user_session=_RENAMED + events["user_session"],
                         user_id=events["user_id"] + _ID_OFFSET,
                         product_id=events["product_id"] + _ID_OFFSET)


def run_checks(model: PropensityModel, probe: Probes, timeout_s: float = 1800,
               seed: int = 0) -> list[CheckResult]:
    base = model.predict(probe_features(probe, timeout_s=timeout_s))
    results = []

    renamed = model.predict(probe_features(probe, _with_new_ids(probe.events),
                                           timeout_s=timeout_s, session_prefix=_RENAMED))
    changed = int((renamed != base).sum())
    results.append(CheckResult(
        "ids", changed == 0,
        f"{changed} of {len(base)} scores changed when only ids changed",
        {"changed": changed, "probes": len(base)}))

    carted = model.predict(probe_features(probe, _with_cart_event(probe.events),
                                          timeout_s=timeout_s))
    drop = base - carted
    lowered = int((drop > CART_TOLERANCE).sum())
    results.append(CheckResult(
        "cart", lowered == 0,
        f"{lowered} of {len(base)} scores fell by more than {CART_TOLERANCE} after one more "
        f"cart event (largest fall {drop.max():.4f}; mean change {-drop.mean():+.4f})",
        {"lowered": lowered, "largest_fall": float(drop.max()),
         "mean_change": float(-drop.mean()), "probes": len(base)}))

    rng = np.random.default_rng(seed)
    noisy = probe.events.assign(price=probe.events["price"] * rng.uniform(
        1 - PRICE_NOISE, 1 + PRICE_NOISE, len(probe.events)))
    scale = rng.uniform(1 - PRICE_NOISE, 1 + PRICE_NOISE, len(base))
    moved = np.abs(model.predict(probe_features(probe, noisy, scale, timeout_s)) - base)
    results.append(CheckResult(
        "price", bool(moved.max() <= PRICE_TOLERANCE),
        f"prices moved by up to {PRICE_NOISE:.0%}: largest score change {moved.max():.4f} "
        f"(limit {PRICE_TOLERANCE}), 99th percentile {np.percentile(moved, 99):.4f}",
        {"largest_change": float(moved.max()),
         "p99_change": float(np.percentile(moved, 99)), "probes": len(base)}))
    return results


def as_dicts(results: list[CheckResult]) -> list[dict]:
    return [asdict(r) for r in results]
