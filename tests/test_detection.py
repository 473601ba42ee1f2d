from pathlib import Path

import pandas as pd

from lib.pipeline import detection


def _apps(names: list[str], reviews: list[int] | None = None) -> pd.DataFrame:
    n = len(names)
    return pd.DataFrame(
        {
            "app": names,
            "app_key": [x.lower().strip() for x in names],
            "rating": [4.2] * n,
            "reviews": [float(r) for r in (reviews or [10] * n)],
            "last_updated": pd.to_datetime(["2018-01-01"] * n),
        }
    )


def test_first_run_trains() -> None:
    result = detection.detect(_apps(["A", "B"]), None, threshold=100)
    assert result.should_train and result.first_run and result.new_apps == 2


def test_counts_by_identity_not_rows(tmp_path: Path) -> None:
    base = _apps([f"app {i}" for i in range(10)])
    detection.write_state(tmp_path / "s.json", base, "1", "run", "digest")
    state = detection.load_state(tmp_path / "s.json")
    # 3 re-listed known apps (one with more reviews: an update) and 2 new apps
    grown = pd.concat(
        [base, _apps(["APP 1", "app 2", "app 3"], [10, 99, 10]), _apps(["new one", "new two"])],
        ignore_index=True,
    )
    result = detection.detect(grown, state, threshold=2)
    assert result.new_apps == 2
    assert result.updated_apps == 1
    assert result.should_train and not result.first_run
    assert detection.detect(grown, state, threshold=3).should_train is False


def test_below_threshold_says_why_and_force_overrides(tmp_path: Path) -> None:
    base = _apps(["a", "b"])
    detection.write_state(tmp_path / "s.json", base, "4", "run", "d")
    state = detection.load_state(tmp_path / "s.json")
    quiet = detection.detect(base, state, threshold=100)
    assert not quiet.should_train
    assert "only 0 new apps" in quiet.reason and "threshold 100" in quiet.reason
    forced = detection.detect(base, state, threshold=100, force=True)
    assert forced.should_train and "forced" in forced.reason


def test_unreadable_state_is_a_first_run(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text("{not json")
    assert detection.load_state(tmp_path / "s.json") is None
    (tmp_path / "s.json").write_text('{"version": 99}')
    assert detection.load_state(tmp_path / "s.json") is None
    assert detection.load_state(tmp_path / "missing.json") is None


def test_state_write_is_atomic_and_complete(tmp_path: Path) -> None:
    path = detection.write_state(tmp_path / "m" / "s.json", _apps(["x", "y"]), "7", "r1", "dd")
    state = detection.load_state(path)
    assert state["model_version"] == "7" and set(state["apps"]) == {"x", "y"}
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]  # no temp file left behind
