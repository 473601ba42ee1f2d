"""Is there enough new data to retrain? Counted by app identity, not by row counts (a re-listed
app is an update, not a new app). The last successful training's state is one JSON file."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from lib.atomic_files import write_json_atomic

log = logging.getLogger(__name__)

STATE_VERSION = 1
# the state's name among the artifacts of a training's MLflow run (02 train logs it there)
STATE_ARTIFACT = "training_state.json"


@dataclass
class Detection:
    """What changed since the last training and whether that is enough to train again."""

    total_apps: int
    new_apps: int
    updated_apps: int
    should_train: bool
    reason: str
    first_run: bool
    last_trained_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprints(apps: pd.DataFrame) -> dict[str, str]:
    """app_key -> what identifies this listing's state (date, reviews, rating) for change counts."""
    latest = apps.sort_values(["app_key", "last_updated", "reviews"], kind="stable")
    latest = latest.drop_duplicates("app_key", keep="last")
    dates = pd.to_datetime(latest["last_updated"]).dt.strftime("%Y-%m-%d").fillna("")
    reviews = latest["reviews"].fillna(-1).astype("int64").astype(str)
    rating = latest["rating"].map(lambda r: "" if pd.isna(r) else f"{r:.1f}")
    return dict(zip(latest["app_key"], dates + "|" + reviews + "|" + rating, strict=True))


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The last successful training's state, or None when there was none (or it is unreadable)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        log.warning("training state %s unreadable (%s): treated as a first run", path, exc)
        return None
    return parse_state(text, str(path))


def parse_state(text: str, where: str) -> dict[str, Any] | None:
    """A training state's JSON text (a file, or the artifact of a training's MLflow run)."""
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        log.warning("training state %s unreadable (%s): treated as a first run", where, exc)
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "apps" not in state:
        log.warning("training state %s has an unknown format: treated as a first run", where)
        return None
    return state


def detect(
    apps: pd.DataFrame, state: dict[str, Any] | None, threshold: int, force: bool = False
) -> Detection:
    """Count new and updated apps against the last training and decide whether to train."""
    current = fingerprints(apps)
    total = len(current)
    if state is None:
        return Detection(total, total, 0, True, "first run: no model trained yet", True, None)
    known: dict[str, str] = state["apps"]
    new = sum(1 for k in current if k not in known)
    updated = sum(1 for k, fp in current.items() if k in known and known[k] != fp)
    when = state.get("trained_at")
    if force:
        should, reason = True, f"forced retraining ({new} new apps, threshold {threshold})"
    elif new >= threshold:
        should, reason = True, f"{new} new apps since the last training (threshold {threshold})"
    else:
        should = False
        reason = (
            f"only {new} new apps since the last training on {when} "
            f"(threshold {threshold}); nothing to do"
        )
    return Detection(total, new, updated, should, reason, False, when)


def write_state(
    path: str | Path, apps: pd.DataFrame, model_version: str, run_id: str, data_digest: str
) -> Path:
    """Record what the model was trained on; atomic so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "version": STATE_VERSION,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": str(model_version),
        "run_id": run_id,
        "data_digest": data_digest,
        "apps": fingerprints(apps),
    }
    return write_json_atomic(path, state, indent=None)
