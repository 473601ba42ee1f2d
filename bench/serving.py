"""The model service against `mlflow models serve` of the same champion, single-row requests.

    python bench/serving.py                      # 10 s per cell, concurrency 1, 8 and 32
    python bench/serving.py --duration 5 --concurrency 1,32 --loadgen python
    python bench/serving.py --request-ids --loadgen python   # each request names its own id

Works in a temporary directory (MLflow store, artifacts, prediction store; removed at the end
unless --keep): trains the champion the pipeline would produce on the generated default data
(`synth.generate_apps(10000)`): `training.train_candidate(<family>, ...)` on the identity-stable
holdout split, so the model is `FixedThresholdClassifier(FrozenEstimator(stack or calibrated
stack))` with the derived features and the name text model (default family
forest_and_boosting, the real data's champion; `--model hist_gradient_boosting|random_forest|
logistic_regression` for the others, or
`--model legacy-rf` for the 300-tree random forest Pipeline served before the new features, to
compare shapes). It registers it with alias `champion`, then starts, on 127.0.0.1:

* our service: `python -m lib.serving` (single process, micro-batching, prediction store on);
* MLflow's: `mlflow models serve -m models:/<name>@champion --env-manager local` (its default of
  one uvicorn worker).

Each server gets the same apps, one per request: ours as a raw Play Store object on `/predict`,
MLflow's as `{"dataframe_split": ...}` of the model inputs on `/invocations`. The load comes from
`wrk` with a Lua script (apt-get install wrk) or, without it, from a Python asyncio + httpx load
generator in another process. `--request-ids` sends a new X-Request-ID with every request to
ours, as the replayer does (the service then checks that the id was not used before; without
it the service makes up an id it need not check). Prints requests/s, p50 and p99 per server and
concurrency, the
ratios the issue asks for, and the in-process floor of one predict call (probabilities and labels)
for 1 and 1,000 rows: scikit-learn's model against the service's compiled predictor.
Numbers only, no assertions: the machine may be shared, and the load generator runs on it too.

    python bench/serving.py --shadow-cost --rounds 3 --duration 5 --concurrency 1,8

measures instead what shadow scoring costs our service (no MLflow server): the champion is
registered a second time as the canary (a canary of the same family costs the same per
prediction), and one service is measured in turn with no canary (nothing shadow-scored), a
canary at weight 5 (every answer scored by the other variant in the shadow) and a canary at
weight 0 (the `shadow` step: the champion answers all, the canary scores all), set with
PUT /admin/routing between measurements, in rotating order per round; after each one the shadow
queue is let drain. Prints every measurement, then the median of each configuration and its
ratio to no canary, with the shadow scores made and dropped.

    python bench/serving.py --replicas 1,2,3 --concurrency 1,8,32,64 --loadgen wrk

measures instead our service scaled out on this machine: three replicas (`python -m
lib.serving`, one process each, their own ports, one prediction store: a throwaway PostgreSQL
when its binaries are installed (apt-get install postgresql), else one SQLite file) behind a
real nginx (apt-get install nginx wrk), pointed in turn at 1, 2 and 3 of them (reloaded, not
restarted), plus one replica addressed directly (what nginx costs). Rotating order per round;
prints every measurement, then the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

MODEL_NAME = "bench-serving"

WRK_SCRIPT = """
local bodies = {%(bodies)s}
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  return wrk.format("POST", "%(path)s", nil, bodies[(counter %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%.1f %%.1f %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _median_ms(fn: Any, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# --------------------------------------------------------------------------------- set-up


MODELS = (
    "forest_and_boosting",
    "hist_gradient_boosting",
    "random_forest",
    "logistic_regression",
    "legacy-rf",
)


def _legacy_forest(trees: int, seed: int) -> Any:
    """The champion before the derived features: Pipeline(ColumnTransformer, 300-tree forest).

    The old preprocessing on the old eight columns (categories, skewed numbers, days); the
    other columns of today's input frame are dropped by its ColumnTransformer.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    from lib.pipeline import features

    model = RandomForestClassifier(
        n_estimators=trees, min_samples_leaf=3, max_features="sqrt", n_jobs=-1, random_state=seed
    )  # as lib.pipeline.training built it at 20a99b5
    return Pipeline([("features", features.preprocessor("tree", groups=())), ("model", model)])


def train_and_register(
    work: Path, n_apps: int, trees: int, model: str = "forest_and_boosting", folds: int = 5
) -> dict[str, Any]:
    """The champion as the pipeline would make it, registered in `work`."""
    import mlflow
    from mlflow import MlflowClient
    from threadpoolctl import threadpool_limits

    from lib import registry
    from lib.pipeline import data, synth, training

    uri = f"sqlite:///{work}/mlflow.db"
    MlflowClient(uri).create_experiment("bench", artifact_location=(work / "artifacts").as_uri())
    client = registry.connect(uri, "bench")
    raw = synth.generate_apps(n_apps)
    raw.to_csv(work / "apps.csv", index=False)
    apps = data.read_apps(work / "apps.csv").apps
    labeled = training.labeled_data(apps, 4.0)
    started = time.perf_counter()
    if model == "legacy-rf":
        pipe = _legacy_forest(trees, 42).fit(labeled.X, labeled.y)
        training.for_inference(pipe)  # n_jobs=1, as the pipeline registers it
        detail = "legacy 300-tree forest" if trees == 300 else f"legacy {trees}-tree forest"
    else:
        train_idx, test_idx = training.holdout_split(labeled.keys, labeled.y, 0.2, 42)
        with threadpool_limits(1):  # OpenMP fits crawl on a busy shared machine
            result = training.train_candidate(
                model, labeled, train_idx, test_idx, training.TrainingSettings(folds, 42, trees)
            )
        pipe = result.model
        detail = ", ".join(
            f"{k}={result.params[k]}" for k in ("calibration", "threshold", "feature_groups")
        )
    fit_s = time.perf_counter() - started
    with mlflow.start_run():
        info = registry.log_candidate_model(pipe, labeled.X)
    version = registry.register(client, info.model_uri, MODEL_NAME, {"bench": "serving"})
    registry.set_alias(client, MODEL_NAME, "champion", version)
    mlflow.set_tracking_uri(None)
    return {
        "uri": uri, "pipe": pipe, "raw": raw, "apps": apps, "fit_s": fit_s, "detail": detail,
    }  # fmt: skip


def request_bodies(raw: Any, apps: Any, n: int = 64) -> tuple[list[str], list[str]]:
    """The same apps for both servers: raw objects for ours, dataframe_split for MLflow's."""
    from lib.pipeline import features

    X = features.model_inputs(apps)
    complete = X.notna().all(axis=1).to_numpy()  # JSON has no NaN: rows without missing values
    chosen = [i for i in range(len(apps)) if complete[i]][:n]
    ours, theirs = [], []
    raw_records = raw.to_dict("records")
    for i in chosen:
        source_row = int(apps["source_row"].iloc[i])  # 1-based row of the CSV = raw record
        record = {k: v for k, v in raw_records[source_row - 1].items() if v == v}
        ours.append(json.dumps(record))
        row = [v.item() if hasattr(v, "item") else v for v in X.iloc[i].tolist()]
        theirs.append(json.dumps({"dataframe_split": {"columns": list(X.columns), "data": [row]}}))
    return ours, theirs


def start(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("wb")
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ----------------------------------------------------------------------------- load


def run_wrk(url: str, path: str, bodies: list[str], conc: int, seconds: float, work: Path
            ) -> dict[str, float]:  # fmt: skip
    lua = ", ".join("[==[" + b + "]==]" for b in bodies)
    script = work / f"wrk_{abs(hash(path))}.lua"
    script.write_text(WRK_SCRIPT % {"bodies": lua, "path": path})
    threads = min(conc, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, duration_us, p50_us, p99_us, errors = line.split()[1:]
    return {
        "rps": int(requests) / (int(duration_us) / 1e6),
        "p50": float(p50_us) / 1000,
        "p99": float(p99_us) / 1000,
        "errors": int(errors),
        "requests": int(requests),
    }


async def _python_load(
    url: str, bodies: list[str], conc: int, seconds: float, request_ids: bool = False
) -> dict[str, Any]:
    import uuid

    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    headers = {"Content-Type": "application/json"}
    run = uuid.uuid4().hex[:12]  # this load's ids: a new prefix per measurement
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        stop_at = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop_at:
                body = bodies[i % len(bodies)]
                i += conc
                sent = {**headers, "X-Request-ID": f"{run}-{i}"} if request_ids else headers
                started = time.perf_counter()
                try:
                    resp = await client.post(url, content=body, headers=sent)
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(conc)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)] * 1000

    return {
        "rps": len(latencies) / elapsed,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "errors": errors,
        "requests": len(latencies),
    }


def run_python_load(url: str, path: str, bodies: list[str], conc: int, seconds: float, work: Path,
                    request_ids: bool = False) -> dict[str, float]:  # fmt: skip
    """The Python load generator in its own process, so it does not share our GIL."""
    body_file = work / "bodies.json"
    body_file.write_text(json.dumps(bodies))
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen-child", url + path, str(body_file), str(conc),
         str(seconds), "ids" if request_ids else "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def floor(pipe: Any, apps: Any) -> dict[str, Any]:
    """One predict call in-process: scikit-learn's model and the service's compiled form.

    Both give probabilities and labels (scikit-learn: predict_proba and predict, as the service
    needs both), on one OpenMP thread as the service's predict thread runs.
    """
    from threadpoolctl import threadpool_limits

    from lib.pipeline import features
    from lib.pipeline.training import for_inference
    from lib.serving.predictor import Predictor

    X = features.model_inputs(apps)
    rows = [tuple(r) for r in X.itertuples(index=False)]
    with threadpool_limits(1):
        predictor = Predictor(for_inference(pipe))
        fallback = Predictor(pipe, compile_model=False)

        def sk(n: int) -> None:
            pipe.predict_proba(X.iloc[:n])
            pipe.predict(X.iloc[:n])

        return {
            "sklearn_1": _median_ms(lambda: sk(1), 50),
            "sklearn_1000": _median_ms(lambda: sk(1000), 5),
            "fallback_1": _median_ms(lambda: fallback.predict(rows[:1]), 50),
            "ours_1": _median_ms(lambda: predictor.predict(rows[:1]), 300),
            "ours_1000": _median_ms(lambda: predictor.predict(rows[:1000]), 10),
            "kind": predictor.kind,
            "reason": predictor.reason,
        }


def batch_stats(url: str) -> str:
    """Mean rows per predict call in our service, from its /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ("model_batch_rows_sum", "model_batch_rows_count")
    }
    count = values.get("model_batch_rows_count", 0)
    return f"{values.get('model_batch_rows_sum', 0) / count:.1f}" if count else "-"


SHADOW_CONFIGS = {"no canary": None, "canary 5%": 5.0, "canary 0% (shadow step)": 0.0}
BENCH_TOKEN = "bench-admin-token"


def _set_canary(url: str, weight: float | None) -> None:
    import httpx

    change = {"canary_version": None} if weight is None else {"canary_version": "2",
                                                              "weight": weight}  # fmt: skip
    auth = {"Authorization": f"Bearer {BENCH_TOKEN}"}
    httpx.put(url + "/admin/routing", json=change, headers=auth, timeout=120).raise_for_status()


def _shadow_drained(url: str, timeout: float = 120) -> dict[str, Any]:
    """/health's shadow counts once nothing is queued for shadow scoring."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        shadow = httpx.get(url + "/health", timeout=30).json()["shadow"]
        if shadow["queued"] == 0 or time.monotonic() > deadline:
            return shadow
        time.sleep(0.2)


def shadow_cost(args: argparse.Namespace, levels: list[int], load: Any) -> None:
    """Our service with no canary, a canary at 5% and at 0%, alternated (see the docstring)."""
    import mlflow

    from lib import registry
    from lib.pipeline import features

    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    proc = None
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        print(f"training the {args.model} champion on {args.apps} generated apps ...", flush=True)
        champion = train_and_register(work, args.apps, args.trees, args.model, args.folds)
        client = registry.connect(champion["uri"], "bench")
        mlflow.set_tracking_uri(champion["uri"])
        with mlflow.start_run():  # the canary: the same model registered again (version 2)
            inputs = features.model_inputs(champion["apps"])
            info = registry.log_candidate_model(champion["pipe"], inputs)
        registry.register(client, info.model_uri, MODEL_NAME, {"bench": "canary"})
        mlflow.set_tracking_uri(None)
        bodies, _ = request_bodies(champion["raw"], champion["apps"])
        env = {**os.environ, "PYTHONPATH": str(PROJECT), "SERVING_ADMIN_TOKEN": BENCH_TOKEN}
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(
            [sys.executable, "-m", "lib.serving", "--host", "127.0.0.1", "--port", str(port),
             "--model-name", MODEL_NAME, "--tracking-uri", champion["uri"],
             "--store-url", f"sqlite:///{work}/predictions.db", "--log-level", "WARNING"],
            PROJECT, env, work / "ours.log",
        )  # fmt: skip
        wait_ready(proc, url + "/health", work / "ours.log")
        names = list(SHADOW_CONFIGS)
        for round_ in range(args.rounds):
            order = names[round_ % 3 :] + names[: round_ % 3]
            for conc in levels:
                for name in order:
                    _set_canary(url, SHADOW_CONFIGS[name])
                    load(url, "/predict", bodies, conc, args.warmup, work)
                    before = _shadow_drained(url)
                    r = load(url, "/predict", bodies, conc, args.duration, work)
                    after = _shadow_drained(url)
                    r["shadow_scored"] = after["scored"] - before["scored"]
                    r["shadow_dropped"] = after["dropped"] - before["dropped"]
                    results.setdefault((name, conc), []).append(r)
                    print(f"round {round_} {name:<24} c={conc}: {r['rps']:7.1f} req/s p50 "
                          f"{r['p50']:6.2f} ms p99 {r['p99']:6.2f} ms errors {r['errors']} "
                          f"shadow scored {r['shadow_scored']} dropped {r['shadow_dropped']} "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    _print_shadow_cost(results, levels)


def _print_shadow_cost(results: dict[tuple[str, int], list[dict[str, float]]],
                       levels: list[int]) -> None:  # fmt: skip
    print()
    print("| configuration | concurrency | requests/s | vs no canary | p50 ms | p99 ms | "
          "shadow scored | dropped |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for conc in levels:
        base = statistics.median(r["rps"] for r in results[("no canary", conc)])
        for name in SHADOW_CONFIGS:
            runs = results[(name, conc)]
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            scored = sum(r["shadow_scored"] for r in runs)
            dropped = sum(r["shadow_dropped"] for r in runs)
            print(f"| {name} | {conc} | {rps:.1f} | {rps / base:.0%} | {p50:.2f} | {p99:.2f} | "
                  f"{scored} | {dropped} |")  # fmt: skip


def _replica_store(stack: contextlib.ExitStack, work: Path) -> tuple[str, str]:
    """A throwaway PostgreSQL store when its binaries are here, else one SQLite file."""
    import pytest

    from tests.support.postgres import throwaway_postgres

    try:
        return stack.enter_context(throwaway_postgres()), "PostgreSQL"
    except (pytest.skip.Exception, pytest.fail.Exception, OSError, subprocess.SubprocessError):
        return f"sqlite:///{work}/predictions.db", "SQLite (PostgreSQL not installed)"


def replica_scaling(args: argparse.Namespace, levels: list[int], load: Any) -> None:
    """1, 2 and 3 replicas behind nginx, and one addressed directly (see the docstring)."""
    from tests.support.load_balancer import Nginx

    counts = sorted({int(c) for c in args.replicas.split(",")})
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    procs: list[subprocess.Popen] = []
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        try:
            print(f"training the {args.model} champion on {args.apps} generated apps ...",
                  flush=True)  # fmt: skip
            champion = train_and_register(work, args.apps, args.trees, args.model, args.folds)
            bodies, _ = request_bodies(champion["raw"], champion["apps"])
            store_url, store_kind = _replica_store(stack, work)
            ports = [_free_port() for _ in range(max(counts))]
            for i, port in enumerate(ports):
                env = {**os.environ, "PYTHONPATH": str(PROJECT), "SERVING_REPLICA_ID": f"r{i}"}
                env.pop("SERVING_ADMIN_TOKEN", None)
                procs.append(start(
                    [sys.executable, "-m", "lib.serving", "--host", "127.0.0.1", "--port",
                     str(port), "--model-name", MODEL_NAME, "--tracking-uri", champion["uri"],
                     "--store-url", store_url, "--log-level", "WARNING"],
                    PROJECT, env, work / f"replica{i}.log",
                ))  # fmt: skip
            for i, (proc, port) in enumerate(zip(procs, ports, strict=True)):
                wait_ready(proc, f"http://127.0.0.1:{port}/health", work / f"replica{i}.log")
            lb = stack.enter_context(Nginx(ports[:1]))
            configs = ["1 direct", *(f"{k} behind nginx" for k in counts)]
            for round_ in range(args.rounds):
                order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
                for conc in levels:
                    for name in order:
                        k = int(name.split()[0])
                        url = f"http://127.0.0.1:{ports[0]}" if "direct" in name else lb.url
                        if "direct" not in name:
                            lb.upstreams(ports[:k])
                        load(url, "/predict", bodies, conc, args.warmup, work)
                        r = load(url, "/predict", bodies, conc, args.duration, work)
                        results.setdefault((name, conc), []).append(r)
                        print(f"round {round_} {name:<18} c={conc:<3} {r['rps']:7.1f} req/s "
                              f"p50 {r['p50']:6.2f} ms p99 {r['p99']:6.2f} ms "
                              f"errors {r['errors']} load {os.getloadavg()[0]:.1f}",
                              flush=True)  # fmt: skip
        finally:
            for proc in procs:
                stop(proc)
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"machine: {os.cpu_count()} CPUs; store {store_kind}; nginx 1 worker; load from "
          f"{'wrk' if load is run_wrk else 'python asyncio+httpx'} on the same machine; "
          f"{args.duration:g} s per cell, {args.rounds} rounds (medians)")  # fmt: skip
    print()
    print("| replicas | concurrency | requests/s | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for conc in levels:
        for name in configs:
            runs = results[(name, conc)]
            med = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99")}
            print(f"| {name} | {conc} | {med['rps']:.1f} | {med['p50']:.2f} | {med['p99']:.2f} "
                  f"| {sum(r['errors'] for r in runs)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--trees", type=int, default=300, help="trees of a random forest")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="forest_and_boosting",
        help="the champion's family, or legacy-rf (the forest served before)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--request-ids",
        action="store_true",
        help="send a new X-Request-ID with each request to our service (python load generator)",
    )
    parser.add_argument(
        "--shadow-cost",
        action="store_true",
        help="measure shadow scoring's cost: no canary, canary at 5%% and at 0%% (see above)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (--shadow-cost, --replicas)")
    parser.add_argument(
        "--replicas",
        help="measure 1..N replicas behind nginx instead, e.g. 1,2,3 (see above)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    if args.request_ids and use_wrk:
        parser.error("--request-ids is implemented by the python load generator: --loadgen python")
    load = run_wrk if use_wrk else run_python_load
    if args.shadow_cost:
        shadow_cost(args, levels, load)
        return
    if args.replicas:
        replica_scaling(args, levels, load)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    procs: list[subprocess.Popen] = []
    try:
        print(f"training the {args.model} champion on {args.apps} generated apps ...", flush=True)
        champion = train_and_register(work, args.apps, args.trees, args.model, args.folds)
        print(f"champion: {type(champion['pipe']).__name__} ({champion['detail']})", flush=True)
        fl = floor(champion["pipe"], champion["apps"])
        ours_bodies, mlflow_bodies = request_bodies(champion["raw"], champion["apps"])

        env = {**os.environ, "PYTHONPATH": str(PROJECT), "MLFLOW_TRACKING_URI": champion["uri"]}
        env.pop("SERVING_ADMIN_TOKEN", None)
        ours_port, mlflow_port = _free_port(), _free_port()
        ours_url, mlflow_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{mlflow_port}"
        ours = start(
            [sys.executable, "-m", "lib.serving", "--host", "127.0.0.1", "--port",
             str(ours_port), "--model-name", MODEL_NAME, "--tracking-uri", champion["uri"],
             "--store-url", f"sqlite:///{work}/predictions.db", "--log-level", "WARNING"],
            PROJECT, env, work / "ours.log",
        )  # fmt: skip
        procs.append(ours)
        theirs = start(
            [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
             f"models:/{MODEL_NAME}@champion", "--env-manager", "local", "--host", "127.0.0.1",
             "--port", str(mlflow_port)],
            work, env, work / "mlflow.log",
        )  # fmt: skip
        procs.append(theirs)
        wait_ready(ours, ours_url + "/health", work / "ours.log")
        wait_ready(theirs, mlflow_url + "/ping", work / "mlflow.log")

        import httpx

        # the first answers (a cold model, a loaded machine) may take seconds: wait for them
        a = httpx.post(ours_url + "/predict", content=ours_bodies[0], timeout=120,
                       headers={"Content-Type": "application/json"}).json()  # fmt: skip
        b = httpx.post(mlflow_url + "/invocations", content=mlflow_bodies[0], timeout=120,
                       headers={"Content-Type": "application/json"}).json()  # fmt: skip
        print(f"same app -> ours: label {a['label']} p={a['probability']:.4f} | "
              f"mlflow: {b['predictions']}")  # fmt: skip

        results: dict[tuple[str, int], dict[str, float]] = {}
        for conc in levels:
            for name, url, path, bodies in (
                ("ours", ours_url, "/predict", ours_bodies),
                ("mlflow", mlflow_url, "/invocations", mlflow_bodies),
            ):
                ids = {"request_ids": True} if args.request_ids and name == "ours" else {}
                load(url, path, bodies, conc, args.warmup, work, **ids)
                results[(name, conc)] = load(url, path, bodies, conc, args.duration, work, **ids)
                r = results[(name, conc)]
                print(f"  {name:<7} c={conc:<3} {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                      f"p99 {r['p99']:7.2f} ms  errors {r['errors']}", flush=True)  # fmt: skip
        mean_batch = batch_stats(ours_url)
    finally:
        for proc in procs:
            stop(proc)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load from {'wrk' if use_wrk else 'python asyncio+httpx'} on the same machine, "
          f"{args.duration:g} s per cell; fit {champion['fit_s']:.1f} s"
          f"{'; a new X-Request-ID per request to ours' if args.request_ids else ''}")  # fmt: skip
    print(f"champion: {args.model}: {type(champion['pipe']).__name__} ({champion['detail']})")
    print()
    print("| server | concurrency | requests/s | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for conc in levels:
        for name, label in (("ours", "lib.serving"), ("mlflow", "mlflow models serve")):
            r = results[(name, conc)]
            print(f"| {label} | {conc} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                  f"{r['errors']} |")  # fmt: skip
    print()
    for conc in levels:
        ratio = results[("ours", conc)]["rps"] / max(results[("mlflow", conc)]["rps"], 1e-9)
        goal = {1: " (goal >= 2x)", 32: " (goal >= 5x)"}.get(conc, "")
        print(f"throughput ours / mlflow at concurrency {conc}: {ratio:.1f}x{goal}")
    if 8 in levels:
        print(f"p99 of ours at concurrency 8: {results[('ours', 8)]['p99']:.1f} ms (goal < 100 ms)")
    print(f"mean rows per predict call in our service (micro-batching): {mean_batch}")
    print()
    print("in-process floor, median time of one predict call (probabilities and labels):")
    print(f"  scikit-learn model: 1 row {fl['sklearn_1']:.2f} ms, "
          f"1,000 rows {fl['sklearn_1000']:.2f} ms")  # fmt: skip
    print(f"  service predictor, scikit-learn fallback: 1 row {fl['fallback_1']:.2f} ms")
    print(f"  service predictor ({fl['kind']}): 1 row {fl['ours_1']:.3f} ms, "
          f"1,000 rows {fl['ours_1000']:.2f} ms ({fl['reason']})")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--loadgen-child":
        _, _, target, body_path, conc_arg, seconds_arg, ids_arg = sys.argv
        loaded = json.loads(Path(body_path).read_text())
        print(json.dumps(asyncio.run(_python_load(
            target, loaded, int(conc_arg), float(seconds_arg), ids_arg == "ids"))))  # fmt: skip
    else:
        main()
