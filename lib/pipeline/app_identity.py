"""App identity: which listings are the same app, and which one of its listings counts.

The Play Store files list some apps several times (different scrape dates, categories, quotes
around the name). Detection, the holdout split and training all need one identity per app, so
this is where it is defined.
"""

from __future__ import annotations

import math
import re
import unicodedata

import numpy as np
import pandas as pd

_SPACES = re.compile(r"\s+")
_EDGE_CHARS = "\"'`´‘’‚‛“”„‟«»‹›"


def _is_edge_junk(ch: str) -> bool:
    return ch.isspace() or ch in _EDGE_CHARS or unicodedata.category(ch).startswith("P")


def app_key(name: str) -> str:
    """Normalize an app name so repeated listings of one app compare equal across files."""
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return ""
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", str(name)).casefold()).strip()
    start, end = 0, len(text)
    while start < end and _is_edge_junk(text[start]):
        start += 1
    while end > start and _is_edge_junk(text[end - 1]):
        end -= 1
    # A name made only of punctuation keeps its characters rather than collapsing to "".
    return text[start:end] or text


def latest_per_app(apps: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per app (most recent update, then most reviews, then last listed).

    Repeated listings of an app would otherwise leak between train and test splits.
    """
    if apps.empty:
        return apps.reset_index(drop=True)
    keys = apps["app_key"] if "app_key" in apps else apps["app"].map(app_key)
    order = pd.DataFrame(
        {
            "key": keys.to_numpy(),
            "updated": apps["last_updated"].to_numpy(),
            "reviews": apps["reviews"].to_numpy(dtype=float),
            "pos": np.arange(len(apps)),
        }
    )
    ranked = order.sort_values(["key", "updated", "reviews", "pos"], na_position="first")
    keep = np.sort(ranked.drop_duplicates("key", keep="last")["pos"].to_numpy())
    return apps.iloc[keep].reset_index(drop=True)
