"""lib.delivery.replayer against a local HTTP server that records what it receives.

The service splits traffic (it answers with the variant that served); the replayer must send
each record as its own request with its own id, post the true rating as feedback for the id the
service answered with, count what each variant served, and survive a failing service.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from lib.delivery.replayer import Replayer, app_request, holdout_apps


@dataclass
class Recorder:
    """What the stand-in service received, and how it answers."""

    predictions: list[dict[str, Any]] = field(default_factory=list)  # body + header request id
    feedback: list[dict[str, Any]] = field(default_factory=list)
    predict_status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/predict":
                if recorder.predict_status != 200:
                    self.reply(recorder.predict_status, {"detail": "model crashed"})
                    return
                with recorder.lock:
                    n = len(recorder.predictions)
                    header_id = self.headers.get("X-Request-ID")
                    recorder.predictions.append({"body": body, "request_id": header_id})
                # a 1-in-4 canary split, and the service's own id for the request
                variant = "canary" if n % 4 == 3 else "champion"
                self.reply(200, {"request_id": f"served-{n}", "label": 1, "variant": variant})
            elif self.path == "/feedback":
                with recorder.lock:
                    recorder.feedback.append(body)
                self.reply(200, {"status": "recorded"})
            else:
                self.reply(404, {"detail": "not found"})

    return Handler


@pytest.fixture
def service() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(recorder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


RECORDS = [({"app": "A", "installs": 10.0}, 4.5), ({"app": "B", "installs": 20.0}, 3.0)]


def send(replayer: Replayer, times: int) -> None:
    with httpx.Client(timeout=5) as client:
        for i in range(times):
            body, rating = replayer.records[i % len(replayer.records)]
            replayer.send_one(client, body, rating)


@pytest.mark.component
def test_each_request_has_its_own_id_and_its_true_rating_as_feedback(service) -> None:
    url, recorder = service
    replayer = Replayer(url, RECORDS)
    send(replayer, 2)
    assert [p["body"] for p in recorder.predictions] == [body for body, _ in RECORDS]
    ids = [p["request_id"] for p in recorder.predictions]
    assert all(ids) and len(set(ids)) == 2
    # feedback names the id the service answered with, and carries the real rating
    assert recorder.feedback == [
        {"request_id": "served-0", "rating": 4.5},
        {"request_id": "served-1", "rating": 3.0},
    ]
    assert (replayer.stats.sent, replayer.stats.ok, replayer.stats.feedback) == (2, 2, 2)
    assert replayer.stats.errors == 0


@pytest.mark.component
def test_stats_count_what_each_variant_of_the_split_served(service) -> None:
    url, _ = service
    replayer = Replayer(url, RECORDS)
    send(replayer, 8)
    assert replayer.stats.by_variant == {"champion": 6, "canary": 2}


@pytest.mark.component
def test_label_flip_posts_the_opposite_rating(service) -> None:
    url, recorder = service
    send(Replayer(url, RECORDS, label_flip=True), 2)
    assert [f["rating"] for f in recorder.feedback] == [1.0, 5.0]  # good -> bad, bad -> good


@pytest.mark.component
def test_without_feedback_only_predictions_are_sent(service) -> None:
    url, recorder = service
    replayer = Replayer(url, RECORDS, feedback=False)
    send(replayer, 3)
    assert len(recorder.predictions) == 3 and recorder.feedback == []
    assert replayer.stats.feedback == 0


@pytest.mark.component
def test_a_failing_service_is_counted_not_raised(service) -> None:
    url, recorder = service
    recorder.predict_status = 500
    replayer = Replayer(url, RECORDS)
    send(replayer, 2)
    assert (replayer.stats.sent, replayer.stats.ok, replayer.stats.errors) == (2, 0, 2)
    assert (replayer.stats.last_error or "").startswith("HTTP 500")
    assert recorder.feedback == []


@pytest.mark.component
def test_an_unreachable_service_is_counted_not_raised() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]
    replayer = Replayer(f"http://127.0.0.1:{port}", RECORDS, timeout=2.0)
    send(replayer, 1)
    assert replayer.stats.errors == 1 and "ConnectError" in (replayer.stats.last_error or "")


@pytest.mark.component
def test_the_background_loop_cycles_the_records_and_stops(service) -> None:
    url, recorder = service
    with Replayer(url, RECORDS, rate=50.0) as replayer:
        deadline = time.monotonic() + 10
        while len(recorder.feedback) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    stats = replayer.stats
    sent_at_stop = len(recorder.predictions)
    assert sent_at_stop >= 4, "the loop sent too little in 10 s"
    assert {p["body"]["app"] for p in recorder.predictions} == {"A", "B"}
    time.sleep(0.2)
    assert len(recorder.predictions) == sent_at_stop, "requests were sent after stop()"
    assert stats.sent == sent_at_stop and stats.errors == 0


def test_a_replayer_without_records_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one labeled record"):
        Replayer("http://127.0.0.1:1", [])


def test_app_request_is_the_snake_case_body_with_missing_values_as_null() -> None:
    row = pd.Series(
        {
            "app": "Photo Editor", "category": "PHOTOGRAPHY", "reviews": 1200, "size_mb": np.nan,
            "installs": 100000, "type": "Free", "price": 0.0, "content_rating": "Everyone",
            "last_updated": pd.Timestamp("2018-01-07 12:30"), "genres": "Photography",
            "current_ver": None, "android_ver": np.nan,
        }
    )  # fmt: skip
    body = app_request(row)
    assert body == {
        "app": "Photo Editor", "category": "PHOTOGRAPHY", "reviews": 1200.0, "size_mb": None,
        "installs": 100000.0, "type": "Free", "price": 0.0, "content_rating": "Everyone",
        "last_updated": "2018-01-07", "genres": "Photography", "current_ver": None,
        "android_ver": None,
    }  # fmt: skip
    json.dumps(body, allow_nan=False)  # plain JSON: no NaN reaches the service


def test_holdout_apps_are_the_training_holdout_with_their_ratings() -> None:
    from lib.pipeline import data, synth, training

    apps = data.parse_records(synth.generate_apps(400, seed=3)).apps
    held = holdout_apps(apps, target_threshold=4.0, test_size=0.25, seed=42)
    labeled = training.labeled_data(apps, 4.0)
    _, test_idx = training.holdout_split(labeled.keys, labeled.y, 0.25, 42)
    assert set(held["app_key"]) == set(labeled.keys.iloc[test_idx])
    assert held["app_key"].is_unique and held["rating"].notna().all()


@pytest.mark.component
def test_only_a_share_of_requests_is_ever_labeled(service) -> None:
    url, recorder = service
    replayer = Replayer(url, RECORDS, label_share=0.3, seed=1)
    send(replayer, 200)
    assert len(recorder.predictions) == 200
    assert 40 <= len(recorder.feedback) <= 80  # binomial(200, 0.3): 60 expected
    assert replayer.stats.feedback == len(recorder.feedback)
    none = Replayer(url, RECORDS, label_share=0.0)
    send(none, 20)
    assert none.stats.feedback == 0 and none.stats.labels_pending == 0


@pytest.mark.component
def test_late_labels_wait_their_delay_and_can_be_delivered_after_the_rollout(service) -> None:
    url, recorder = service
    replayer = Replayer(url, RECORDS, label_delay=(3600.0, 7200.0))
    send(replayer, 4)
    assert recorder.feedback == [] and replayer.stats.labels_pending == 4
    assert replayer.deliver_pending() == 4  # the ratings that come days later
    assert sorted(f["request_id"] for f in recorder.feedback) == [f"served-{i}" for i in range(4)]
    assert replayer.stats.labels_pending == 0 and replayer.stats.feedback == 4


@pytest.mark.component
def test_the_background_loop_posts_labels_once_due(service) -> None:
    url, recorder = service
    with Replayer(url, RECORDS, rate=50.0, label_delay=(1.0, 1.5)):
        time.sleep(0.3)
        early = len(recorder.feedback)
        deadline = time.monotonic() + 10
        while len(recorder.feedback) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert early == 0, "a label arrived before its delay"
    assert len(recorder.feedback) >= 4
    posted = {f["request_id"] for f in recorder.feedback}
    assert posted <= {f"served-{i}" for i in range(len(recorder.predictions))}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"label_share": 1.5},
        {"label_share": -0.1},
        {"label_delay": (5.0, 1.0)},
        {"label_delay": (-1.0, 0.0)},
    ],  # fmt: skip
)
def test_impossible_label_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="label_share must be in"):
        Replayer("http://127.0.0.1:1", RECORDS, **kwargs)
