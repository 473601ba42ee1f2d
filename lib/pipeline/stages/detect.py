"""01 detect: read the data (quarantining bad rows) and decide whether there is enough new.

The data is CSV files, HTTP(S) CSVs or database tables or queries (`lib.pipeline.data_sources`);
the outputs name them (without credentials) and a digest of the records read. Generated data only
ever lands at the project's default path, and only when nobody chose the data:
a path a user gave that does not exist, is not a CSV, has no rows or no valid row stops with one
line naming it (`lib.errors.DataError`, exit 2 from the runner).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lib import registry
from lib.config import resolve_data
from lib.errors import DataError
from lib.pipeline import data, detection, synth
from lib.pipeline.contracts import DetectInputs, DetectOutputs
from lib.pipeline.data_sources import source_name
from lib.settings import tracking_uri

if TYPE_CHECKING:
    from lib.config import PipelineConfig

log = logging.getLogger(__name__)

DEFAULT_DATA_PATH: str = DetectInputs.model_fields["data_path"].default


def generate_default(files: list[Path | str], default: Path | None, n: int, seed: int) -> int:
    """Generate `default` when it is the only file asked for and is absent; the apps written."""
    if default is None or files != [default]:
        return 0
    return n if synth.ensure_dataset(default, n=n, seed=seed) else 0


def check_data(cfg: PipelineConfig, root: Path, quarantine: Path) -> int:
    """The runner's check before MLflow or models/ are touched: the data 01 detect will read is
    usable, else a DataError naming the file and who chose it (the quarantine is written when
    every row of a file was rejected). Returns the number of apps generated."""
    files = cfg.data_files(root)
    default = None if cfg.data_origin else root / DEFAULT_DATA_PATH
    try:
        generated = generate_default(files, default, cfg.synth_apps, cfg.synth_seed)
        loaded = data.read_apps(files)
        try:
            loaded.raise_if_unusable(quarantine)
        except DataError:
            data.write_quarantine(loaded.quarantine, quarantine)
            raise
    except DataError as exc:
        if cfg.data_origin is None:
            raise
        raise DataError(f"{exc} (data_path from {cfg.data_origin})") from None
    return generated


def load(inputs: DetectInputs, root: Path) -> tuple[data.LoadedApps, int]:
    """The apps of every data file (the default file generated first when absent), with the
    rejected rows written to the run's quarantine file; returns them and the generated count."""
    files = resolve_data(inputs.data_path, root)
    generated = generate_default(
        files, root / DEFAULT_DATA_PATH, inputs.synth_apps, inputs.synth_seed
    )
    loaded = data.read_apps(files)
    data.write_quarantine(loaded.quarantine, root / inputs.quarantine_path)
    loaded.raise_if_unusable(root / inputs.quarantine_path)  # a file without a valid row stops
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


def find_new_apps(inputs: DetectInputs, root: Path, loaded: data.LoadedApps) -> detection.Detection:
    state = detection.load_state(root / inputs.state_path)
    if state is None:
        state = registered_state(inputs, root)
    return detection.detect(loaded.apps, state, threshold=inputs.threshold, force=inputs.force)


def registered_state(inputs: DetectInputs, root: Path) -> dict | None:
    """The last training's state from the registry, for a working directory without its file
    (a fresh clone, another machine, a pod): the newest registered version whose run logged
    one. None when nothing was registered (a first run); an unreachable registry stops the
    stage (RegistryUnavailable) rather than retrain everything as if nothing ever was."""
    uri = tracking_uri(inputs.tracking_uri, root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None  # the embedded store was never created: nothing was ever trained here
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with registry.registry_call(uri, "looking up the last training's state"):
        try:
            found = client.search_model_versions(f"name='{inputs.model_name}'")
        except MlflowException as exc:
            if exc.error_code in registry.NOT_FOUND_CODES:
                return None
            raise
        for version in sorted(found, key=lambda v: int(v.version), reverse=True):
            try:
                text = mlflow_text(uri, version.run_id)
            except OSError:
                continue  # a version registered by hand, or its run's artifacts are gone
            except MlflowException as exc:
                if exc.error_code not in registry.NOT_FOUND_CODES:
                    raise  # an outage is not "never trained" (registry_call names it)
                continue
            state = detection.parse_state(text, f"of v{version.version}'s run")
            if state is not None:
                log.info("training state read from the registry (v%s's run)", version.version)
                return state
    return None


def mlflow_text(uri: str, run_id: str) -> str:
    """The training state artifact of `run_id`, downloaded through the tracking server."""
    import tempfile

    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="training-state-") as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=detection.STATE_ARTIFACT, dst_path=folder,
            tracking_uri=uri,
        )  # fmt: skip
        return Path(path).read_text()


def outputs(result: detection.Detection, loaded: data.LoadedApps) -> DetectOutputs:
    same_names = {k: v for k, v in result.to_dict().items() if k in DetectOutputs.model_fields}
    return DetectOutputs(
        **same_names,
        quarantined_rows=loaded.n_quarantined,
        data_digest=loaded.digest,
        data_sources=[source_name(s) for s in loaded.sources],
    )


def run(inputs: DetectInputs, root: Path) -> DetectOutputs:
    loaded, _ = load(inputs, root)
    return outputs(find_new_apps(inputs, root, loaded), loaded)
