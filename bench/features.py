"""What each honest feature group is worth, in app-grouped CV on the raw real file.

    python bench/features.py                         # hist_gradient_boosting, 5 folds
    python bench/features.py --family random_forest --folds 3 --data path/to/googleplaystore.csv
    python bench/features.py --family forest_and_boosting --full-only   # the champion's family

Reads the raw scrape (`../shared/data/playstore/googleplaystore.csv`: rated apps only, one row per
app, so folds are grouped by app), then cross-validates the same model family with the base
listing fields, each feature group added alone, every group cumulatively, and all groups with the
ratings permuted (which must stay at chance: nothing in the inputs may carry the target). For the
full set it also reports the out-of-fold calibration (log-loss, Brier, ECE, raw and calibrated) and
the label threshold, as 02 train chooses them. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

DEFAULT_DATA = PROJECT.parent / "shared" / "data" / "playstore" / "googleplaystore.csv"


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from lib.config import CALIBRATION_METHODS, FEATURE_GROUPS
    from lib.pipeline import calibration, data, training

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--family", default="hist_gradient_boosting")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--full-only", action="store_true", help="only all groups (and permuted), no group table"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2

    loaded = data.read_apps([args.data])
    labeled = training.labeled_data(loaded.apps, 4.0)
    X, y = labeled.X, labeled.y
    print(
        f"{args.data.name}: {len(y)} rated apps (one row per app), "
        f"share > 4.0 = {y.mean():.3f}; {args.family}, {args.folds}-fold shuffled stratified CV"
    )

    def cv_auc(groups: list[str], target=y) -> tuple[float, float, float, calibration.OutOfFold]:
        started = time.perf_counter()
        model = training.build_candidate(args.family, args.seed, 200, groups)
        with training.one_openmp_thread():
            oof = calibration.out_of_fold(model, X, target, args.folds, args.seed)
        folds = [
            roc_auc_score(target[oof.fold == k], oof.proba[oof.fold == k])
            for k in range(args.folds)
        ]
        return (
            float(np.mean(folds)),
            float(np.std(folds, ddof=1)),
            time.perf_counter() - started,
            oof,
        )

    rows: list[tuple[str, float, float, float]] = []
    base, base_sd, secs, _ = cv_auc([])
    rows.append(("base listing fields", base, base_sd, secs))
    cumulative: list[str] = []
    full_oof = None
    if args.full_only:
        auc, sd, secs, full_oof = cv_auc(list(FEATURE_GROUPS))
        rows.append(("all groups", auc, sd, secs))
    for group in [] if args.full_only else FEATURE_GROUPS:
        auc, sd, secs, _ = cv_auc([group])
        rows.append((f"base + {group}", auc, sd, secs))
    for group in [] if args.full_only else FEATURE_GROUPS:
        cumulative.append(group)
        auc, sd, secs, oof = cv_auc(list(cumulative))
        rows.append((f"cumulative: + {group}", auc, sd, secs))
        full_oof = oof
    permuted = y.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    auc, sd, secs, _ = cv_auc(list(FEATURE_GROUPS), permuted)
    rows.append(("all groups, ratings permuted", auc, sd, secs))

    print("\n| features | CV ROC-AUC (mean ± std) | vs base | seconds |")
    print("| --- | ---: | ---: | ---: |")
    for name, auc, sd, secs in rows:
        print(f"| {name} | {auc:.4f} ± {sd:.4f} | {auc - base:+.4f} | {secs:.0f} |")

    assert full_oof is not None
    methods = CALIBRATION_METHODS
    choice = calibration.choose_calibration(full_oof, y, methods, args.folds, 0)
    print("\ncalibration of the full model, cross-validated on out-of-fold scores:")
    print("| calibration | log-loss | Brier | ECE |")
    print("| --- | ---: | ---: | ---: |")
    for method, scores in choice.scores.items():
        print(
            f"| {method} | {scores['log_loss']:.4f} | {scores['brier']:.4f} | {scores['ece']:.4f} |"
        )
    print(f"kept: {choice.method or 'none'}")
    threshold = calibration.tune_threshold(y, full_oof.proba, "accuracy")
    print(
        f"label threshold (accuracy, out of fold): {threshold.threshold:.3f} -> "
        f"{threshold.value:.4f} (0.5 cut: {threshold.at_half:.4f}; majority share "
        f"{max(y.mean(), 1 - y.mean()):.4f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
