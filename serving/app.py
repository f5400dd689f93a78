"""The scorer: an async FastAPI app that the shop's backend calls during a session.

- `POST /v1/propensity`: one session; `POST /v1/propensity/batch`: up to 100.
- `GET /health` (alive), `GET /ready` (a model is loaded and the online store answers),
  `GET /metrics` (Prometheus).
It serves the model store's rollout (propensity/rollout.py): the champion, and a challenger in
canary (it answers for its share of the shoppers) or in shadow (it scores beside the champion,
logged, never answered). Every answer says its variant and goes to the prediction log.
A failure of the online store never fails a request: past the read deadline, or when Redis
errs, the answer is computed from what is known (features missing) with `degraded: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from propensity import aws, model_store, rollout
from propensity.cloudwatch import EMF_MAX_VALUES
from propensity.model import PropensityModel
from propensity.rollout import CHALLENGER, CHAMPION, SHADOW, Challenger
from propensity.serving import LATENCY_BUDGET_MS, MAX_BATCH, scoring
from propensity.serving.emf import EmfReporter, Reservoir
from propensity.serving.limit import AdaptiveLimit, LimitChange
from propensity.serving.online import Entities, FeastFeatures, Found, RedisFeatures, empty
from propensity.serving.prediction_log import LogMetrics, Prediction, PredictionLog, new_request_id
from propensity.settings import Settings

log = logging.getLogger("propensity.serving")

# The concurrency limit never falls below this (unless the maximum is lower): a few requests
# in progress keep the CPU busy while others wait for Redis.
MIN_IN_PROGRESS = 4
LAG_PROBE_S = 0.005
GIL_SWITCH_S = 0.001
API_KEY_HEADER = "X-API-Key"
_ERRORS = {401: {"description": "missing or wrong X-API-Key (when a key is configured)"},
           413: {"description": "request body too large"},
           429: {"description": "overloaded: too many requests in progress, retry shortly"},
           503: {"description": "no model loaded yet"}}
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
FEATURE_AGE_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)


class PropensityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(min_length=1, max_length=128, description="REES46 user_session")
    user_id: int | None = Field(None, ge=0, lt=2**63, description="the shopper, when known")
    product_id: int | None = Field(None, ge=0, lt=2**63, description="the product on the page")
    explain: bool = Field(False, description="add the top feature contributions")
    as_of: AwareDatetime | None = Field(
        None, description="the moment to score at (epoch seconds or ISO time with zone; "
        "default: now), for replays whose events keep their recorded times: it sets the clock "
        "of the request-time features and of feature_age_seconds, while the features are the "
        "store's latest")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[PropensityRequest] = Field(min_length=1, max_length=MAX_BATCH)


class Contribution(BaseModel):
    feature: str
    value: float | None
    contribution: float


class PropensityResponse(BaseModel):
    request_id: str = Field(description="this answer's id in the prediction log")
    session_id: str
    propensity: float = Field(ge=0, le=1, description="calibrated purchase probability")
    model_version: str
    variant: str = Field(description=f"which model answered: {CHAMPION} (the store's latest) "
                         f"or {CHALLENGER} (a canary's, for the shoppers in its share)")
    degraded: bool = Field(description="the online store did not answer in time")
    feature_age_seconds: float | None = Field(
        description="age of the freshest session feature at the moment scored (None: "
        "unknown session)")
    explanation: list[Contribution] | None = None


class BatchResponse(BaseModel):
    results: list[PropensityResponse]


class Metrics:
    """The scorer's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request = Histogram("propensity_request_seconds", "request latency",
                                 ["endpoint"], buckets=_BUCKETS, registry=self.registry)
        self.feature_read = Histogram("propensity_feature_read_seconds",
                                      "online feature read latency", buckets=_BUCKETS,
                                      registry=self.registry)
        self.model = Histogram("propensity_model_seconds", "model latency per request",
                               buckets=_BUCKETS, registry=self.registry)
        self.degraded = Counter("propensity_degraded_total",
                                "answers computed without the online store", ["reason"],
                                registry=self.registry)
        self.errors = Counter("propensity_errors_total", "requests that failed",
                              ["endpoint"], registry=self.registry)
        self.shed = Counter("propensity_shed_total",
                            "scoring requests refused with 429 (too many in progress)",
                            registry=self.registry)
        self.limit = Gauge("propensity_concurrency_limit",
                           "scoring requests allowed in progress at once (it follows latency)",
                           registry=self.registry)
        self.limit_changes = Counter("propensity_concurrency_limit_changes_total",
                                     "changes of the concurrency limit", ["direction"],
                                     registry=self.registry)
        self.loop_lag = Histogram("propensity_event_loop_lag_seconds",
                                  "how late the event loop runs a timer (every request waits "
                                  "about as long before it is read)", buckets=_BUCKETS,
                                  registry=self.registry)
        self.model_version = Gauge("propensity_model_info", "the loaded models (1), by variant",
                                   ["version", "variant"], registry=self.registry)
        self.answers = Counter("propensity_answers_total", "answers given, by variant "
                               f"({SHADOW}: scores logged beside the champion's)", ["variant"],
                               registry=self.registry)
        self.gc_pause = Histogram("propensity_gc_pause_seconds",
                                  "garbage-collector pauses (every request waits them out)",
                                  ["generation"], buckets=_BUCKETS, registry=self.registry)
        self.responses = Counter("propensity_responses_total",
                                 "scoring responses by status code (429s: propensity_shed_total)",
                                 ["code"], registry=self.registry)
        self.degraded_answers = Counter("propensity_degraded_answers_total",
                                        "answers computed without the online store's features",
                                        registry=self.registry)
        self.feature_age = Histogram("propensity_session_feature_age_seconds",
                                     "age of the session's features at the moment scored",
                                     buckets=FEATURE_AGE_BUCKETS, registry=self.registry)
        self.feature_age_samples = Reservoir(EMF_MAX_VALUES)  # for CloudWatch (emf.py)
        self._gc_started = 0.0
        self.log = LogMetrics(self.registry)

    def observe_feature_age(self, seconds: float) -> None:
        self.feature_age.observe(seconds)
        self.feature_age_samples.add(seconds)

    def watch_gc(self) -> Callable[[str, dict], None]:
        """Times every collection of this process (gc.callbacks), by generation; returns the
        callback, for its removal."""
        def timed(phase: str, info: dict) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            else:
                self.gc_pause.labels(str(info["generation"])).observe(
                    time.perf_counter() - self._gc_started)

        gc.callbacks.append(timed)
        return timed


