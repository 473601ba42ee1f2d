"""Generated Play Store apps, so a fresh clone runs end to end without downloading anything.

Rows use the raw scrape's styles (`19M`, `"10,000+"`, `$4.99`, `"January 7, 2018"`) so they go
through the real parser. The rating comes from a latent score of the other features plus noise:
learnable but not perfectly (ROC-AUC about 0.77 for a forest, 0.69 for a logistic regression),
much like the real file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lib.atomic_files import atomic_open
from lib.errors import DataError
from lib.pipeline.app_identity import app_key
from lib.pipeline.data import RAW_COLUMNS, check_columns, read_rows

logger = logging.getLogger(__name__)

# The "scrape date": generated updates fall between 2010-05-21 and this day.
SCRAPE_DATE = np.datetime64("2018-08-08")
MAX_AGE_DAYS = 3000

# category: (share of apps, effect on the latent rating score, genres, name words)
_CATEGORIES: dict[str, tuple[float, float, list[str], list[str]]] = {
    "FAMILY": (
        0.182,
        0.05,
        ["Entertainment", "Education", "Simulation", "Casual", "Puzzle", "Educational;Education"],
        ["Kids", "Family", "Pretend", "Toddler"],
    ),
    "GAME": (
        0.106,
        0.30,
        ["Action", "Arcade", "Racing", "Adventure", "Card", "Board", "Puzzle", "Word"],
        ["Quest", "Racer", "Saga", "Legends", "Blast"],
    ),
    "TOOLS": (0.078, -0.15, ["Tools"], ["Cleaner", "Flashlight", "Scanner", "Toolkit"]),
    "MEDICAL": (0.043, -0.20, ["Medical"], ["Dose", "Clinic", "Anatomy", "Nurse"]),
    "BUSINESS": (0.042, -0.35, ["Business"], ["Invoice", "Office", "CRM", "Meeting"]),
    "PRODUCTIVITY": (0.039, 0.00, ["Productivity"], ["Notes", "Tasks", "Planner", "Docs"]),
    "PERSONALIZATION": (0.036, 0.20, ["Personalization"], ["Theme", "Launcher", "Icons"]),
    "COMMUNICATION": (0.036, -0.05, ["Communication"], ["Chat", "Messenger", "Call", "Mail"]),
    "SPORTS": (0.035, -0.05, ["Sports"], ["Score", "League", "Football", "Coach"]),
    "LIFESTYLE": (0.035, -0.25, ["Lifestyle"], ["Horoscope", "Style", "Habits", "Quotes"]),
    "FINANCE": (0.034, -0.05, ["Finance"], ["Budget", "Wallet", "Banking", "Expense"]),
    "HEALTH_AND_FITNESS": (0.031, 0.15, ["Health & Fitness"], ["Workout", "Yoga", "Steps"]),
    "PHOTOGRAPHY": (0.031, 0.20, ["Photography"], ["Camera", "Photo", "Collage", "Filter"]),
    "SOCIAL": (0.027, 0.15, ["Social"], ["Friends", "Community", "Social", "Stories"]),
    "NEWS_AND_MAGAZINES": (0.026, -0.20, ["News & Magazines"], ["News", "Daily", "Headlines"]),
    "SHOPPING": (0.024, 0.25, ["Shopping"], ["Deals", "Shop", "Coupons", "Market"]),
    "TRAVEL_AND_LOCAL": (0.024, -0.05, ["Travel & Local"], ["Trip", "Travel", "City", "Guide"]),
    "DATING": (0.022, -0.35, ["Dating"], ["Match", "Date", "Singles", "Love"]),
    "BOOKS_AND_REFERENCE": (0.021, 0.05, ["Books & Reference"], ["Bible", "Dictionary", "Books"]),
    "VIDEO_PLAYERS": (0.016, -0.10, ["Video Players & Editors"], ["Video", "Player", "Movie"]),
    "EDUCATION": (0.014, 0.60, ["Education"], ["Learn", "Vocabulary", "Math", "Lessons"]),
    "ENTERTAINMENT": (0.014, 0.05, ["Entertainment"], ["Fun", "Jokes", "Prank", "Show"]),
    "MAPS_AND_NAVIGATION": (0.013, -0.05, ["Maps & Navigation"], ["Maps", "GPS", "Route"]),
    "FOOD_AND_DRINK": (0.012, 0.00, ["Food & Drink"], ["Recipes", "Kitchen", "Delivery"]),
    "HOUSE_AND_HOME": (0.008, -0.10, ["House & Home"], ["Home", "Decor", "Rent"]),
    "AUTO_AND_VEHICLES": (0.008, -0.15, ["Auto & Vehicles"], ["Car", "Auto", "Parking"]),
    "LIBRARIES_AND_DEMO": (0.008, -0.25, ["Libraries & Demo"], ["Demo", "Library", "Sample"]),
    "WEATHER": (0.008, 0.10, ["Weather"], ["Weather", "Forecast", "Radar"]),
    "ART_AND_DESIGN": (0.006, 0.40, ["Art & Design"], ["Drawing", "Coloring", "Sketch"]),
    "EVENTS": (0.006, -0.05, ["Events"], ["Events", "Tickets", "Festival"]),
    "COMICS": (0.006, 0.05, ["Comics"], ["Comics", "Manga", "Strips"]),
    "PARENTING": (0.006, 0.00, ["Parenting"], ["Baby", "Pregnancy", "Parenting"]),
    "BEAUTY": (0.005, -0.10, ["Beauty"], ["Makeup", "Hairstyle", "Beauty"]),
}
CATEGORIES: list[str] = list(_CATEGORIES)

_ADJECTIVES = [
    "Pocket", "Smart", "Super", "Easy", "Simple", "Daily", "Quick", "Pro", "My", "Happy", "Magic",
    "Tiny", "Mega", "Free", "Royal", "Bright", "Cool", "Lucky", "Total", "Ultimate", "Classic",
    "Clever", "Zen", "Turbo", "Green", "Blue", "Golden", "Secret", "Wild", "True",
]  # fmt: skip
_SUFFIXES = [
    "Planner", "Master", "Studio", "Hub", "Lite", "Plus", "Go", "Box", "World", "Manager", "Live",
    "Guide", "Maker", "Tracker", "Center", "HD", "Assistant", "Lab", "Kit", "Pal",
]  # fmt: skip

_INSTALL_TIERS = np.array(
    [1, 5, 10, 50, 100, 500, 1e3, 5e3, 1e4, 5e4, 1e5, 5e5, 1e6, 5e6, 1e7, 5e7, 1e8, 5e8, 1e9]
)
_INSTALL_SHARES = np.array(
    [.007, .008, .036, .019, .066, .030, .084, .044, .097, .044, .108, .050, .146, .069, .116,
     .027, .038, .007, .004]
)  # fmt: skip
_CONTENT_RATINGS = ["Everyone", "Teen", "Mature 17+", "Everyone 10+", "Adults only 18+", "Unrated"]
_CONTENT_SHARES = np.array([0.8035, 0.1115, 0.046, 0.038, 0.0007, 0.0003])
_CONTENT_EFFECT = np.array([0.0, -0.05, -0.30, 0.15, -0.40, 0.0])
_PRICES = np.array([0.99, 1.49, 1.99, 2.49, 2.99, 3.99, 4.99, 5.99, 6.99, 9.99, 14.99, 29.99])
_PRICE_SHARES = np.array([0.22, 0.07, 0.12, 0.04, 0.19, 0.09, 0.11, 0.05, 0.03, 0.04, 0.02, 0.02])
_ANDROID = [
    "4.1 and up", "4.0.3 and up", "4.0 and up", "4.4 and up", "2.3 and up", "5.0 and up",
    "4.2 and up", "2.3.3 and up", "2.2 and up", "4.3 and up", "3.0 and up", "6.0 and up",
]  # fmt: skip
_ANDROID_SHARES = np.array([26, 16, 14.5, 10.5, 7, 6.5, 4, 3, 2.5, 2.5, 2.5, 1])
_NEW_ANDROID = ["7.0 and up", "7.1 and up", "8.0 and up"]  # never in the base data
_MONTHS = np.array(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September",
     "October", "November", "December"]
)  # fmt: skip

SHARE_REPEATED = 0.05  # listings that repeat an app (another category, or an identical row)
SHARE_VARIES = 0.15  # sizes "Varies with device"
SHARE_PAID = 0.07
NOISE_SD = 0.6  # noise on the latent score (larger for apps with few reviews): keeps it hard
# Latent score -> rating: rating = 5.05 - exp(_R_LOG_SCALE - _R_SLOPE * score), so ratings are
# skewed towards 4..5 like the store's; about 77% of rated apps end up above 4.0.
_R_LOG_SCALE = np.log(0.72)
_R_SLOPE = 0.55


def _pick(rng: np.random.Generator, n: int, shares: np.ndarray) -> np.ndarray:
    return rng.choice(len(shares), size=n, p=shares / shares.sum())


def _format_size(size_mb: np.ndarray, varies: np.ndarray) -> list[str]:
    out = []
    for mb, var in zip(size_mb.tolist(), varies.tolist(), strict=True):
        if var:
            out.append("Varies with device")
        elif round(mb * 1000) < 1000:
            out.append(f"{max(int(round(mb * 1000)), 8)}k")
        elif round(mb, 1) < 10:
            out.append(f"{mb:.1f}M")
        else:
            out.append(f"{int(round(mb))}M")
    return out


def _names(rng: np.random.Generator, categories: np.ndarray, ids: np.ndarray) -> list[str]:
    width = max(4, len(str(int(ids.max()) if len(ids) else 0)))
    adjectives = rng.integers(0, len(_ADJECTIVES), len(ids))
    suffixes = rng.integers(0, len(_SUFFIXES), len(ids))
    topic_pick = rng.random(len(ids))
    names = []
    columns = (categories, adjectives, suffixes, topic_pick, ids)
    for cat, adj, suf, pick, app_id in zip(*(c.tolist() for c in columns), strict=True):
        words = _CATEGORIES[cat][3]
        topic = words[int(pick * len(words))]
        names.append(f"{_ADJECTIVES[adj]} {topic} {_SUFFIXES[suf]} {int(app_id):0{width}d}")
    return names


def _rating_text(rng: np.random.Generator, score: np.ndarray, reviews: np.ndarray) -> np.ndarray:
    """The `Rating` column from the latent score: noisier with few reviews (a handful of votes
    makes the average erratic), empty for unrated apps (no or very few reviews; features only)."""
    m = len(score)
    noise_sd = NOISE_SD * (1.0 + 1.5 / np.sqrt(reviews + 1))
    score = score + rng.normal(0.0, 1.0, m) * noise_sd
    rating = np.clip(5.05 - np.exp(_R_LOG_SCALE - _R_SLOPE * score), 1.0, 5.0)
    rating = np.round(rating, 1)
    unrated = (reviews == 0) | ((reviews < 20) & (rng.random(m) < 0.2)) | (rng.random(m) < 0.02)
    return np.where(unrated, "", np.char.mod("%.1f", rating))


def _generate(
    n: int, seed: int, start_id: int, share_repeated: float, shifted: bool = False
) -> pd.DataFrame:
    """Generate n listings; `share_repeated` of them repeat an earlier app of the same batch;
    `shifted`: apps of a new generation whose rating follows other features (_shifted_score)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    n_repeat = int(round(n * share_repeated)) if n > 1 else 0
    m = n - n_repeat  # distinct apps

    cat_idx = _pick(rng, m, np.array([v[0] for v in _CATEGORIES.values()]))
    categories = np.array(CATEGORIES)[cat_idx]
    cat_effect = np.array([v[1] for v in _CATEGORIES.values()])[cat_idx]

    paid = rng.random(m) < SHARE_PAID
    price = np.where(paid, _PRICES[_pick(rng, m, _PRICE_SHARES)], 0.0)
    tier = _pick(rng, m, _INSTALL_SHARES)
    tier = np.where(paid, np.maximum(tier - rng.integers(2, 6, m), 0), tier)  # paid: fewer
    installs = _INSTALL_TIERS[tier]
    # Reviews per install varies a lot (log10 ratio about N(-1.7, 0.55)); never above installs.
    ratio = 10 ** rng.normal(-1.7, 0.55, m)
    reviews = np.minimum(np.floor(installs * rng.uniform(1, 5, m) * ratio), installs)

    varies = rng.random(m) < SHARE_VARIES
    size_mb = np.clip(np.exp(rng.normal(np.log(12), 1.0, m)), 0.008, 100.0)
    age_days = rng.exponential(260, m) * rng.choice([1, 3], m, p=[0.8, 0.2])
    age_days = np.minimum(age_days, MAX_AGE_DAYS)
    age_days = np.floor(age_days).astype(int)
    content = _pick(rng, m, _CONTENT_SHARES)

    if shifted:  # targets Android 7+, size and version always given
        varies[:] = False
    log_size = np.log(size_mb / 12.0)
    engagement = np.log10((reviews + 1) / installs) + 1.3  # reviews per install, 0 = typical
    if shifted:
        score = _shifted_score(log_size, engagement, paid, content)
    else:
        score = _latent_score(reviews, engagement, age_days, categories, cat_effect, content,
                              paid, installs, varies, log_size)  # fmt: skip
    rating_text = _rating_text(rng, score, reviews)

    dates = _update_dates(age_days)
    genres = [
        _CATEGORIES[c][2][int(u * len(_CATEGORIES[c][2]))]
        for c, u in zip(categories.tolist(), rng.random(m).tolist(), strict=True)
    ]
    versions = _versions(rng, m)
    android = np.array(_ANDROID)[_pick(rng, m, _ANDROID_SHARES)]
    if shifted:
        android = np.array(_NEW_ANDROID)[rng.integers(0, len(_NEW_ANDROID), m)]

    frame = pd.DataFrame(
        {
            "App": _names(rng, categories, np.arange(start_id, start_id + m)),
            "Category": categories,
            "Rating": rating_text,
            "Reviews": reviews.astype(np.int64).astype(str),
            "Size": _format_size(size_mb, varies),
            "Installs": [f"{int(v):,}+" for v in installs],
            "Type": np.where(paid, "Paid", "Free"),
            "Price": [f"${p:.2f}" if p > 0 else "0" for p in price.tolist()],
            "Content Rating": np.array(_CONTENT_RATINGS)[content],
            "Genres": genres,
            "Last Updated": dates,
            "Current Ver": np.where(varies, "Varies with device", versions),
            "Android Ver": np.where(varies, "Varies with device", android),
        },
        columns=RAW_COLUMNS,
    )
    if n_repeat == 0:
        return frame.astype(str)
    return _with_repeats(rng, frame, n_repeat)


