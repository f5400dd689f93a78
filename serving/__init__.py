"""The scorer: an async FastAPI service that the shop's backend calls during a session; it
reads the session's, user's and product's online features from Redis (Feast's format) and
returns a calibrated purchase propensity. On floor 3 of the package (propensity/__init__.py):
it imports the core and Feast's definitions only, and its image carries nothing else.

- server.py      the process: uvicorn, `python -m propensity.serving` (__main__.py)
- app.py         the ASGI app: endpoints, request timer, load shedding, API key, body limit,
                 model hot swap, degraded answers past the read deadline
- limit.py       the load shedder's concurrency limit, which follows measured latency
- online.py      the online-feature reads (one pipelined round trip; or Feast's async read)
- redis_wire.py  the multiplexed hiredis connection those reads use
- scoring.py     features -> model row -> propensity and explanation
"""

# The shop's p99 budget for one propensity call, end to end; tests and the chaos suite hold
# every answer to it (the scorer aims far lower, see README).
LATENCY_BUDGET_MS = 100.0
# The most requests one call of /v1/propensity/batch may carry (the API's contract; the
# demo's shop backend batches by it).
MAX_BATCH = 100
