"""The prediction store's share of a request, in-process: another checkout's store against this one.

    python bench/store_path.py /path/to/checkout-A [--rows 3000 --rounds 4 --concurrency 1,8]

Each measurement is a fresh process on a fresh SQLite store (WAL), run with the checkout's code
on PYTHONPATH, alternately A B B A: `--rows` single-row predictions handed to the store by
`--concurrency` asyncio "requests" as the service does, until all are in the database. A store
with `record` (answer once committed) is awaited per request; one without it (the journal) gets
`submit` (journal append, no wait) and a final flush. Prints the process's CPU time per row
(the writer thread's included) and the wall time per row with the load average, then medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import asyncio, json, sys, tempfile, time
from lib.serving.prediction_store import PredictionStore

conc, n = int(sys.argv[1]), int(sys.argv[2])
features = {"Category": "GAME", "Reviews": 1234.0, "Size": "12M", "Installs": "10,000+",
            "Type": "Free", "Price": 0.0, "Content Rating": "Everyone", "Genres": "Arcade",
            "Last Updated": "January 7, 2018", "Current Ver": "1.2.3", "Android Ver": "4.1",
            "App": "Some Game", "size_mb": 12.0, "days": 200.0}
with tempfile.TemporaryDirectory() as work:
    store = PredictionStore(f"sqlite:///{work}/p.db")
    store.window(0)

    def row(i):
        return {"request_id": f"r-{i}", "created_at": time.time(), "variant": "champion",
                "model_version": "1", "label": i % 2, "probability": 0.25, "latency_ms": 1.5,
                "error": None, "features": dict(features)}

    async def run():
        if hasattr(store, "record"):
            async def worker(k):
                for i in range(k, n, conc):
                    await store.record([row(i)])
            await asyncio.gather(*(worker(k) for k in range(conc)))
        else:
            for i in range(n):
                store.submit([row(i)])
                if i % conc == conc - 1:
                    await asyncio.sleep(0)
        assert store.flush(timeout=120)

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(run())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert store.stats()["written"] == n, store.stats()
    store.close()
print(json.dumps({"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}))
"""


def measure(code: Path, conc: int, rows: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(conc), str(rows)],
        cwd=code, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout_a", type=Path)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    codes = {"A": args.checkout_a.resolve(), "B": Path(__file__).resolve().parents[1]}
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        order = ("A", "B") if round_ % 2 == 0 else ("B", "A")
        for conc in [int(c) for c in args.concurrency.split(",")]:
            for name in order + tuple(reversed(order)):
                r = measure(codes[name], conc, args.rows)
                results.setdefault((name, conc), []).append(r)
                print(f"round {round_} {name} c={conc}: CPU {r['cpu_us']:6.1f} us/row, wall "
                      f"{r['wall_us']:7.1f} us/row, load {os.getloadavg()[0]:.1f} at "
                      f"{time.strftime('%H:%M:%S')}", flush=True)  # fmt: skip
    print()
    for (name, conc), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cpu = statistics.median(r["cpu_us"] for r in runs)
        wall = statistics.median(r["wall_us"] for r in runs)
        print(f"{name} c={conc}: median CPU {cpu:.1f} us/row, wall {wall:.1f} us/row")


if __name__ == "__main__":
    main()