def _latent_score(
    reviews: np.ndarray, engagement: np.ndarray, age_days: np.ndarray, categories: np.ndarray,
    cat_effect: np.ndarray, content: np.ndarray, paid: np.ndarray, installs: np.ndarray,
    varies: np.ndarray, log_size: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """What makes an app well rated here (all from features, none from the rating). Several
    effects are non-linear or interactions, as in the real data where a random forest clearly
    beats a logistic regression."""
    log_rev = np.log10(reviews + 1)
    years = age_days / 365.0
    big_is_good = np.isin(categories, ["GAME", "FAMILY", "PHOTOGRAPHY", "VIDEO_PLAYERS"])
    return (
        0.5 * ((log_rev > 2.5) & (log_rev < 6.0))  # established, not yet mass-market polarized
        - 0.9 * np.minimum(np.abs(engagement), 2.0)  # unusual review rates: complaints or fakes
        + np.where(years < 0.15, 0.3, 0.0)  # freshly updated
        - 0.3 * np.clip(np.log2(np.maximum(years, 1e-3)) + 0.5, 0.0, 3.0)  # abandoned apps slip
        + 1.0 * cat_effect
        + _CONTENT_EFFECT[content]
        + np.where(paid, np.where(installs >= 1e4, 0.6, -0.25), 0.0)  # paid: only hits do well
        + np.where(varies, 0.15, np.where(big_is_good, 0.25, -0.2) * log_size)
        + 0.2
    )


def _shifted_score(
    log_size: np.ndarray, engagement: np.ndarray, paid: np.ndarray, content: np.ndarray
) -> np.ndarray:
    """The new generation's users (Android 7.0 and up) rate on other things: light apps, many
    reviews per install and paid apps do well, whatever their category, age or audience size;
    a model trained before them has never seen this (and cannot tell them apart but by their
    Android version)."""
    return (
        -0.9 * np.clip(log_size, -3.0, 3.0)
        + 0.9 * np.clip(engagement, -2.0, 2.0)
        + np.where(paid, 1.0, 0.0)
        - 0.5 * _CONTENT_EFFECT[content]
        + 0.3
    )


def _update_dates(age_days: np.ndarray) -> list[str]:
    """`Last Updated` as the Play Store writes it ("January 7, 2018"), `age_days` before the
    scrape."""
    stamp = pd.DatetimeIndex(SCRAPE_DATE - age_days.astype("timedelta64[D]"))
    months = _MONTHS[stamp.month.to_numpy() - 1].tolist()
    return [
        f"{month} {day}, {year}"
        for month, day, year in zip(months, stamp.day.tolist(), stamp.year.tolist(), strict=True)
    ]


def _versions(rng: np.random.Generator, m: int) -> list[str]:
    """`Current Ver` strings: half major.minor.patch, half major.minor."""
    major = rng.integers(1, 9, m)
    minor = rng.integers(0, 10, m)
    patch = rng.integers(0, 20, m)
    three_part = rng.random(m) < 0.5
    parts = zip(*(x.tolist() for x in (major, minor, patch, three_part)), strict=True)
    return [f"{a}.{b}.{c}" if t else f"{a}.{b}" for a, b, c, t in parts]


def _with_repeats(rng: np.random.Generator, frame: pd.DataFrame, n_repeat: int) -> pd.DataFrame:
    """Repeated listings appear later in the file than the original: half identical rows (scraped
    twice), half the same app under another category with a few more reviews."""
    m = len(frame)
    source = rng.integers(0, m, n_repeat)
    repeats = frame.iloc[source].reset_index(drop=True)
    moved = rng.random(n_repeat) < 0.5
    new_cat = np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), n_repeat)]
    repeats.loc[moved, "Category"] = new_cat[moved]
    more = (repeats["Reviews"].astype(np.int64) * rng.uniform(1.0, 1.02, n_repeat)).astype(np.int64)
    repeats.loc[moved, "Reviews"] = more[moved].astype(str)
    position = np.concatenate([np.arange(m), source + rng.uniform(0.5, m - source + 0.5)])
    order = np.argsort(position, kind="stable")
    return pd.concat([frame, repeats], ignore_index=True).iloc[order].reset_index(drop=True)


