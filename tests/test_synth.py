"""Tests of lib.pipeline.synth: format, validity, realism and learnability of the generated apps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.errors import DataError
from lib.pipeline.app_identity import app_key, latest_per_app
from lib.pipeline.data import RAW_COLUMNS, parse_records, read_apps
from lib.pipeline.synth import CATEGORIES, append_new_apps, generate_apps, write_default_dataset

# The category names of the real scrape (33 of them).
REAL_CATEGORIES = {
    "ART_AND_DESIGN", "AUTO_AND_VEHICLES", "BEAUTY", "BOOKS_AND_REFERENCE", "BUSINESS", "COMICS",
    "COMMUNICATION", "DATING", "EDUCATION", "ENTERTAINMENT", "EVENTS", "FAMILY", "FINANCE",
    "FOOD_AND_DRINK", "GAME", "HEALTH_AND_FITNESS", "HOUSE_AND_HOME", "LIBRARIES_AND_DEMO",
    "LIFESTYLE", "MAPS_AND_NAVIGATION", "MEDICAL", "NEWS_AND_MAGAZINES", "PARENTING",
    "PERSONALIZATION", "PHOTOGRAPHY", "PRODUCTIVITY", "SHOPPING", "SOCIAL", "SPORTS", "TOOLS",
    "TRAVEL_AND_LOCAL", "VIDEO_PLAYERS", "WEATHER",
}  # fmt: skip


@pytest.fixture(scope="module")
def apps10k() -> pd.DataFrame:
    return generate_apps()


@pytest.fixture(scope="module")
def typed10k(apps10k: pd.DataFrame) -> pd.DataFrame:
    result = parse_records(apps10k, source="synth")
    assert result.n_quarantined == 0, result.quarantine["reason"].head().tolist()
    return result.apps


def test_deterministic_for_a_seed() -> None:
    pd.testing.assert_frame_equal(generate_apps(500, seed=3), generate_apps(500, seed=3))
    assert not generate_apps(500, seed=3).equals(generate_apps(500, seed=4))


def test_size_and_start_id() -> None:
    frame = generate_apps(20, seed=1, start_id=5000)
    assert len(frame) == 20
    assert generate_apps(0).empty
    ids = frame["App"].str.extract(r"(\d+)$")[0].astype(int)
    assert ids.min() >= 5000


def test_raw_format(apps10k: pd.DataFrame) -> None:
    assert list(apps10k.columns) == RAW_COLUMNS
    assert all(isinstance(v, str) for v in apps10k.iloc[:200].to_numpy().ravel())
    patterns = {
        "Rating": r"(|[1-5]\.\d)",
        "Reviews": r"\d+",
        "Size": r"(\d+M|\d\.\dM|\d+k|Varies with device)",
        "Installs": r"\d{1,3}(,\d{3})*\+",
        "Type": r"(Free|Paid)",
        "Price": r"(0|\$\d+\.\d\d)",
        "Last Updated": r"[A-Z][a-z]+ \d{1,2}, 20[01]\d",
        "Android Ver": r"(\d(\.\d)+ and up|Varies with device)",
        "Current Ver": r"(\d+\.\d+(\.\d+)?|Varies with device)",
    }
    for column, pattern in patterns.items():
        bad = apps10k.loc[~apps10k[column].str.fullmatch(pattern), column]
        assert bad.empty, f"{column}: {bad.head().tolist()}"
    assert set(apps10k["Category"]) <= REAL_CATEGORIES
    assert set(CATEGORIES) == REAL_CATEGORIES
    assert set(apps10k["Content Rating"]) <= {
        "Everyone", "Teen", "Mature 17+", "Everyone 10+", "Adults only 18+", "Unrated",
    }  # fmt: skip
    assert apps10k["Genres"].str.len().gt(0).all()
    assert apps10k["App"].str.fullmatch(r"[A-Z][\w+ ]+ \d{4,}").all()
    paid = apps10k["Type"] == "Paid"
    assert (apps10k.loc[paid, "Price"] != "0").all() and (apps10k.loc[~paid, "Price"] == "0").all()


def test_realistic_shares(apps10k: pd.DataFrame, typed10k: pd.DataFrame) -> None:
    assert 0.07 <= typed10k["rating"].isna().mean() <= 0.13
    assert 0.12 <= (apps10k["Size"] == "Varies with device").mean() <= 0.18
    assert 0.05 <= (typed10k["type"] == "Paid").mean() <= 0.09
    assert (apps10k["Size"].str.endswith("k")).any()
    repeated = 1 - typed10k["app_key"].nunique() / len(typed10k)
    assert repeated == pytest.approx(0.05, abs=0.005)
    # Repeats: some identical rows, some the same app under another category.
    assert apps10k.duplicated().sum() > 100
    per_app = typed10k.groupby("app_key")["category"].nunique()
    assert (per_app > 1).sum() > 100
    dates = typed10k["last_updated"]
    assert dates.min() >= pd.Timestamp("2010-01-01")
    assert dates.max() <= pd.Timestamp("2018-08-08")
    assert (dates.dt.year == 2018).mean() > 0.4
    assert (typed10k["reviews"] <= typed10k["installs"]).mean() > 0.99
    corr = np.corrcoef(np.log1p(typed10k["reviews"]), np.log1p(typed10k["installs"]))[0, 1]
    assert corr > 0.8


def test_class_balance(typed10k: pd.DataFrame) -> None:
    rated = typed10k["rating"].dropna()
    assert 0.70 <= (rated > 4.0).mean() <= 0.80
    assert rated.between(1.0, 5.0).all()
    assert rated.nunique() > 20  # not a handful of values


def test_generated_file_passes_read_apps(tmp_path: Path) -> None:
    path = write_default_dataset(tmp_path / "sub" / "apps.csv", n=3000, seed=9)
    assert path == tmp_path / "sub" / "apps.csv"
    assert [p.name for p in path.parent.iterdir()] == ["apps.csv"]  # no temp file left
    result = read_apps(path)
    assert (len(result.apps), result.n_quarantined) == (3000, 0)
    assert path.read_text().splitlines()[0] == ",".join(RAW_COLUMNS)
    assert '"' in path.read_text()  # "10,000+" and "January 7, 2018" are quoted, as in the scrape


def test_append_new_apps(tmp_path: Path) -> None:
    path = write_default_dataset(tmp_path / "apps.csv", n=1000, seed=1)
    before = read_apps(path).apps
    batch = append_new_apps(path, n=150)
    assert list(batch.columns) == RAW_COLUMNS
    assert len(batch) == 150
    new_keys = batch["App"].map(app_key)
    assert new_keys.is_unique
    assert not set(new_keys) & set(before["app_key"])
    after = read_apps(path)
    assert (len(after.apps), after.n_quarantined) == (1150, 0)
    assert after.apps["app"].tail(150).tolist() == batch["App"].tolist()

    second = append_new_apps(path, n=120)
    assert not set(second["App"].map(app_key)) & set(after.apps["app_key"])
    assert len(read_apps(path).apps) == 1270


def test_append_is_reproducible(tmp_path: Path) -> None:
    one = write_default_dataset(tmp_path / "one.csv", n=300, seed=2)
    two = write_default_dataset(tmp_path / "two.csv", n=300, seed=2)
    pd.testing.assert_frame_equal(append_new_apps(one, n=50), append_new_apps(two, n=50))
    assert one.read_bytes() == two.read_bytes()
    assert not append_new_apps(one, n=50).equals(append_new_apps(two, n=50, seed=12345))


def test_append_to_file_without_trailing_newline(tmp_path: Path) -> None:
    path = write_default_dataset(tmp_path / "apps.csv", n=50, seed=3)
    path.write_text(path.read_text().rstrip("\n"))
    append_new_apps(path, n=10)
    assert (len(read_apps(path).apps), read_apps(path).n_quarantined) == (60, 0)


def test_append_needs_existing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        append_new_apps(tmp_path / "absent.csv")


@pytest.mark.component
def test_rating_is_learnable_but_noisy() -> None:
    import sklearn
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    assert sklearn.__version__
    apps = latest_per_app(parse_records(generate_apps(5000, seed=11)).apps)
    apps = apps[apps["rating"].notna()]
    features = pd.concat(
        [
            pd.DataFrame(
                {
                    "log_reviews": np.log1p(apps["reviews"]),
                    "log_installs": np.log1p(apps["installs"]),
                    "size_mb": apps["size_mb"].fillna(-1),
                    "price": apps["price"],
                    "days": (pd.Timestamp("2018-08-08") - apps["last_updated"]).dt.days,
                    "paid": (apps["type"] == "Paid").astype(int),
                }
            ),
            pd.get_dummies(apps[["category", "content_rating"]]).astype(int),
        ],
        axis=1,
    )
    target = (apps["rating"] > 4.0).astype(int)
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.3, random_state=0, stratify=target
    )
    model = RandomForestClassifier(n_estimators=100, n_jobs=1, random_state=0)
    model.fit(x_train, y_train)
    auc = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
    assert 0.70 <= auc <= 0.92, auc


def test_rating_does_not_leak_through_names_or_order() -> None:
    apps = parse_records(generate_apps(3000, seed=5)).apps
    rated = apps[apps["rating"].notna()]
    ids = rated["app"].str.extract(r"(\d+)$")[0].astype(int)
    assert abs(np.corrcoef(ids, rated["rating"])[0, 1]) < 0.1
    assert abs(np.corrcoef(rated["app"].str.len(), rated["rating"])[0, 1]) < 0.1


def test_a_shifted_batch_is_new_apps_of_a_new_generation_and_reproducible(tmp_path: Path) -> None:
    one = write_default_dataset(tmp_path / "one.csv", n=300, seed=2)
    two = write_default_dataset(tmp_path / "two.csv", n=300, seed=2)
    batch = append_new_apps(one, n=80, seed=9, shifted=True)
    pd.testing.assert_frame_equal(batch, append_new_apps(two, n=80, seed=9, shifted=True))
    assert set(batch["Android Ver"]) <= {"7.0 and up", "7.1 and up", "8.0 and up"}
    base = read_apps(one).apps.head(300)
    assert not set(base["android_ver"]) & set(batch["Android Ver"])  # tellable apart
    after = read_apps(one)
    assert (len(after.apps), after.n_quarantined) == (380, 0)


@pytest.mark.component
def test_on_a_shifted_batch_a_model_trained_before_it_is_worse_than_one_retrained(
    tmp_path: Path,
) -> None:
    """What the demo relies on: the new generation's rating follows other features, so retraining
    on old + new apps beats the model trained before them on a holdout of both, by far."""
    from sklearn.metrics import roc_auc_score

    from lib.pipeline import training

    path = write_default_dataset(tmp_path / "apps.csv", n=3000, seed=7)
    old = training.labeled_data(read_apps(path).apps, 4.0)
    append_new_apps(path, n=1500, seed=1000, shifted=True)
    both = training.labeled_data(read_apps(path).apps, 4.0)
    train, test = training.holdout_split(both.keys, both.y, 0.2, 42)
    seen = ~old.keys.isin(both.keys.iloc[test]).to_numpy()  # never a holdout app

    def fitted(X: pd.DataFrame, y: pd.Series):
        model = training.build_candidate("random_forest", 42, 60, groups=["engagement", "versions"])
        return model.fit(X, y)

    before = fitted(old.X[seen], old.y[seen])
    after = fitted(both.X.iloc[train], both.y.iloc[train])
    X_test, y_test = both.X.iloc[test], both.y.iloc[test]
    auc_before = roc_auc_score(y_test, before.predict_proba(X_test)[:, 1])
    auc_after = roc_auc_score(y_test, after.predict_proba(X_test)[:, 1])
    assert auc_after - auc_before > 0.05, (auc_before, auc_after)
