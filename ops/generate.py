"""Generated clickstream with the shape of real data, for scale tests and benchmarks.

`TrafficModel.from_file` keeps every real session of a REES46 file as a template: its event
types, gaps, products, categories, brands and prices. Generated traffic starts sessions as a
Poisson process and plays a uniformly drawn template under a new session and user id, so session
lengths, event mix, gaps, prices and product popularity are the real data's. Sessions also start
before the window, so the rate is steady from its first second. Figures measured on this
traffic are labelled as coming from generated data.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from propensity import events

_TEMPLATE_COLUMNS = ("event_type", "product_id", "category_id", "category_code", "brand",
                     "price")


@dataclass(frozen=True)
class TrafficModel:
    offsets_s: np.ndarray  # every template event's time since its session's first event
    columns: dict[str, np.ndarray]  # the template events' fields, flat
    starts: np.ndarray  # index of each template's first event
    lengths: np.ndarray  # events per template
    source: str

    @classmethod
    def from_file(cls, path: str | Path) -> TrafficModel:
        valid = events.validate_file(path).valid
        valid = valid.drop_duplicates("event_id").sort_values(
            ["user_session", "event_time"], kind="stable").reset_index(drop=True)
        times = valid["event_time"].astype("datetime64[us, UTC]").astype(np.int64) / 1e6
        first = times.groupby(valid["user_session"]).transform("min")
        lengths = valid.groupby("user_session", sort=False).size().to_numpy()
        return cls(
            offsets_s=(times - first).to_numpy(),
            columns={name: valid[name].to_numpy() for name in _TEMPLATE_COLUMNS},
            starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
            lengths=lengths,
            source=Path(path).name,
        )

    @property
    def mean_session_length(self) -> float:
        return float(self.lengths.mean())

    def frames(self, start_s: float, rate: float, duration_s: float, seed: int = 0,
               chunk_s: float = 1.0, warmup_s: float = 3600.0,
               sessions_per_user: float = 1.0) -> Iterator[pd.DataFrame]:
        """About `rate` events/s in [start_s, start_s + duration_s), as the contract's typed
        valid-event frames in time order, one per `chunk_s` of event time. Each session gets
        a user drawn from a pool of sessions / `sessions_per_user` (returning shoppers)."""
        rng = np.random.default_rng(seed)
        span = duration_s + warmup_s
        sessions = rng.poisson(rate / self.mean_session_length * span)
        session_start = start_s - warmup_s + rng.random(sessions) * span
        template = rng.integers(0, len(self.lengths), sessions)
        pool = max(1, int(sessions / sessions_per_user))
        users = 10**9 + rng.choice(10**9, size=pool, replace=False)[rng.integers(0, pool,
                                                                               sessions)]
        # One row per generated event: which session, which template event.
        counts = self.lengths[template]
        session_of = np.repeat(np.arange(sessions), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        source_row = self.starts[template][session_of] + within
        times = session_start[session_of] + self.offsets_s[source_row]
        keep = (times >= start_s) & (times < start_s + duration_s)
        order = np.argsort(times[keep], kind="stable")
        session_of, source_row, times = (a[keep][order] for a in (session_of, source_row,
                                                                   times))
        bounds = np.searchsorted(times, start_s + np.arange(0, duration_s + chunk_s, chunk_s))
        for lo, hi in itertools.pairwise(bounds):
            if hi > lo:
                yield self._frame(times[lo:hi], session_of[lo:hi], source_row[lo:hi], users,
                                  seed, lo)

    def _frame(self, times: np.ndarray, session_of: np.ndarray, source_row: np.ndarray,
               users: np.ndarray, seed: int, first_index: int) -> pd.DataFrame:
        sessions = [f"gen{seed}-{s:x}" for s in session_of.tolist()]
        frame = pd.DataFrame({
            "event_time": pd.to_datetime((times * 1e6).astype(np.int64), unit="us",
                                         utc=True).astype("datetime64[us, UTC]"),
            **{name: self.columns[name][source_row] for name in _TEMPLATE_COLUMNS},
            "user_id": users[session_of],
            "user_session": sessions,
            "event_id": [f"gen{seed}-{first_index + i:x}" for i in range(len(times))],
            "device_type": None,
            "channel": None,
        })
        frame["category_id"] = frame["category_id"].astype("Int64")
        return frame[list(events.FIELD_NAMES)]