@dataclass(frozen=True)
class Serving:
    """The models answering now: the champion, and the challenger with its part, if any."""

    champion: PropensityModel
    challenger: PropensityModel | None = None
    plan: Challenger | None = None

    def answering(self, user_id: int | None, session_id: str) -> tuple[PropensityModel, str]:
        """The model that answers this shopper, and its variant."""
        if self.challenger is not None and rollout.answers_as_challenger(
                self.plan, rollout.shopper_key(user_id, session_id)):
            return self.challenger, CHALLENGER
        return self.champion, CHAMPION

    @property
    def shadow(self) -> PropensityModel | None:
        return self.challenger if self.plan is not None and self.plan.mode == SHADOW else None

    def describe(self) -> str:
        plan = self.plan
        return f"{self.champion.version} (champion)" + (
            "" if plan is None else f", {plan.version} in {plan.mode}"
            + (f" for {plan.share:.1%}" if plan.share else ""))

    def variants(self) -> dict[str, str]:
        """version -> variant, for the metrics."""
        out = {self.champion.version: CHAMPION}
        if self.challenger is not None and self.plan is not None:
            out[self.challenger.version] = SHADOW if self.plan.mode == SHADOW else CHALLENGER
        return out


class ModelHolder:
    """The models served; `refresh` follows the store's rollout (a new `latest`, a challenger
    started, resized or ended) and swaps in what it loaded as one reference assignment, so a
    request sees the old models or the new ones, never a mix, and never waits for a load."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.serving: Serving | None = None

    async def refresh(self) -> None:
        plan = await asyncio.to_thread(model_store.rollout, self.settings)
        current = self.serving
        if plan.champion is None or (current is not None and (
                current.champion.version, current.plan) == (plan.champion, plan.challenger)):
            return
        loaded = {} if current is None else {
            m.version: m for m in (current.champion, current.challenger) if m is not None}

        async def model(version: str) -> PropensityModel:
            return loaded.get(version) or await asyncio.to_thread(
                model_store.load, self.settings, version)

        serving = Serving(await model(plan.champion),
                          await model(plan.challenger.version) if plan.challenger else None,
                          plan.challenger)
        self.serving = serving
        self.metrics.model_version.clear()
        for version, variant in serving.variants().items():
            self.metrics.model_version.labels(version, variant).set(1)
        log.info("serving %s", serving.describe())

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            try:
                await self.refresh()
            except Exception:  # the store may be briefly unreachable: keep serving
                log.exception("model refresh failed; keeping %s",
                              self.serving.describe() if self.serving else "no model")


class BodyLimit:
    """Refuses request bodies above a size with 413 before the app reads them (pure ASGI,
    so it costs nothing on the hot path)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await _error(send, 413, f"request body above {self.max_bytes} bytes")
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"request body above {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)


