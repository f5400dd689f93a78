"""Variant assignment (propensity/rollout.py): stable for a shopper across processes, a
canary's share within sampling error, monotone in the share, drawn afresh per experiment."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from propensity import rollout
from propensity.rollout import CANARY, SHADOW, Challenger

KEYS = [rollout.shopper_key(user, f"session-{user}") for user in range(20_000)]


def _within_sampling_error(count: int, n: int, share: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * share) <= sigmas * math.sqrt(n * share * (1 - share))


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_a_canary_answers_for_its_share_within_sampling_error(share: float) -> None:
    canary = Challenger("v2", CANARY, share)
    chosen = sum(rollout.answers_as_challenger(canary, key) for key in KEYS)
    assert _within_sampling_error(chosen, len(KEYS), share), (chosen, share)


def test_the_same_shopper_gets_the_same_variant_in_another_process() -> None:
    here = [rollout.position(key, "v2") for key in KEYS[:200]]
    code = ("from propensity import rollout; import json; "
            f"print(json.dumps([rollout.position(k, 'v2') for k in {KEYS[:200]!r}]))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    assert json.loads(there) == here


def test_raising_a_share_keeps_its_shoppers_and_a_new_experiment_draws_afresh() -> None:
    at_5 = {k for k in KEYS if rollout.answers_as_challenger(Challenger("v2", CANARY, 0.05), k)}
    at_20 = {k for k in KEYS if rollout.answers_as_challenger(Challenger("v2", CANARY, 0.2), k)}
    assert at_5 < at_20
    other = {k for k in KEYS if rollout.answers_as_challenger(Challenger("v3", CANARY, 0.2), k)}
    # Independent draws overlap by share x share of the shoppers, not by the share.
    assert _within_sampling_error(len(at_20 & other), len(KEYS), 0.2 * 0.2)


def test_a_known_user_is_assigned_by_user_and_an_anonymous_one_by_session() -> None:
    assert rollout.shopper_key(7, "a") == rollout.shopper_key(7, "b")
    assert rollout.shopper_key(None, "a") != rollout.shopper_key(None, "b")
    assert rollout.shopper_key(None, "7") != rollout.shopper_key(7, "7")


def test_a_shadow_answers_for_no_one_and_bad_plans_are_refused() -> None:
    assert not any(rollout.answers_as_challenger(Challenger("v2", SHADOW), k) for k in KEYS)
    assert not rollout.answers_as_challenger(None, KEYS[0])
    with pytest.raises(ValueError, match="between 0 and 1"):
        Challenger("v2", CANARY, 1.5)
    with pytest.raises(ValueError, match="mode"):
        Challenger("v2", "blue-green", 0.1)
    with pytest.raises(ValueError, match="share is 0"):
        Challenger("v2", SHADOW, 0.1)
    plan = Challenger("v2", CANARY, 0.05)
    assert Challenger.from_json(plan.to_json()) == plan and Challenger.from_json(None) is None
