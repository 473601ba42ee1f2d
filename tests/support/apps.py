"""Typed apps (lib.pipeline.data's columns) for the training and registry tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def typed_apps(n: int, seed: int = 0) -> pd.DataFrame:
    """Typed apps (lib.pipeline.data's columns) whose rating depends on reviews, with noise."""
    rng = np.random.default_rng(seed)
    reviews = rng.lognormal(7, 2, n)
    rating = np.clip(3.6 + 0.12 * np.log1p(reviews) + rng.normal(0, 0.3, n), 1, 5).round(1)
    return pd.DataFrame(
        {
            "app": [f"App {i}" for i in range(n)],
            "app_key": [f"app {i}" for i in range(n)],
            "category": rng.choice(["GAME", "TOOLS", "FAMILY"], n),
            "rating": rating,
            "reviews": reviews.round(),
            "size_mb": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(1, 100, n)),
            "installs": reviews * 50,
            "type": rng.choice(["Free", "Paid"], n, p=[0.9, 0.1]),
            "price": 0.0,
            "content_rating": "Everyone",
            "genres": "x",
            "last_updated": pd.to_datetime("2018-01-01")
            + pd.to_timedelta(rng.integers(0, 900, n), "D"),
        }
    )


def raw_file_split(path: Path) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """The raw Play Store file's training inputs and labels and its held-out inputs, split as
    02 train splits them (rated above 4.0; 20% held out by app identity, seed 42)."""
    from lib.pipeline import data, training

    lab = training.labeled_data(data.read_apps(path).apps, 4.0)
    train_idx, test_idx = training.holdout_split(lab.keys, lab.y, 0.2, 42)
    return lab.X.iloc[train_idx], lab.y.iloc[train_idx].to_numpy(), lab.X.iloc[test_idx]
