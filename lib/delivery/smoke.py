"""Smoke tests of a staging instance over HTTP before it gets traffic (Flagger's pre-rollout
webhook): the right model, the offline labels on known rows, the documented schema, a 422 for
bad input, and fast enough."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RESPONSE_FIELDS = {
    "request_id": str,
    "label": int,
    "probability": float,
    "model_version": str,
    "variant": str,
}


@dataclass
class SmokeCheck:
    name: str
    passed: bool
    message: str


@dataclass
class SmokeResult:
    passed: bool
    checks: list[SmokeCheck] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.message}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def run_smoke_tests(
    url: str,
    expected_version: str,
    known: list[tuple[dict[str, Any], int]],
    max_p95_ms: float = 500.0,
    latency_requests: int = 20,
    timeout: float = 10.0,
) -> SmokeResult:
    """Run every check (a failing one does not hide the others) and say what each saw. `known`
    holds request bodies with the label the registered model gives them offline."""
    import httpx

    url, body = url.rstrip("/"), known[0][0]
    with httpx.Client(timeout=timeout) as client:
        runs = {
            "model_loaded": lambda: _health(client, url, expected_version),
            "known_rows": lambda: _known_rows(client, url, expected_version, known),
            "response_schema": lambda: _schema(client, url, body),
            "bad_input_422": lambda: _bad_input(client, url, body),
            "latency": lambda: _latency(client, url, known, max_p95_ms, latency_requests),
        }
        checks = [_guard(name, run) for name, run in runs.items()]
    result = SmokeResult(all(c.passed for c in checks), checks)
    log.info("smoke tests on %s: %s", url, "passed" if result.passed else result.failures)
    return result


def _guard(name: str, check: Callable[[], tuple[bool, str]]) -> SmokeCheck:
    """One check's (passed, message) as a SmokeCheck named `name`."""
    try:
        return SmokeCheck(name, *check())
    except Exception as exc:  # an unreachable or crashing service fails the check, with why
        return SmokeCheck(name, False, f"{type(exc).__name__}: {exc}")


def _health(client: Any, url: str, version: str) -> tuple[bool, str]:
    resp = client.get(f"{url}/health")
    served = str((resp.json().get("champion") or {}).get("version"))
    ok = resp.status_code == 200 and served == str(version)
    return ok, f"/health {resp.status_code}, serving version {served} (expected {version})"


def _known_rows(
    client: Any, url: str, version: str, known: list[tuple[dict, int]]
) -> tuple[bool, str]:
    resp = client.post(f"{url}/predict", json={"instances": [body for body, _ in known]})
    if resp.status_code != 200:
        return False, f"batch /predict gave HTTP {resp.status_code}: {resp.text[:200]}"
    preds = resp.json()["predictions"]
    want = [label for _, label in known]
    wrong = sum(int(p["label"]) != w for p, w in zip(preds, want, strict=True))
    versions = {str(p["model_version"]) for p in preds}
    return wrong == 0 and versions == {str(version)}, (
        f"{len(want) - wrong}/{len(want)} known rows gave the offline label; "
        f"versions answering: {sorted(versions)}"
    )


def _schema(client: Any, url: str, body: dict[str, Any]) -> tuple[bool, str]:
    answer = client.post(f"{url}/predict", json=body).json()
    problems = [
        f"{name} missing" if name not in answer else f"{name} is {type(answer[name]).__name__}"
        for name, kind in RESPONSE_FIELDS.items()
        if name not in answer or not isinstance(answer[name], kind)
    ]
    if "probability" in answer and not 0.0 <= float(answer["probability"]) <= 1.0:
        problems.append(f"probability {answer['probability']} outside 0..1")
    return not problems, "; ".join(problems) or "as documented"


def _bad_input(client: Any, url: str, body: dict[str, Any]) -> tuple[bool, str]:
    bad = {**body, ("installs" if "installs" in body else "Installs"): "lots"}
    resp = client.post(f"{url}/predict", json=bad)
    ok = resp.status_code == 422 and "nstalls" in resp.text
    return ok, f"Installs='lots' gave HTTP {resp.status_code}: {resp.text[:160]}"


def _latency(
    client: Any, url: str, known: list[tuple[dict, int]], bound: float, n: int
) -> tuple[bool, str]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        resp = client.post(f"{url}/predict", json=known[i % len(known)][0])
        times.append((time.perf_counter() - started) * 1000)
        if resp.status_code != 200:
            return False, f"request {i} gave HTTP {resp.status_code}"
    p95 = float(np.percentile(times, 95))
    return p95 <= bound, f"p95 {p95:.1f} ms over {n} single-row requests (bound {bound:.0f} ms)"
