"""Tests of pipeline.data: parsing every style, quarantine reasons, identity, and the real files."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import values
from lib.errors import DataError, MissingColumnsError
from lib.pipeline.app_identity import app_key, latest_per_app
from lib.pipeline.data import (
    QUARANTINE_COLUMNS,
    RAW_COLUMNS,
    REQUIRED_COLUMNS,
    TYPED_COLUMNS,
    check_columns,
    parse_records,
    read_apps,
    write_quarantine,
)
from tests.conftest import SHARED_DATA as REAL  # noqa: E402


@pytest.fixture
def needs_real_data() -> None:
    from tests.conftest import require_shared_data

    require_shared_data()


needs_real = pytest.mark.usefixtures("needs_real_data")

GOOD = {
    "App": "Photo Editor & Candy Camera",
    "Category": "ART_AND_DESIGN",
    "Rating": "4.1",
    "Reviews": "159",
    "Size": "19M",
    "Installs": "10,000+",
    "Type": "Free",
    "Price": "0",
    "Content Rating": "Everyone",
    "Genres": "Art & Design",
    "Last Updated": "January 7, 2018",
    "Current Ver": "1.0.0",
    "Android Ver": "4.0.3 and up",
}


def row(**changes: str) -> dict[str, str]:
    """A valid raw row with some fields replaced (keys use _ for spaces)."""
    out = dict(GOOD)
    for key, value in changes.items():
        out[key.replace("_", " ")] = value
    return out


def write_csv(path: Path, rows: list, header: list[str] | None = None) -> Path:
    """Write rows (dicts, or lists taken as is) under a header, quoting like the scrape."""
    header = header or RAW_COLUMNS
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for item in rows:
            writer.writerow([item.get(c, "") for c in header] if isinstance(item, dict) else item)
    return path


def load(tmp_path: Path, *rows, name: str = "apps.csv"):
    return read_apps(write_csv(tmp_path / name, list(rows)))


# ------------------------------------------------------------------------------------------
# parsing styles


def test_raw_style_row_is_typed(tmp_path: Path) -> None:
    result = load(tmp_path, row())
    assert result.n_quarantined == 0
    assert list(result.apps.columns) == TYPED_COLUMNS
    got = result.apps.iloc[0]
    assert got["app"] == "Photo Editor & Candy Camera"
    assert got["app_key"] == "photo editor & candy camera"
    assert got["category"] == "ART_AND_DESIGN"
    assert got["rating"] == 4.1
    assert got["reviews"] == 159.0
    assert got["size_mb"] == 19.0
    assert got["installs"] == 10_000.0
    assert got["type"] == "Free"
    assert got["price"] == 0.0
    assert got["last_updated"] == pd.Timestamp("2018-01-07")
    assert got["genres"] == "Art & Design"
    assert got["source_file"] == "apps.csv"
    assert got["source_row"] == 1


def test_typed_dtypes_and_index(tmp_path: Path) -> None:
    apps = load(tmp_path, row(), row(App="Other"), row(App="Third")).apps
    assert list(apps.index) == [0, 1, 2]
    for column in ["rating", "reviews", "size_mb", "installs", "price"]:
        assert apps[column].dtype == np.float64, column
    assert apps["last_updated"].dtype == "datetime64[ns]"
    assert apps["source_row"].dtype == np.int64
    assert list(apps["source_row"]) == [1, 2, 3]


def test_clean_style_row_is_typed(tmp_path: Path) -> None:
    clean = row(Size="8.7", Installs="5000000.0", Price="0.0", Last_Updated="August 1, 2018")
    paid = row(App="Paid one", Type="Paid", Price="6.49", Size="")
    apps = load(tmp_path, clean, paid).apps
    assert apps["size_mb"].iloc[0] == 8.7
    assert apps["installs"].iloc[0] == 5_000_000.0
    assert apps["price"].tolist() == [0.0, 6.49]
    assert math.isnan(apps["size_mb"].iloc[1])


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("19M", 19.0),
        ("8.7M", 8.7),
        ("201k", 0.201),  # k is 1/1000 MB
        ("1020k", 1.02),
        ("19.0", 19.0),  # clean file: already MB
        ("95M", 95.0),
        ("Varies with device", None),
        ("", None),
    ],
)
def test_size_styles(tmp_path: Path, size: str, expected: float | None) -> None:
    got = load(tmp_path, row(Size=size)).apps["size_mb"].iloc[0]
    if expected is None:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("installs", "expected"),
    [
        ("1,000+", 1_000),
        ("1000000000+", 1_000_000_000),
        ("10000.0", 10_000),
        ("5,000,000,000+", 5_000_000_000),
        ("0", 0),
        ("0+", 0),
    ],
)
def test_installs_styles(tmp_path: Path, installs: str, expected: int) -> None:
    assert load(tmp_path, row(Installs=installs)).apps["installs"].iloc[0] == expected


@pytest.mark.parametrize(("price", "expected"), [("$4.99", 4.99), ("0", 0.0), ("0.0", 0.0)])
def test_price_styles(tmp_path: Path, price: str, expected: float) -> None:
    assert load(tmp_path, row(Price=price)).apps["price"].iloc[0] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("January 7, 2018", "2018-01-07"),
        ("January 03, 2026", "2026-01-03"),
        ("January 3 2026", "2026-01-03"),
        ("January-4-2026", "2026-01-04"),
        ("March-20-2025", "2025-03-20"),
        ("December 28 2025", "2025-12-28"),
        ("2018-01-07", "2018-01-07"),
    ],
)
def test_date_styles(tmp_path: Path, text: str, expected: str) -> None:
    got = load(tmp_path, row(Last_Updated=text)).apps["last_updated"].iloc[0]
    assert got == pd.Timestamp(expected)


@pytest.mark.parametrize("rating", ["", "NaN"])
def test_missing_rating_is_unlabeled_not_invalid(tmp_path: Path, rating: str) -> None:
    result = load(tmp_path, row(Rating=rating))
    assert result.n_quarantined == 0
    assert math.isnan(result.apps["rating"].iloc[0])


def test_paid_with_zero_price_and_odd_genres_are_accepted(tmp_path: Path) -> None:
    odd = row(Type="Paid", Price="0", Genres="FOOD_AND_DRINK", Category="PHOTOGRAPHY")
    result = load(tmp_path, odd)
    assert result.n_quarantined == 0
    assert result.apps["type"].iloc[0] == "Paid"


def test_columns_in_other_order_and_optional_columns_absent(tmp_path: Path) -> None:
    header = list(reversed(REQUIRED_COLUMNS))
    result = read_apps(write_csv(tmp_path / "short.csv", [row()], header=header))
    assert result.n_quarantined == 0
    got = result.apps.iloc[0]
    assert (got["app"], got["installs"], got["genres"], got["current_ver"]) == (
        "Photo Editor & Candy Camera",
        10_000.0,
        "",
        "",
    )


def test_byte_order_mark_in_header_is_ignored(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bom.csv", [row()])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert check_columns(path)[0] == "App"
    assert len(read_apps(path).apps) == 1


# ------------------------------------------------------------------------------------------
# quarantine


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Rating": "19"}, "Rating: 19.0 is outside 1..5"),
        ({"Rating": "0.5"}, "Rating: 0.5 is outside 1..5"),
        ({"Rating": "great"}, "Rating: 'great' is not a number"),
        ({"Reviews": "-3"}, "Reviews: -3.0 is negative"),
        ({"Reviews": "3.0M"}, "Reviews: '3.0M' is not a count"),
        ({"Reviews": ""}, "Reviews: missing"),
        ({"Installs": "Free"}, "Installs: 'Free' is not a count like 1,000+"),
        ({"Installs": "-5"}, "Installs: -5.0 is negative"),
        ({"Price": "Everyone"}, "Price: 'Everyone' is not a price"),
        ({"Price": "-1"}, "Price: -1.0 is negative"),
        ({"Type": "NaN"}, "Type: 'NaN' is not Free or Paid"),
        ({"Type": "Unknown"}, "Type: 'Unknown' is not Free or Paid"),
        ({"Type": ""}, "Type: missing"),
        ({"Last Updated": "yesterday"}, "Last Updated: 'yesterday' is not a date"),
        ({"Last Updated": "February 30, 2018"}, "Last Updated: 'February 30, 2018' is not a date"),
        ({"Last Updated": ""}, "Last Updated: missing"),
        ({"App": ""}, "App: empty"),
        ({"Category": "  "}, "Category: empty"),
        ({"Size": "huge"}, "Size: 'huge' is not a size"),
    ],
)
def test_each_invalid_value_is_quarantined_with_reason(
    tmp_path: Path, changes: dict[str, str], reason: str
) -> None:
    bad = dict(GOOD, **changes)
    result = load(tmp_path, row(App="ok before"), bad, row(App="ok after"))
    assert result.apps["app"].tolist() == ["ok before", "ok after"]
    assert result.n_quarantined == 1
    got = result.quarantine.iloc[0]
    assert reason in got["reason"]
    assert got["source_row"] == 2
    assert got["source_file"] == "apps.csv"
    for column, value in changes.items():
        assert got[column] == value  # the raw field is kept as it was


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    bad = row(Rating="7", Type="Maybe", Price="-2")
    reason = load(tmp_path, bad).quarantine["reason"].iloc[0]
    assert reason == (
        "Rating: 7.0 is outside 1..5; Type: 'Maybe' is not Free or Paid; Price: -2.0 is negative"
    )


def test_short_row_is_quarantined_for_its_field_count(tmp_path: Path) -> None:
    shifted = [v for k, v in row(App="Shifted").items() if k != "Category"]  # 12 fields
    result = load(tmp_path, row(App="first"), shifted, row(App="third"))
    assert result.apps["source_row"].tolist() == [1, 3]
    assert result.n_quarantined == 1
    got = result.quarantine.iloc[0]
    assert got["source_row"] == 2
    assert got["reason"] == (
        "row has 12 fields, expected 13 (a column is missing, values are shifted)"
    )
    assert (got["App"], got["Category"], got["Android Ver"]) == ("Shifted", "4.1", "")


def test_long_row_is_quarantined(tmp_path: Path) -> None:
    long_row = [*row().values(), "extra"]
    result = load(tmp_path, long_row)
    assert result.n_quarantined == 1
    assert result.quarantine["reason"].iloc[0].startswith("row has 14 fields, expected 13")


def test_nothing_is_dropped_silently(tmp_path: Path) -> None:
    rows = [row(App=f"app {i}") for i in range(20)]
    rows[3]["Rating"] = "9"
    rows[7] = list(rows[7].values())[:11]
    rows[12]["Installs"] = "lots"
    result = load(tmp_path, *rows)
    assert len(result.apps) + result.n_quarantined == 20
    assert result.quarantine["source_row"].tolist() == [4, 8, 13]
    assert list(result.quarantine.columns) == QUARANTINE_COLUMNS


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "blank.csv", [row()])
    path.write_text(path.read_text() + "\n\n")
    result = read_apps(path)
    assert (len(result.apps), result.n_quarantined) == (1, 0)


def test_summary_is_logged_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lib.pipeline.data"):
        load(tmp_path, row(), row(Rating="9"))
    assert "apps.csv: 2 rows read, 1 valid, 1 quarantined" in caplog.text


# ------------------------------------------------------------------------------------------
# several files, columns


def test_later_files_come_after_earlier_ones(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", [row(App="a1"), row(App="a2")])
    second = write_csv(tmp_path / "b.csv", [row(App="b1", Rating="10"), row(App="b2")])
    result = read_apps([first, second])
    assert result.apps["app"].tolist() == ["a1", "a2", "b2"]
    assert result.apps["source_file"].tolist() == ["a.csv", "a.csv", "b.csv"]
    assert result.apps["source_row"].tolist() == [1, 2, 2]
    assert result.quarantine[["source_file", "source_row"]].values.tolist() == [["b.csv", 1]]
    assert result.sources == [str(first), str(second)]


def test_missing_columns_are_all_named(tmp_path: Path) -> None:
    header = [c for c in RAW_COLUMNS if c not in ("Rating", "Installs")]
    path = write_csv(tmp_path / "partial.csv", [row()], header=header)
    with pytest.raises(MissingColumnsError) as info:
        check_columns(path)
    assert info.value.missing == ["Rating", "Installs"]
    assert "'Rating'" in str(info.value) and "'Installs'" in str(info.value)
    assert str(path) in str(info.value)


def test_all_headers_are_checked_before_parsing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = write_csv(tmp_path / "good.csv", [row()])
    bad = write_csv(tmp_path / "bad.csv", [row()], header=["App", "Category"])
    with (
        caplog.at_level(logging.INFO, logger="lib.pipeline.data"),
        pytest.raises(MissingColumnsError),
    ):
        read_apps([good, bad])
    assert "rows read" not in caplog.text  # good.csv was not parsed


def test_check_columns_returns_header(tmp_path: Path) -> None:
    assert check_columns(write_csv(tmp_path / "x.csv", [])) == RAW_COLUMNS


def test_empty_file_and_absent_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: empty file \(0 bytes\)"):
        check_columns(empty)
    with pytest.raises(DataError, match="empty file"):
        read_apps(empty)
    with pytest.raises(DataError, match="not found"):
        read_apps(tmp_path / "absent.csv")


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "none.csv", [])
    assert check_columns(path) == RAW_COLUMNS  # a header to append to is fine
    with pytest.raises(DataError, match=r"none\.csv: no rows \(only a header\)"):
        read_apps(path)
    blank_lines = tmp_path / "blank.csv"
    blank_lines.write_text(",".join(RAW_COLUMNS) + "\n\n\n")
    with pytest.raises(DataError, match="no rows"):
        read_apps(blank_lines)


def test_empty_typed_frame_keeps_its_types(tmp_path: Path) -> None:
    result = read_apps(write_csv(tmp_path / "bad.csv", [row(Rating="abc")]))
    assert result.apps.empty and result.n_quarantined == 1
    assert list(result.apps.columns) == TYPED_COLUMNS
    assert result.apps["last_updated"].dtype == "datetime64[ns]"


def test_a_missing_file_suggests_a_close_name(tmp_path: Path) -> None:
    write_csv(tmp_path / "apps.csv", [row()])
    with pytest.raises(DataError, match=r"apps\.cvs: file not found \(did you mean .*apps\.csv"):
        read_apps(tmp_path / "apps.cvs")
    with pytest.raises(DataError, match=r"no directory .*nowhere"):
        read_apps(tmp_path / "nowhere" / "apps.csv")


def test_a_directory_or_a_non_csv_file_is_named(tmp_path: Path) -> None:
    write_csv(tmp_path / "apps.csv", [row()])
    with pytest.raises(DataError, match=r"is a directory, not a CSV file.*apps\.csv"):
        read_apps(tmp_path)
    book = tmp_path / "apps.xlsx"
    book.write_bytes(b"PK\x03\x04 not text")
    with pytest.raises(DataError, match=r"apps\.xlsx: not a CSV file.*export"):
        read_apps(book)
    binary = tmp_path / "apps.dat"
    binary.write_bytes(b"\xff\xfe\x00App\x00\x81\x82")
    with pytest.raises(DataError, match=r"apps\.dat: not a readable UTF-8 CSV file"):
        read_apps(binary)


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path / "locked.csv", [row()])
    real_open = Path.open

    def refuse(self: Path, *args: object, **kwargs: object):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(DataError, match=r"locked\.csv: cannot read \(Permission denied\)"):
        read_apps(path)


def test_a_file_whose_every_row_is_invalid_is_unusable(tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", [row()])
    bad = write_csv(tmp_path / "bad.csv", [row(Rating="abc"), row(Installs="many")])
    loaded = read_apps([good, bad])
    assert len(loaded.apps) == 1 and loaded.n_quarantined == 2
    with pytest.raises(DataError) as info:
        loaded.raise_if_unusable("reports/r/quarantine.csv")
    message = str(info.value)
    assert "bad.csv: none of its 2 rows is valid" in message and "\n" not in message
    assert "Rating: 'abc' is not a number" in message  # the first reason
    assert "reports/r/quarantine.csv" in message
    read_apps(good).raise_if_unusable()  # a usable file passes


# ------------------------------------------------------------------------------------------
# parse_records


def test_parse_records_raw_style() -> None:
    result = parse_records(pd.DataFrame([row(Rating="")]))
    assert result.n_quarantined == 0
    got = result.apps.iloc[0]
    assert (got["size_mb"], got["installs"], got["source_file"], got["source_row"]) == (
        19.0,
        10_000.0,
        "request",
        1,
    )
    assert math.isnan(got["rating"])


def test_parse_records_clean_style_numbers() -> None:
    record = dict(GOOD, Rating=4.5, Reviews=159, Size=19.0, Installs=10000.0, Price=0.0)
    got = parse_records(pd.DataFrame([record]), source="api").apps.iloc[0]
    assert (got["rating"], got["reviews"], got["size_mb"], got["installs"]) == (
        4.5,
        159.0,
        19.0,
        10_000.0,
    )
    assert got["source_file"] == "api"


def test_parse_records_snake_case_aliases() -> None:
    record = {
        "app": "Wells Fargo Mobile ",
        "category": "FINANCE",
        "rating": None,
        "reviews": 1000,
        "size_mb": None,
        "installs": 1_000_000,
        "type": "free",
        "price": 0,
        "content_rating": "Everyone",
        "last_updated": pd.Timestamp("2018-07-30"),
    }
    result = parse_records(pd.DataFrame([record]))
    assert result.n_quarantined == 0
    got = result.apps.iloc[0]
    assert got["app_key"] == "wells fargo mobile"
    assert got["type"] == "Free"
    assert got["last_updated"] == pd.Timestamp("2018-07-30")
    assert math.isnan(got["size_mb"]) and math.isnan(got["rating"])


def test_parse_records_invalid_row_gives_reason() -> None:
    result = parse_records(pd.DataFrame([row(Rating="19", Installs="Free")]))
    assert result.apps.empty
    assert result.quarantine["reason"].iloc[0] == (
        "Rating: 19.0 is outside 1..5; Installs: 'Free' is not a count like 1,000+"
    )
    assert result.quarantine["Rating"].iloc[0] == "19"


def test_parse_records_missing_columns() -> None:
    frame = pd.DataFrame([{k: v for k, v in GOOD.items() if k not in ("Rating", "Price")}])
    with pytest.raises(MissingColumnsError) as info:
        parse_records(frame, source="request")
    assert info.value.missing == ["Rating", "Price"]


# ------------------------------------------------------------------------------------------
# writing the quarantine


def test_write_quarantine_round_trip(tmp_path: Path) -> None:
    quarantine = load(tmp_path, row(Rating="19"), row()).quarantine
    path = write_quarantine(quarantine, tmp_path / "out" / "quarantine.csv")
    assert path == tmp_path / "out" / "quarantine.csv"
    back = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(back.columns) == QUARANTINE_COLUMNS
    assert back["reason"].tolist() == ["Rating: 19.0 is outside 1..5"]
    assert back["Installs"].tolist() == ["10,000+"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["quarantine.csv"]  # no temp file


def test_write_quarantine_empty_writes_header(tmp_path: Path) -> None:
    quarantine = load(tmp_path, row()).quarantine
    path = write_quarantine(quarantine, tmp_path / "q.csv")
    assert path.read_text().splitlines() == [",".join(QUARANTINE_COLUMNS)]


# ------------------------------------------------------------------------------------------
# identity


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Wells Fargo Mobile ", "wells  fargo mobile"),
        ("ＡＢＣ Ｎｅｗｓ", "abc news"),  # NFKC: full-width letters
        ('"Quoted App"', "quoted app"),
        ("Calculator!", "calculator"),
        ("Ärzte\tFinder", "ärzte finder"),
    ],
)
def test_app_key_equates_spellings_of_one_app(left: str, right: str) -> None:
    assert app_key(left) == app_key(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Wells Fargo Mobile", "Wells Fargo"),
        ("C++ Programming", "C Programming"),
        ("Calculator 2", "Calculator"),
        ("Photo-Editor", "Photo Editor"),
    ],
)
def test_app_key_keeps_different_apps_apart(left: str, right: str) -> None:
    assert app_key(left) != app_key(right)


def test_app_key_of_punctuation_only_name_is_not_empty() -> None:
    assert app_key("!!!") == "!!!"


def test_latest_per_app_keeps_most_recent_then_most_reviews_then_last(tmp_path: Path) -> None:
    rows = [
        row(App="Alpha", Last_Updated="January 1, 2018", Reviews="500"),  # older
        row(App="Beta", Reviews="10"),
        row(App="alpha ", Last_Updated="March 1, 2018", Reviews="100", Category="GAME"),  # kept
        row(App="Beta", Reviews="20", Category="FAMILY"),  # same date, more reviews: kept
        row(App="Gamma", Reviews="5", Category="TOOLS"),
        row(App="Gamma", Reviews="5", Category="FAMILY"),  # full tie: the last one is kept
        row(App="Alpha", Last_Updated="February 1, 2018", Reviews="900"),
    ]
    apps = load(tmp_path, *rows).apps
    latest = latest_per_app(apps)
    assert latest[["app_key", "category", "source_row"]].values.tolist() == [
        ["alpha", "GAME", 3],
        ["beta", "FAMILY", 4],
        ["gamma", "FAMILY", 6],
    ]
    assert list(latest.index) == [0, 1, 2]
    assert len(apps) == 7  # the input is not modified


# ------------------------------------------------------------------------------------------
# real files


@needs_real
def test_real_raw_scrape() -> None:
    result = read_apps(REAL / "googleplaystore.csv")
    apps, quarantine = result.apps, result.quarantine
    assert len(apps) + len(quarantine) == 10_841
    # The shifted row (Category missing) and the one row whose Type is the string "NaN"
    # (Command & Conquer: Rivals, 0 installs, no rating) are the only invalid rows.
    assert quarantine["source_row"].tolist() == [9149, 10473]
    shifted = quarantine.set_index("source_row").loc[10473]
    assert "12 fields, expected 13" in shifted["reason"]
    assert shifted["App"] == "Life Made WI-Fi Touchscreen Photo Frame"
    assert quarantine.set_index("source_row").loc[9149, "reason"] == (
        "Type: 'NaN' is not Free or Paid"
    )
    assert len(apps) == 10_839
    assert apps["rating"].isna().sum() == 1_473  # 1,474 in the file, one is quarantined
    first = apps.iloc[0]
    assert (first["size_mb"], first["installs"], first["last_updated"]) == (
        19.0,
        10_000.0,
        pd.Timestamp("2018-01-07"),
    )
    assert apps["rating"].between(1, 5).sum() == 10_839 - 1_473
    assert apps["size_mb"].min() == pytest.approx(0.0085)  # 8.5k
    # Repeated listings collapse to one row per app.
    latest = latest_per_app(apps)
    assert len(latest) == apps["app_key"].nunique()
    assert len(latest) < apps["app"].nunique() < len(apps)


@needs_real
def test_real_clean_file() -> None:
    result = read_apps(REAL / "googleplaystore_clean.csv")
    # The cleaner replaced the "NaN" Type of Command & Conquer: Rivals by "Unknown"; still invalid.
    assert result.quarantine[["source_row", "reason"]].values.tolist() == [
        [7632, "Type: 'Unknown' is not Free or Paid"]
    ]
    apps = result.apps
    assert len(apps) == 9_877
    assert apps["rating"].notna().all()
    assert apps.loc[apps["source_row"].between(9_168, 9_169), "app"].tolist() == ["test", "test2"]
    appended = apps[apps["source_row"] >= 9_170]  # the four batches
    assert len(appended) == 709
    tiktok = appended.iloc[0]
    assert (tiktok["app"], tiktok["size_mb"], tiktok["installs"]) == (
        "TikTok Lite",
        15.0,
        1_000_000_000.0,
    )
    assert apps.loc[apps["source_row"] == 9_168, "last_updated"].item() == pd.Timestamp(
        "2026-01-03"  # written "January 03, 2026"
    )


@needs_real
@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("new_200_apps.csv", 174),
        ("test_150_apps.csv", 140),
        ("test_250_apps.csv", 250),
        ("mlflow_test_150.csv", 150),
    ],
)
def test_real_batches_read_fully(name: str, rows: int) -> None:
    result = read_apps(REAL / name)
    assert (len(result.apps), result.n_quarantined) == (rows, 0)
    assert result.apps["last_updated"].notna().all()


@pytest.mark.component
@needs_real
def test_real_batches_are_mostly_new_apps() -> None:
    clean = read_apps(REAL / "googleplaystore_clean.csv").apps
    known = set(clean.loc[clean["source_row"] <= 9_167, "app_key"])
    batches = read_apps([REAL / n for n in ["new_200_apps.csv", "test_150_apps.csv"]]).apps
    batches = pd.concat(
        [batches, read_apps([REAL / "test_250_apps.csv", REAL / "mlflow_test_150.csv"]).apps]
    )
    reused = set(batches["app_key"]) & known
    assert "wells fargo mobile" in reused
    assert 0 < len(reused) < 0.2 * batches["app_key"].nunique()


# ------------------------------------------------------------------------------ lib.values
# The one value grammar: read_apps and the service both parse through these functions.


@pytest.mark.parametrize("text", sorted(values.MISSING) + ["  NaN ", " "])
def test_values_missing_spellings(text: str) -> None:
    assert values.reviews(text) is None
    assert values.installs(text) is None
    assert values.price(text) is None
    assert values.date(text) is None
    assert math.isnan(values.size_mb(text))


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (values.reviews, "1,234", 1234.0), (values.reviews, " 12 ", 12.0),
        (values.reviews, "1e3", 1000.0), (values.reviews, "+5", 5.0),
        (values.reviews, "-3", -3.0),  # the sign is the caller's business (pandera, the service)
        (values.installs, "10,000+", 10000.0), (values.installs, "1000000000+", 1e9),
        (values.installs, "5 000", 5000.0),
        (values.price, "$0.99", 0.99), (values.price, "$1,299.00", 1299.0), (values.price, "0", 0),
        (values.number, "4.1", 4.1), (values.number, ".5", 0.5),
    ],
)  # fmt: skip
def test_values_numbers(parse, text: str, expected: float) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("parse", "text", "hint"),
    [
        (values.reviews, "many", "like 159"), (values.reviews, "1.2.3", "like 159"),
        (values.installs, "lots+", "1,000+"), (values.price, "€4", r"\$4\.99"),
        (values.number, "inf", "not a number"), (values.number, "1e999", "not a number"),
        (values.number, "0x10", "not a number"), (values.installs, "١٢٣", "1,000+"),
    ],
)  # fmt: skip
def test_values_bad_numbers_say_what_is_expected(parse, text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("19M", 19.0), ("201k", 0.201), ("201K", 0.201), ("1,000k", 1.0), ("2.5 MB", 2.5),
     (".5M", 0.5), ("10", 10.0), ("1.5G", 1500.0), ("8kb", 0.008)],
)  # fmt: skip
def test_values_sizes(text: str, expected: float) -> None:
    assert values.size_mb(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(
    "text", ["Varies with device", "VARIES WITH DEVICE", " varies with device "]
)
def test_values_size_varies_is_no_value(text: str) -> None:
    assert math.isnan(values.size_mb(text))


@pytest.mark.parametrize("text", ["19T", "-3M", "M", "19 M B", "1.2.3M", "big"])
def test_values_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        values.size_mb(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("January 7, 2018", "2018-01-07"), ("january 7 2018", "2018-01-07"),
        ("March-20-2025", "2025-03-20"), ("Dec 1 2017", "2017-12-01"),
        ("SEPTEMBER 30 2016", "2016-09-30"), ("Jan 03, 2026", "2026-01-03"),
        ("2018-01-07", "2018-01-07"), ("2026-1-3", "2026-01-03"),
        ("2018-01-07 12:30", "2018-01-07 12:30"),
        ("2018-01-07T06:00:00.5", "2018-01-07 06:00:00.5"),
    ],
)  # fmt: skip
def test_values_dates(text: str, expected: str) -> None:
    assert values.date(text) == pd.Timestamp(expected).to_pydatetime()


@pytest.mark.parametrize(
    ("text", "hint"),
    [("February 30, 2018", "not a date"), ("Jan 7", "not a date"), ("7 January 2018", "not a date"),
     ("2018-13-01", "not a date"), ("Smarch 1 2018", "not a date"), ("Jan 7 18", "not a date"),
     ("1600-01-01", "outside the supported years"), ("Jan 1 2300", "outside the supported years")],
)  # fmt: skip
def test_values_bad_dates(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        values.date(text)


def test_values_days_since_epoch() -> None:
    assert values.days_since_epoch(values.date("1970-01-02T12:00")) == 1.5
    assert (
        values.days_since_epoch(values.date("Jan 3 2026"))
        == (pd.Timestamp("2026-01-03") - pd.Timestamp("1970-01-01")).days
    )


def test_values_free_or_paid() -> None:
    assert [values.free_or_paid(t) for t in ("Free", " paid ", "FREE", "0", "")] == [
        "Free", "Paid", "Free", None, None,
    ]  # fmt: skip


def test_values_parse_column_marks_bad_and_missing_apart() -> None:
    column = pd.Series(["19M", "NaN", "huge", "19M", "Varies with device"], index=[5, 6, 7, 8, 9])
    parsed, bad = values.parse_column(column, values.size_mb)
    assert parsed.index.tolist() == [5, 6, 7, 8, 9] and parsed.dtype == "float64"
    assert parsed[5] == parsed[8] == 19.0
    assert parsed[[6, 7, 9]].isna().all()
    assert bad.tolist() == [False, False, True, False, False]
    dates, bad_dates = values.parse_column(pd.Series(["Jan 7 2018", "", "soon"]), values.date)
    assert dates.dtype == "datetime64[ns]" and dates[0] == pd.Timestamp("2018-01-07")
    assert pd.isna(dates[1]) and pd.isna(dates[2]) and bad_dates.tolist() == [False, False, True]
