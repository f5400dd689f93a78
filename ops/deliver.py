"""Delivering a scorer image to ECS (the delivery workflow's deploy step, `make deploy`):
register the family's newest task definition again with the new image (everything else as
terraform last registered it), roll the service onto it (ECS's rolling update; its deployment
circuit breaker rolls a failing deployment back by itself), wait until the deployment
completes, smoke-test the scorer through the load balancer, and on any failure put the
service back on the task definition it ran before and wait for that.

`smoke` is the smoke test on its own: `/ready` answers 200 and one `/v1/propensity` answers
with a propensity between 0 and 1 (`propensity deliver smoke --url URL`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("propensity.deliver")

# What a smoke test asks: an unknown session (no features) still gets a model's answer.
SMOKE_REQUEST = {"session_id": "smoke-test-session"}
# register_task_definition takes these fields of a described task definition back.
TASK_DEFINITION_FIELDS = (
    "family", "taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions",
    "volumes", "placementConstraints", "requiresCompatibilities", "cpu", "memory",
    "runtimePlatform", "ephemeralStorage", "pidMode", "ipcMode", "proxyConfiguration")


class DeliveryError(RuntimeError):
    """The deployment or its smoke test failed (after the rollback, if one was needed)."""


@dataclass(frozen=True)
class Service:
    cluster: str
    service: str
    container: str = "scorer"


@dataclass(frozen=True)
class Deployed:
    previous: str  # the task definition the service ran before
    current: str  # the one it runs now


def with_image(definition: dict, container: str, image: str) -> dict:
    """A described task definition as register_task_definition's arguments, the named
    container's image replaced."""
    fields = {k: definition[k] for k in TASK_DEFINITION_FIELDS if definition.get(k)}
    names = [c["name"] for c in fields["containerDefinitions"]]
    if container not in names:
        raise DeliveryError(f"task definition {definition['family']} has no container "
                            f"{container!r} (it has {names})")
    fields["containerDefinitions"] = [{**c, "image": image} if c["name"] == container else c
                                      for c in fields["containerDefinitions"]]
    return fields


def current_task_definition(ecs: Any, target: Service) -> str:
    (service,) = ecs.describe_services(cluster=target.cluster,
                                       services=[target.service])["services"]
    return service["taskDefinition"]


def rollout_state(ecs: Any, target: Service) -> str:
    """The state of the service's newest (PRIMARY) deployment: IN_PROGRESS, COMPLETED or
    FAILED (the circuit breaker gave up on it)."""
    (service,) = ecs.describe_services(cluster=target.cluster,
                                       services=[target.service])["services"]
    primary = next(d for d in service["deployments"] if d["status"] == "PRIMARY")
    if primary.get("rolloutState"):
        return primary["rolloutState"]
    # Without a rollout state: done when the primary runs what it wants and nothing else does.
    done = (primary.get("runningCount") == primary.get("desiredCount")
            and len(service["deployments"]) == 1)
    return "COMPLETED" if done else "IN_PROGRESS"


def wait_for_rollout(ecs: Any, target: Service, timeout_s: float, poll_s: float = 10,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> None:
    deadline = clock() + timeout_s
    while True:
        state = rollout_state(ecs, target)
        if state == "COMPLETED":
            return
        if state == "FAILED":
            raise DeliveryError(f"{target.service}: the deployment failed (ECS's circuit "
                                "breaker rolled it back)")
        if clock() >= deadline:
            raise DeliveryError(f"{target.service}: the deployment did not complete in "
                                f"{timeout_s:.0f} s")
        sleep(poll_s)


def smoke(url: str, api_key: str | None = None, timeout_s: float = 10) -> float:
    """The smoke test; returns the propensity answered. Raises DeliveryError on failure."""
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                          headers=headers) as client:
            ready = client.get("/ready")
            if ready.status_code != 200:
                raise DeliveryError(f"{url}/ready answered {ready.status_code}: "
                                    f"{ready.text[:200]}")
            answer = client.post("/v1/propensity", json=SMOKE_REQUEST)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if answer.status_code != 200:
        raise DeliveryError(f"{url}/v1/propensity answered {answer.status_code}: "
                            f"{answer.text[:200]}")
    propensity = answer.json().get("propensity")
    if not isinstance(propensity, int | float) or not 0 <= propensity <= 1:
        raise DeliveryError(f"{url}/v1/propensity answered no propensity: {answer.text[:200]}")
    return float(propensity)


def deploy(ecs: Any, target: Service, image: str, check: Callable[[], object],
           timeout_s: float = 900, poll_s: float = 10,
           sleep: Callable[[float], None] = time.sleep) -> Deployed:
    """Rolls the service onto `image`, then `check()` (the smoke test); on a failure of
    either, back onto the task definition it ran before."""
    previous = current_task_definition(ecs, target)
    family = ecs.describe_task_definition(taskDefinition=previous)["taskDefinition"]["family"]
    newest = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    registered = ecs.register_task_definition(**with_image(newest, target.container, image))
    current = registered["taskDefinition"]["taskDefinitionArn"]
    log.info("%s: %s -> %s (%s)", target.service, previous, current, image)
    ecs.update_service(cluster=target.cluster, service=target.service,
                       taskDefinition=current)
    try:
        wait_for_rollout(ecs, target, timeout_s, poll_s, sleep)
        check()
    except Exception as exc:
        log.error("%s: %s; rolling back to %s", target.service, exc, previous)
        ecs.update_service(cluster=target.cluster, service=target.service,
                           taskDefinition=previous)
        wait_for_rollout(ecs, target, timeout_s, poll_s, sleep)
        raise DeliveryError(f"{target.service}: {exc}; rolled back to {previous}") from exc
    return Deployed(previous, current)
