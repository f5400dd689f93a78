"""Rolling a model out: the champion (the store's `latest`) and at most one challenger, in
canary (it answers for a share of the shoppers) or in shadow (it scores every request beside
the champion, which answers). Pure: the store keeps the plan (propensity/model_store.py), the
scorer follows it (serving/app.py), the monitor reads the variants back from the prediction log.

A shopper's variant is a stable hash of who they are (the user, or the session when anonymous)
salted with the challenger's version: the same shopper gets the same variant in every scorer
process and after restarts, a new experiment draws its shoppers afresh, and raising a canary's
share only adds shoppers to it (a shopper in at 5% stays in at 20%).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# The variant of an answer (and of a prediction log row).
CHAMPION = "champion"  # the store's `latest`
CHALLENGER = "challenger"  # a canary's model, for the shoppers in its share
SHADOW = "shadow"  # a shadow model's score: logged, never answered (also the shadow mode)
VARIANTS = (CHAMPION, CHALLENGER, SHADOW)

# How a challenger takes part: answering for a share of the shoppers, or in shadow.
CANARY = "canary"
MODES = (CANARY, SHADOW)

_HASH_SPACE = float(2**64)
# A shopper's key: the user id after USER_KEY, or the session id after SESSION_KEY.
USER_KEY, SESSION_KEY = "u:", "s:"


@dataclass(frozen=True)
class Challenger:
    """A version beside the champion: in canary for `share` of the shoppers, or in shadow."""

    version: str
    mode: str
    share: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"challenger mode {self.mode!r}: one of {', '.join(MODES)}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"challenger share {self.share}: between 0 and 1")
        if self.mode == SHADOW and self.share:
            raise ValueError("a shadow challenger answers for no one: its share is 0")

    def to_json(self) -> dict:
        return {"version": self.version, "mode": self.mode, "share": self.share}

    @classmethod
    def from_json(cls, data: dict | None) -> Challenger | None:
        return None if not data else cls(data["version"], data["mode"], float(data["share"]))


def shopper_key(user_id: int | None, session_id: str) -> str:
    """Who a shopper is, for assignment: the user when known, else the session."""
    return f"{USER_KEY}{user_id}" if user_id is not None else f"{SESSION_KEY}{session_id}"


def position(key: str, salt: str) -> float:
    """The shopper's place in [0, 1) for an experiment (salt): uniform, and the same on
    every machine (blake2b, not Python's per-process salted hash())."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


def answers_as_challenger(challenger: Challenger | None, key: str) -> bool:
    """Whether the challenger answers this shopper (a canary whose share holds them)."""
    return (challenger is not None and challenger.mode == CANARY
            and position(key, challenger.version) < challenger.share)
