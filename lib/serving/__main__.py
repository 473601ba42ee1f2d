"""`python -m lib.serving ...`: run the model service (see lib.serving.app)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lib.serving.app import serve
from lib.serving.settings import ServingSettings
from lib.serving.workers import serve_workers


def main(argv: list[str] | None = None) -> None:
    """`python -m lib.serving ...`; the admin token is read from SERVING_ADMIN_TOKEN only."""
    # an option not given (None) keeps ServingSettings' default: the URIs and models/ are then
    # the working directory's project's (lib.settings); given, the service runs from anywhere
    parser = argparse.ArgumentParser(prog="python -m lib.serving", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-name")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else mlflow.db")
    parser.add_argument("--store-url", help="default: predictions.db in the project")
    parser.add_argument(
        "--champion-alias",
        help="the alias served as champion (e.g. 'staging' for a staging instance)",
    )
    parser.add_argument("--target-threshold", type=float)
    parser.add_argument("--max-batch", type=int)
    parser.add_argument("--batch-wait-ms", type=float)
    parser.add_argument(
        "--registry-check-seconds",
        type=float,
        help="how often /health's view of the champion alias is refreshed (0: never)",
    )
    parser.add_argument(
        "--registry-start-seconds",
        type=float,
        help="how long start-up waits for the registry before serving models/production",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="the project's models/ (production/ is served when the registry is down at start)",
    )
    parser.add_argument(
        "--no-compile",
        dest="compile_models",
        action="store_false",
        help="serve the plain sklearn path",
    )
    parser.add_argument(
        "--routing-poll-seconds",
        type=float,
        help="how often the shared routing is read and the heartbeat written (default 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="replica processes on this port (each also on port + 1 + i); default 1",
    )
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    args = vars(parser.parse_args(argv))
    host, port, level = args.pop("host"), args.pop("port"), args.pop("log_level")
    workers = args.pop("workers")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ServingSettings(**{k: v for k, v in args.items() if v is not None})
    if workers > 1:
        serve_workers(settings, host, port, workers)
    else:
        serve(settings, host, port)


if __name__ == "__main__":
    main()