class ApiKey:
    """When a key is configured, scoring requests without it in X-API-Key get 401; the
    comparison takes constant time (pure ASGI: no per-request dependency resolution)."""

    def __init__(self, app: Any, key: bytes) -> None:
        self.app = app
        self.key = key
        self.header = API_KEY_HEADER.lower().encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.key and scope["type"] == "http" and scope["path"] in SCORING_PATHS:
            given = next((v for k, v in scope.get("headers", ()) if k == self.header), b"")
            if not hmac.compare_digest(given, self.key):
                return await _error(send, 401, "missing or wrong API key",
                                    [(b"www-authenticate", b"ApiKey")])
        return await self.app(scope, receive, send)


SCORING_PATHS = {"/v1/propensity": "propensity", "/v1/propensity/batch": "batch"}


class LoadShedder:
    """At most `limit.limit` scoring requests in progress, a limit that follows their measured
    latency and the event loop's lag (serving/limit.py); one more gets 429 with Retry-After at
    once (pure ASGI, before any parsing), so overload costs the shop a fast "not now" rather
    than a queue in which every request grows slow."""

    def __init__(self, app: Any, limit: AdaptiveLimit, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.in_progress = 0
        metrics.limit.set(limit.limit)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in SCORING_PATHS:
            return await self.app(scope, receive, send)
        if not self.limit.admits(self.in_progress):
            self.metrics.shed.inc()
            return await _error(send, 429, "overloaded: retry shortly", [(b"retry-after", b"1")])
        self.in_progress += 1
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
            now = time.perf_counter()
            self.record(self.limit.observe(now - started, now))

    def record(self, change: LimitChange | None) -> None:
        if change is not None:
            self.metrics.limit.set(change.limit)
            self.metrics.limit_changes.labels(change.direction).inc()

    async def watch_loop_lag(self) -> None:
        """Sleeps LAG_PROBE_S over and over and measures how late it wakes: the event loop's
        lag, for the limit and the metrics (200 wake-ups a second cost a few microseconds
        each); it also closes the limit's windows while no request comes."""
        while True:
            due = time.perf_counter() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            now = time.perf_counter()
            lag = max(0.0, now - due)
            self.metrics.loop_lag.observe(lag)
            self.record(self.limit.observe_lag(lag, now))


class RequestTimer:
    """Request latency per scoring endpoint, and 5xx answers as errors (pure ASGI)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        endpoint = SCORING_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def watched(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.responses.labels(str(message["status"])).inc()
                if message["status"] >= 500:
                    self.metrics.errors.labels(endpoint).inc()
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self.metrics.request.labels(endpoint).observe(time.perf_counter() - started)


def _json(body: Any, status: int = 200) -> Response:
    """orjson straight to bytes: the answers are plain dicts built here, so they skip
    FastAPI's response-model validation (the models document the API)."""
    return Response(orjson.dumps(body), status, media_type="application/json")


async def _error(send: Callable, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> Any:
    settings = settings or Settings()
    metrics = Metrics()
    holder = ModelHolder(settings, metrics)
    api_key = (settings.serving_api_key.get_secret_value().encode()
               if settings.serving_api_key else b"")
    deadline_s = settings.serving_deadline_ms / 1000
    limit = AdaptiveLimit(LATENCY_BUDGET_MS / 1000, initial=settings.serving_initial_in_progress,
                          minimum=min(MIN_IN_PROGRESS, settings.serving_max_in_progress),
                          maximum=settings.serving_max_in_progress)
    state: dict[str, Any] = {}
    predictions = prediction_log(settings, metrics.log) if settings.prediction_log else None
    answered = {variant: metrics.answers.labels(variant) for variant in rollout.VARIANTS}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Clients bind to this event loop, so they are made here, not at import.
        state["reader"] = (FeastFeatures(settings) if settings.serving_feast_async
                           else RedisFeatures(settings))
        try:
            await holder.refresh()
        except Exception:
            log.exception("no model at start-up; /ready stays 503 until one loads")
        # Everything loaded so far (Feast, LightGBM, the model) lives for good: out of the
        # collector's sight, so a full collection does not stall requests for tens of ms.
        gc.collect()
        gc.freeze()
        gc_timer = metrics.watch_gc()
        poller = asyncio.create_task(holder.poll())
        lag_watch = asyncio.create_task(shedder.watch_loop_lag())  # the app's outer layer
        emf = (asyncio.create_task(EmfReporter(settings.metrics_namespace, metrics).run())
               if settings.metrics_namespace else None)
        log_writer = None
        if predictions:
            # The log's writer thread converts and uploads while requests run, and a thread
            # holding the GIL keeps the event loop waiting up to the switch interval (5 ms by
            # default): 1 ms bounds that wait.
            sys.setswitchinterval(GIL_SWITCH_S)
            log_writer = asyncio.create_task(predictions.run())
        yield
        if predictions:
            await predictions.close(log_writer)
        gc.callbacks.remove(gc_timer)
        if emf is not None:  # its last line, then it ends
            emf.cancel()
            await asyncio.gather(emf, return_exceptions=True)
        poller.cancel()
        lag_watch.cancel()
        await state["reader"].close()

    app = FastAPI(title="propensity scorer", version="1", lifespan=lifespan)

    async def read(entities: list[Entities]) -> tuple[list[Found], bool]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):  # no extra task, unlike wait_for
                found = await state["reader"].read(entities)
            return found, False
        except TimeoutError:
            metrics.degraded.labels("timeout").inc()
        except Exception as error:  # Redis down, connection reset: answer without it
            metrics.degraded.labels(type(error).__name__).inc()
        finally:
            metrics.feature_read.observe(time.perf_counter() - started)
        return [empty() for _ in entities], True

    def answer(serving: Serving, request: PropensityRequest, found: Found,
               degraded: bool, answered_at: datetime) -> dict[str, Any]:
        as_of = request.as_of or answered_at
        values = scoring.model_values(found.values, as_of)
        model, variant = serving.answering(request.user_id, request.session_id)
        propensity, row = scoring.score(model, values)
        updated = found.session_updated_at()
        age = None if updated is None else max(0.0, (as_of - updated).total_seconds())
        out = {"request_id": new_request_id(), "session_id": request.session_id,
               "propensity": propensity, "model_version": model.version, "variant": variant,
               "degraded": degraded, "feature_age_seconds": age}
        if degraded:
            metrics.degraded_answers.inc()
        if age is not None:
            metrics.observe_feature_age(age)
        if request.explain:
            out["explanation"] = scoring.explain(model, row)
        answered[variant].inc()
        logged = [(model, variant, propensity, row)]
        if serving.shadow is not None:
            answered[SHADOW].inc()
            logged.append((serving.shadow, SHADOW, *scoring.score(serving.shadow, values)))
        if predictions:
            for scored_by, as_variant, score, scored_row in logged:
                predictions.offer(Prediction(
                    out["request_id"], answered_at.timestamp(), as_of.timestamp(),
                    request.session_id, request.user_id, request.product_id, scored_by.version,
                    as_variant, score, degraded, scored_row))
        return out

    async def score(requests: list[PropensityRequest]) -> list[dict[str, Any]]:
        serving = holder.serving  # the same models for the whole request, even if swapped now
        if serving is None:
            raise HTTPException(503, "no model loaded yet")
        found, degraded = await read([Entities(r.session_id, r.user_id, r.product_id)
                                      for r in requests])
        started = time.perf_counter()
        now = datetime.now(UTC)
        results = [answer(serving, r, f, degraded, now)
                   for r, f in zip(requests, found, strict=True)]
        metrics.model.observe(time.perf_counter() - started)
        return results

    @app.post("/v1/propensity", response_model=PropensityResponse, responses=_ERRORS)
    async def propensity(request: PropensityRequest) -> Response:
        (result,) = await score([request])
        return _json(result)

    @app.post("/v1/propensity/batch", response_model=BatchResponse, responses=_ERRORS)
    async def propensity_batch(batch: BatchRequest) -> Response:
        return _json({"results": await score(batch.requests)})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready")
    async def ready() -> Response:
        serving = holder.serving
        try:
            store_ok = await asyncio.wait_for(state["reader"].ping(), 0.5)
        except Exception:
            store_ok = False
        plan = serving.plan if serving else None
        body = {"model_version": serving.champion.version if serving else None,
                "challenger": plan.to_json() if plan else None,
                "online_store": "answering" if store_ok else "not answering"}
        return _json(body, 200 if serving and store_ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.holder = holder
    gated = ApiKey(BodyLimit(app, settings.serving_max_body_bytes), api_key)
    shedder = LoadShedder(gated, limit, metrics)
    return RequestTimer(shedder, metrics)


def prediction_log(settings: Settings, metrics: LogMetrics) -> PredictionLog:
    """The log writing to settings.predictions_uri through S3's put_object."""
    s3 = aws.client("s3", settings)
    bucket, prefix = aws.s3_location(settings.predictions_uri)

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    return PredictionLog(put, prefix, metrics,
                         settings.prediction_log_queue, settings.prediction_log_batch_rows,
                         settings.prediction_log_flush_s)


def app_from_environment() -> Any:
    """uvicorn's factory (`propensity.serving.app:app_from_environment`, with --factory)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings())