def generate_apps(n: int = 10_000, seed: int = 42, start_id: int = 0) -> pd.DataFrame:
    """Generate n listings in the raw Play Store format; deterministic for a given seed."""
    return _generate(n, seed, start_id, SHARE_REPEATED)


def _write_atomic(path: Path, write) -> Path:
    with atomic_open(path, newline="") as out:
        write(out)
    return path


def write_default_dataset(path: str | Path, n: int = 10_000, seed: int = 42) -> Path:
    """Write the generated default data set atomically, so a crash never leaves half a file."""
    path = Path(path)
    frame = generate_apps(n=n, seed=seed)
    _write_atomic(path, lambda out: frame.to_csv(out, index=False, lineterminator="\n"))
    logger.info("wrote %d generated apps to %s (seed %d)", len(frame), path, seed)
    return path


def ensure_dataset(path: str | Path, n: int = 10_000, seed: int = 42) -> bool:
    """Generate the default data set when the file is absent; True when it was generated.

    A fresh clone has no data: this is what lets `python runner.py` run with no download.
    """
    path = Path(path)
    if path.exists():
        return False
    write_default_dataset(path, n=n, seed=seed)
    return True


def append_new_apps(
    path: str | Path, n: int = 150, seed: int | None = None, shifted: bool = False
) -> pd.DataFrame:
    """Append n apps that are new to the file (by app_key) to simulate a batch of new data.

    The default seed is the file's current row count: repeated calls give different batches,
    and the same history gives the same batches. `shifted`: a new generation of apps (Android
    7.0 and up) whose rating depends on other features, so a model trained before them is
    measurably worse on them (the demo's retraining that pays off).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: cannot append new apps, the file does not exist")
    check_columns(path)
    header, rows = read_rows(path)
    app_pos = header.index("App")
    known = {app_key(fields[app_pos]) for _, fields in rows if len(fields) > app_pos}
    n_rows = len(rows)
    seed = n_rows if seed is None else seed

    batch = pd.DataFrame(columns=RAW_COLUMNS)
    start_id, attempt = n_rows, 0
    while len(batch) < n:
        candidates = _generate(
            n - len(batch), seed + attempt, start_id, share_repeated=0.0, shifted=shifted
        )
        keys = candidates["App"].map(app_key)
        fresh = candidates[~keys.isin(known)]
        known.update(keys[~keys.isin(known)])
        batch = pd.concat([batch, fresh], ignore_index=True)
        start_id += len(candidates)
        attempt += 1
        if attempt > 100:
            raise DataError(f"{path}: could not generate {n} new app names")

    out_rows = batch.reindex(columns=header, fill_value="").astype(str)
    original = path.read_bytes()

    def write(out) -> None:
        out.write(original.decode("utf-8"))
        if original and not original.endswith(b"\n"):
            out.write("\n")
        out_rows.to_csv(out, index=False, header=False, lineterminator="\n")

    _write_atomic(path, write)
    logger.info("appended %d new apps to %s (seed %d)", len(batch), path, seed)
    return batch.reset_index(drop=True)
