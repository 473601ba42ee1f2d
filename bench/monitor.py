"""How fast does the monitor catch a production model gone bad, with the default thresholds?

    python bench/monitor.py                  # 20 labeled requests/s, default MonitorConfig
    python bench/monitor.py --rate 5 --bad-share 1.0

In a temporary folder: an MLflow store with two registered versions (champion + previous), the
real model service on 127.0.0.1, and a replayer that sends held-out apps with feedback. From the
first bad feedback on (labels flipped for `--bad-share` of the requests), the monitor's checks
run on the growing window after every `--check-every` requests; the bench prints how many labeled
requests it took until the rollback verdict, what that is in seconds at the stated request rate,
and how long the rollback itself took (registry, models/, service reload). Numbers only.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20.0, help="labeled requests per second")
    parser.add_argument(
        "--bad-share",
        type=float,
        default=1.0,
        help="share of requests whose feedback contradicts the model's truth",
    )
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--max-requests", type=int, default=3000)
    args = parser.parse_args()

    import httpx
    import mlflow

    from lib import registry
    from lib.config_sections import MonitorConfig
    from lib.delivery import operations, replayer
    from lib.delivery import releases as deployments
    from lib.delivery.service_process import ServiceProcess
    from lib.pipeline import data, synth, training
    from lib.serving.prediction_store import PredictionReader
    from lib.watch import monitoring

    root = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    os.chdir(root)
    os.environ["PYTHONPATH"] = str(PROJECT)
    os.environ["SERVING_ADMIN_TOKEN"] = token = "bench-token"
    os.environ["SERVING_FEEDBACK_TOKEN"] = "bench-feedback-token"  # the service and replayer
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store_url = f"sqlite:///{root / 'predictions.db'}"
    client = registry.connect(uri, "bench-monitor")
    apps = data.read_apps(synth.write_default_dataset(root / "apps.csv", n=10_000)).apps
    labeled = training.labeled_data(apps, 4.0)
    train_idx, test_idx = training.holdout_split(labeled.keys, labeled.y, 0.2, 42)
    versions = []
    for seed in (1, 2):
        result = training.train_candidate(
            "random_forest", labeled, train_idx, test_idx, training.TrainingSettings(3, seed)
        )
        with mlflow.start_run():
            mlflow.log_metrics({f"holdout_{k}": v for k, v in result.holdout.items()})
            info = registry.log_candidate_model(result.model, labeled.X.head(5))
        versions.append(registry.register(client, info.model_uri, "bench", {}))
    for v in versions:
        deployments.promote(client, "bench", v, root / "models", root / "logs", reason="bench")
    champion = versions[-1]
    reference = client.get_run(registry.version_run_id(client, "bench", champion)).data.metrics
    holdout = replayer.holdout_apps(apps, 4.0, 0.2, 42)
    records = [(replayer.app_request(r), float(r["rating"])) for _, r in holdout.iterrows()]
    random.Random(0).shuffle(records)
    cfg = MonitorConfig()
    service = ServiceProcess(root, "bench", uri, store_url, admin_token=token)
    with service, httpx.Client() as http:
        store = PredictionReader(store_url)  # reads what the service writes
        honest = replayer.Replayer(service.url, records, rate=0)
        flipped = replayer.Replayer(service.url, records, rate=0, label_flip=True)
        rng = random.Random(1)
        started = time.time()
        verdict_at = None
        check_seconds = 0.0
        for n in range(1, args.max_requests + 1):
            body, rating = records[n % len(records)]
            (flipped if rng.random() < args.bad_share else honest).send_one(http, body, rating)
            if n % args.check_every:
                continue
            t = time.perf_counter()
            report = monitoring.evaluate_health(store.window(started), reference, cfg=cfg)
            check_seconds += time.perf_counter() - t
            if report.rollback:
                verdict_at = n
                break
        if verdict_at is None:
            print(f"no rollback verdict after {args.max_requests} labeled requests")
            return
        t = time.perf_counter()
        operations.manual_rollback(
            client,
            "bench",
            root / "models",
            root / "logs",
            f"monitor: {report.rollback_reason}",
            service.url,
        )
        rollback_seconds = time.perf_counter() - t
        served = http.post(f"{service.url}/predict", json=records[0][0]).json()["model_version"]
    checks = verdict_at // args.check_every
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"defaults: degradation {cfg.degradation}, min_feedback {cfg.min_feedback}, "
        f"alpha {cfg.alpha}; bad feedback share {args.bad_share:.0%}"
    )
    print(f"reference (validation) accuracy: {reference['holdout_accuracy']:.3f}")
    print(f"labeled requests from the first bad feedback to the rollback verdict: {verdict_at}")
    print(f"at {args.rate:g} labeled requests/s: {verdict_at / args.rate:.1f} s of traffic")
    print(f"monitor checks: {checks} runs, {check_seconds / checks * 1000:.0f} ms each")
    print(f"rollback (registry + models/ + service reload): {rollback_seconds:.2f} s")
    print(
        f"time to completed rollback at {args.rate:g} req/s: "
        f"{verdict_at / args.rate + check_seconds / checks + rollback_seconds:.1f} s; "
        f"the service now answers with v{served} (was v{champion})"
    )
    print(f"reason: {report.rollback_reason}")


if __name__ == "__main__":
    main()
