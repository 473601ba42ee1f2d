"""Two versions of the model service on the same champion, measured alternately (A B B A ...).

    python bench/store_ab.py /path/to/checkout-A [--rounds 4 --duration 5 --concurrency 1,8]

A is the service of another checkout (e.g. `git archive <commit> | tar -x -C /tmp/a`), B this
one. Both run at once (`python -m lib.serving`, each with its own prediction store), and the
load of `bench/serving.py` (single-row `/predict`, wrk or the Python load generator) goes to one
then the other, in A B B A order per round and concurrency, so that a machine shared with other
jobs loads both alike. Prints every measurement (requests/s, and the service process's CPU
time per request, which a loaded machine disturbs less) with the load average when it was
taken, then the median of each side and B/A. Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving as bench  # noqa: E402  (bench/serving.py)


def _service(code: Path, port: int, uri: str, store: str, work: Path, name: str):
    env = {**os.environ, "PYTHONPATH": str(code), "MLFLOW_TRACKING_URI": uri}
    env.pop("SERVING_ADMIN_TOKEN", None)
    cmd = [sys.executable, "-m", "lib.serving", "--host", "127.0.0.1", "--port", str(port),
           "--model-name", bench.MODEL_NAME, "--tracking-uri", uri, "--store-url", store,
           "--log-level", "WARNING"]  # fmt: skip
    return bench.start(cmd, code, env, work / f"{name}.log")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout_a", type=Path, help="the other version's project directory")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--apps", type=int, default=3000)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--model", choices=bench.MODELS, default="forest_and_boosting")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    load = bench.run_wrk if use_wrk else bench.run_python_load
    work = Path(tempfile.mkdtemp(prefix="bench-store-ab-"))
    procs = []
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    try:
        champion = bench.train_and_register(work, args.apps, 300, args.model, args.folds)
        bodies, _theirs = bench.request_bodies(champion["raw"], champion["apps"])
        urls, pids = {}, {}
        for name, code in (("A", args.checkout_a.resolve()), ("B", bench.PROJECT)):
            port = bench._free_port()
            store = f"sqlite:///{work}/{name}.db"
            procs.append(_service(code, port, champion["uri"], store, work, name))
            urls[name], pids[name] = f"http://127.0.0.1:{port}", procs[-1].pid
            bench.wait_ready(procs[-1], urls[name] + "/health", work / f"{name}.log")
        loadgen = "wrk" if use_wrk else "python"
        print(f"A = {args.checkout_a}, B = {bench.PROJECT}; {args.model}; load from {loadgen}; "
              f"{args.duration:g} s per cell", flush=True)  # fmt: skip
        for round_ in range(args.rounds):
            order = ("A", "B") if round_ % 2 == 0 else ("B", "A")
            for conc in levels:
                for name in order + tuple(reversed(order)):
                    load(urls[name], "/predict", bodies, conc, args.warmup, work)
                    before = _cpu_seconds(pids[name])
                    r = load(urls[name], "/predict", bodies, conc, args.duration, work)
                    per_request = (_cpu_seconds(pids[name]) - before) / r["requests"] * 1000
                    results.setdefault((name, conc), []).append(r["rps"])
                    cpu.setdefault((name, conc), []).append(per_request)
                    print(f"round {round_} {name} c={conc}: {r['rps']:7.1f} req/s p50 "
                          f"{r['p50']:6.2f} ms p99 {r['p99']:6.2f} ms errors {r['errors']} "
                          f"cpu {per_request:.3f} ms/request load {os.getloadavg()[0]:.1f} "
                          f"at {time.strftime('%H:%M:%S')}", flush=True)  # fmt: skip
    finally:
        for proc in procs:
            bench.stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    print()
    for conc in levels:
        a, b = statistics.median(results[("A", conc)]), statistics.median(results[("B", conc)])
        print(f"c={conc}: median A {a:.1f}, B {b:.1f} req/s: B/A {b / a:.0%}")
        a, b = statistics.median(cpu[("A", conc)]), statistics.median(cpu[("B", conc)])
        print(f"c={conc}: median CPU A {a:.3f}, B {b:.3f} ms/request: A/B {a / b:.0%}")


if __name__ == "__main__":
    main()
