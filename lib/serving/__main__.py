"""`python -m lib.serving ...`: run the model service (see lib.serving.app)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lib.serving.app import serve
from lib.serving.settings import ServingSettings


def main(argv: list[str] | None = None) -> None:
    """`python -m lib.serving ...`; the admin token is read from SERVING_ADMIN_TOKEN only."""
    # built without the project-dependent defaults: a service given its URIs and models/ runs
    # from any directory; the ones left out are the working directory's project's (lib.settings)
    defaults = ServingSettings(tracking_uri="", store_url="", models_dir=Path())
    parser = argparse.ArgumentParser(prog="python -m lib.serving", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else mlflow.db")
    parser.add_argument("--store-url", help="default: predictions.db in the project")
    parser.add_argument(
        "--champion-alias",
        default=defaults.champion_alias,
        help="the alias served as champion (e.g. 'staging' for a staging instance)",
    )
    parser.add_argument("--target-threshold", type=float, default=defaults.target_threshold)
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms)
    parser.add_argument(
        "--registry-check-seconds",
        type=float,
        default=defaults.registry_check_seconds,
        help="how often /health's view of the champion alias is refreshed (0: never)",
    )
    parser.add_argument(
        "--registry-start-seconds",
        type=float,
        default=defaults.registry_start_seconds,
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
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    args = vars(parser.parse_args(argv))  # the other options are ServingSettings' fields
    host, port, level = args.pop("host"), args.pop("port"), args.pop("log_level")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(ServingSettings(**{k: v for k, v in args.items() if v is not None}), host, port)


if __name__ == "__main__":
    main()
