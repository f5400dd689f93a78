"""The scorer's process: uvicorn serving the app (app.py) on the event loop and parser it is
tuned for. `python -m propensity.serving` (the scorer image's command) and the operator's
`propensity serve` read the same arguments.
"""

from __future__ import annotations

import argparse

from propensity.commandline import PORT, POSITIVE_INT
from propensity.settings import Settings

# How long the scorer keeps an idle connection open: longer than its clients keep one (the ALB's
# idle timeout, 60 s, terraform/scorer.tf; httpx's 5 s), so a client never sends a request on a
# connection the scorer is closing at that moment (uvicorn's default, 5 s, raced httpx's 5 s:
# the chaos soak saw those requests fail beside a CPU hog, and behind an ALB they are 502s).
KEEP_ALIVE_S = 65


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=PORT, default=8000)
    parser.add_argument("--workers", type=POSITIVE_INT, default=1,
                        help="processes (each loads the model and reads Redis itself)")


def serve(host: str, port: int, workers: int = 1) -> int:
    import uvicorn

    Settings()  # fail here, with the setting's name, rather than in each worker
    uvicorn.run("propensity.serving.app:app_from_environment", factory=True, host=host,
                port=port, workers=workers, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", timeout_graceful_shutdown=5,
                timeout_keep_alive=KEEP_ALIVE_S)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m propensity.serving",
                                     description="the scorer: FastAPI on uvicorn")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.workers)
