"""The prediction store's window queries at 1 and 10 million predictions (numbers, by hand).

    python bench/store.py                       # a throwaway PostgreSQL cluster, 1 M then 10 M
    python bench/store.py --rows 1000000 --url postgresql://user@host/db   # an empty database
    python bench/store.py --rows 1000000 --sqlite /tmp/p.db                # SQLite as well

Fills the store (schema by its migrations) with realistic rows: `--days` of traffic ending now,
champion answers, canary answers during rollouts (the last two hours and 5% of earlier time, at
25%) each scored in the shadow by the other variant (a `#shadow` row), feedback for a fifth of
the answers (a minute to a day later, never after now); loaded with COPY (PostgreSQL) or
executemany (SQLite) in batches of 100,000. Then
times the reads canary analysis and 06 monitor make, through `PredictionReader.window` (the
exact statement and the frame): the canary step's two windows (the last 5 minutes, by
variant) and the monitor's (the last hour, with features). Prints rows read, the median and
p95 of `--runs` runs after a warm-up, and on PostgreSQL EXPLAIN (ANALYZE, BUFFERS) of each.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.serving import store_schema  # noqa: E402
from lib.serving.prediction_store import PredictionReader, make_engine  # noqa: E402

BATCH = 100_000
COLUMNS = ["request_id", "created_at", "variant", "model_version", "label", "probability",
           "latency_ms", "error", "features", "shadow_of"]  # fmt: skip
CATEGORIES = ["GAME", "FAMILY", "TOOLS", "MEDICAL", "BUSINESS", "PRODUCTIVITY", "SPORTS"]


def _features(rng: np.random.Generator, n: int) -> list[str]:
    """Model input rows as the service stores them (JSON, ~300 bytes)."""
    reviews = rng.lognormal(8, 2, n).round()
    size = rng.uniform(1, 100, n).round(1)
    installs = 10 ** rng.integers(2, 9, n)
    cats = rng.integers(0, len(CATEGORIES), n)
    return [
        json.dumps(
            {
                "Category": CATEGORIES[c],
                "Reviews": float(r),
                "Size": float(s),
                "Installs": float(i),
                "Type": "Free",
                "Price": 0.0,
                "Content Rating": "Everyone",
                "Genres": CATEGORIES[c].title(),
                "Last Updated": "2018-01-07",
                "Current Ver": "1.2.3",
                "Android Ver": "4.0.3 and up",
                "name_length": 9,
            }
        )  # fmt: skip
        for c, r, s, i in zip(cats, reviews, size, installs, strict=True)
    ]


def _batch(rng: np.random.Generator, start: int, n: int, times: np.ndarray, now: float):
    """`n` answered rows from number `start` (times given), their shadow rows and feedback."""
    ids = np.array([f"req-{start + k:09d}" for k in range(n)], dtype=object)
    in_rollout = (times > now - 7200) | (rng.random(n) < 0.05)
    canary = in_rollout & (rng.random(n) < 0.25)
    proba = rng.random(n).round(4)
    answers = pd.DataFrame({
        "request_id": ids, "created_at": times,
        "variant": np.where(canary, "canary", "champion"),
        "model_version": np.where(canary, "8", "7"),
        "label": (proba > 0.45).astype(int), "probability": proba,
        "latency_ms": rng.gamma(2, 4, n).round(2), "error": None,
        "features": _features(rng, n), "shadow_of": None,
    })  # fmt: skip
    shadow = answers[in_rollout].copy()
    shadow["shadow_of"] = shadow["request_id"]
    shadow["request_id"] = shadow["request_id"] + "#shadow"
    shadow["variant"] = np.where(shadow["variant"] == "canary", "champion", "canary")
    shadow["model_version"] = np.where(shadow["variant"] == "canary", "8", "7")
    shadow["features"] = None
    shadow["created_at"] += 0.01
    labeled = answers[rng.random(n) < 0.2]
    rating = rng.uniform(1, 5, len(labeled)).round(1)
    feedback = pd.DataFrame({
        "request_id": labeled["request_id"],
        "created_at": np.minimum(labeled["created_at"] + rng.uniform(60, 86400, len(labeled)), now),
        "rating": rating, "label": (rating > 4.0).astype(int), "source": "bench",
    })  # fmt: skip
    return pd.concat([answers, shadow], ignore_index=True), feedback


def _copy(raw, table: str, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    with raw.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
    raw.commit()


def _insert(engine: sa.Engine, table: str, frame: pd.DataFrame) -> None:
    frame = frame.astype(object).where(frame.notna(), None)
    columns = ", ".join(frame.columns)
    marks = ", ".join("?" for _ in frame.columns)
    raw = engine.raw_connection()
    try:
        raw.cursor().executemany(
            f"INSERT INTO {table} ({columns}) VALUES ({marks})", frame.itertuples(index=False)
        )
        raw.commit()
    finally:
        raw.close()


def fill(url: str, target: int, days: float, now: float) -> None:
    """Empty the store, then load about `target` predictions (answers + shadow rows), their
    times spread evenly over the days before `now`, in time order (as a service writes)."""
    engine = make_engine(url)
    store_schema.upgrade(engine)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for table in ("feedback", "predictions"):
            conn.exec_driver_sql(("TRUNCATE " if postgres else "DELETE FROM ") + table)
    rng = np.random.default_rng(target)
    answers_total = int(target / 1.055)  # ~5.5% of answers also get a shadow row
    all_times = np.sort(now - rng.uniform(0, days * 86400, answers_total))
    began, number, have = time.perf_counter(), 0, 0
    while number < answers_total:
        n = min(BATCH, answers_total - number)
        rows, labels = _batch(rng, number, n, all_times[number : number + n], now)
        if postgres:
            raw = engine.raw_connection()
            try:
                _copy(raw.driver_connection, "predictions", rows)
                _copy(raw.driver_connection, "feedback", labels)
            finally:
                raw.close()
        else:
            _insert(engine, "predictions", rows)
            _insert(engine, "feedback", labels)
        have += len(rows)
        number += n
    if postgres:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE predictions")
            conn.exec_driver_sql("VACUUM ANALYZE feedback")
    print(f"filled to {have:,} predictions in {time.perf_counter() - began:.0f} s", flush=True)
    engine.dispose()


def _migrated_latest(url: str) -> float:
    """Migrate a filled store (timed) and return its last prediction's time: the windows end
    there, as they did when it was filled."""
    engine = make_engine(url)
    began = time.perf_counter()
    before = store_schema.upgrade(engine)
    print(f"migrated from {before} to {store_schema.HEAD} in {time.perf_counter() - began:.1f} s")
    with engine.connect() as conn:
        latest = conn.exec_driver_sql("SELECT max(created_at) FROM predictions").scalar()
    engine.dispose()
    return float(latest) + 1.0


QUERIES = {  # name: (seconds back, variant, features): what the callers read
    "canary step, canary rows (5 min)": (300, "canary", False),
    "canary step, champion rows (5 min)": (300, "champion", False),
    "06 monitor (1 h, features)": (3600, None, True),
}


def measure(url: str, runs: int, now: float) -> None:
    with PredictionReader(url) as reader:
        captured: list = []
        sa.event.listen(reader.engine, "before_cursor_execute",
                        lambda *a: captured.append((a[2], a[3])))  # fmt: skip
        for name, (back, variant, features) in QUERIES.items():
            since = now - back
            rows = len(reader.window(since, variant=variant, features=features))  # warm-up
            times = []
            for _ in range(runs):
                began = time.perf_counter()
                reader.window(since, variant=variant, features=features)
                times.append((time.perf_counter() - began) * 1000)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            print(f"  {name}: {rows:,} rows, median {statistics.median(times):.1f} ms, "
                  f"p95 {p95:.1f} ms ({runs} runs)", flush=True)  # fmt: skip
            if reader.engine.dialect.name == "postgresql":
                statement, params = captured[-1]
                raw = reader.engine.raw_connection()
                try:
                    with raw.driver_connection.cursor() as cursor:
                        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                        plan = [r[0] for r in cursor.fetchall()]
                finally:
                    raw.close()
                print("\n".join("      " + line for line in plan), flush=True)


def exposure(url: str, rate: float, seconds: float) -> None:
    """What a replica's lost disk (a deleted pod) would lose: rows answered (submitted, and
    journaled on that disk) but not yet committed to the database. Submits `rate` rows/s to a
    PredictionStore for `seconds`, samples every 10 ms how many rows are not written and how
    long ago the oldest of them was answered."""
    from lib.serving.prediction_store import PredictionStore

    store = PredictionStore(url, journal=False)
    store.window(time.time())  # migrated, connected
    sent: list[float] = []
    pending, ages = [], []
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        due = int(elapsed * rate) - len(sent)
        if due > 0:
            at = time.time()
            store.submit([
                {**_exposure_row(len(sent) + k, at)} for k in range(due)
            ])  # fmt: skip
            sent.extend([time.perf_counter()] * due)
        written = store.stats()["written"]
        pending.append(len(sent) - written)
        ages.append((time.perf_counter() - sent[written]) * 1000 if written < len(sent) else 0.0)
        time.sleep(0.01)
    store.close()
    with store.engine.begin() as conn:  # (the windows measured next are the fill's)
        conn.exec_driver_sql("DELETE FROM predictions WHERE request_id LIKE 'exposure-%%'")
    pending.sort()
    ages.sort()
    p99 = int(0.99 * (len(ages) - 1))
    print(f"not yet written at {rate:g} rows/s ({len(sent):,} rows, {len(ages)} samples): "
          f"median {statistics.median(pending):.0f} rows / {statistics.median(ages):.0f} ms, "
          f"p99 {pending[p99]} rows / {ages[p99]:.0f} ms, max {pending[-1]} rows / "
          f"{ages[-1]:.0f} ms", flush=True)  # fmt: skip


def _exposure_row(number: int, at: float) -> dict:
    return {
        "request_id": f"exposure-{at:.0f}-{number}", "created_at": at, "variant": "champion",
        "model_version": "7", "label": 1, "probability": 0.6, "latency_ms": 3.0,
        "features": '{"Category": "GAME", "Reviews": 1234.0}',
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an empty PostgreSQL database (default: a throwaway one)")
    parser.add_argument("--rows", default="1000000,10000000", help="sizes, comma-separated")
    parser.add_argument("--days", type=float, default=7.0, help="traffic spread over")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--sqlite", help="also a SQLite store at this path")
    parser.add_argument(
        "--no-fill", action="store_true",
        help="measure --url as it is (after migrating it): another version's fill, compared",
    )  # fmt: skip
    parser.add_argument(
        "--exposure", type=float, default=0,
        help="then submit this many rows/s for 10 s: rows answered but not yet written",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    now = time.time()
    with ExitStack() as stack:
        url = args.url
        if url is None:
            from tests.support.postgres import throwaway_postgres

            url = stack.enter_context(throwaway_postgres())
        stores = [url] + ([f"sqlite:///{Path(args.sqlite).absolute()}"] if args.sqlite else [])
        for store in stores:
            for size in sizes:
                print(f"{make_engine(store).dialect.name} at {size:,} predictions "
                      f"({args.days:g} days of traffic):", flush=True)  # fmt: skip
                if args.no_fill:
                    now = _migrated_latest(store)
                else:
                    fill(store, size, args.days, now)
                measure(store, args.runs, now)
                if args.exposure:
                    exposure(store, args.exposure, 10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
