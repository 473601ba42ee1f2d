"""01 detect: read the data (quarantining bad rows) and decide whether there is enough new."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lib.pipeline import data, detection, synth
from lib.pipeline.contracts import DetectInputs, DetectOutputs
from lib.pipeline.stages import data_paths


def load(inputs: DetectInputs, root: Path) -> tuple[data.LoadedApps, int]:
    """The apps of every data file (generated first when the default file is absent), with the
    rejected rows written to the run's quarantine file; returns them and the generated count."""
    paths = data_paths(inputs.data_path)
    generated = synth.ensure_dataset(root / paths[0], n=inputs.synth_apps, seed=inputs.synth_seed)
    loaded = data.read_apps([root / p for p in paths])
    data.write_quarantine(loaded.quarantine, root / inputs.quarantine_path)
    return loaded, generated


def overview(loaded: data.LoadedApps, generated: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rows read": [len(loaded.apps) + loaded.n_quarantined],
            "valid rows": [len(loaded.apps)],
            "quarantined": [loaded.n_quarantined],
            "unique apps": [loaded.apps["app_key"].nunique()],
            "without rating": [int(loaded.apps["rating"].isna().sum())],
            "generated now": [generated],
        }
    )


def find_new_apps(
    inputs: DetectInputs, root: Path, loaded: data.LoadedApps
) -> detection.Detection:
    state = detection.load_state(root / inputs.state_path)
    return detection.detect(loaded.apps, state, threshold=inputs.threshold, force=inputs.force)


def outputs(result: detection.Detection, loaded: data.LoadedApps) -> DetectOutputs:
    return DetectOutputs(
        new_apps=result.new_apps,
        updated_apps=result.updated_apps,
        total_apps=result.total_apps,
        should_train=result.should_train,
        reason=result.reason,
        quarantined_rows=loaded.n_quarantined,
    )


def run(inputs: DetectInputs, root: Path) -> DetectOutputs:
    loaded, _ = load(inputs, root)
    return outputs(find_new_apps(inputs, root, loaded), loaded)
