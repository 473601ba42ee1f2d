"""A throwaway PostgreSQL cluster on a free loopback port, for the data-source tests."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program from PATH, else from Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a cluster (trust auth, user postgres), yield its SQLAlchemy URL, stop and delete it.
    The server refuses to run as root: then it runs as `nobody`. Without the binaries: skip,
    except in CI, where they must be there (.ci/run installs them)."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL's initdb/pg_ctl not found (CI needs them: .ci/run installs)")
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)  # nobody
        as_user = ["runuser", "-u", "nobody", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pgdata = folder / "data"
    run = {"check": True, "capture_output": True, "timeout": 120, "cwd": folder}
    try:
        subprocess.run([*as_user, initdb, "-D", pgdata, "-U", "postgres", "--auth=trust"], **run)
        options = f"-k {folder} -p {port} -c listen_addresses=127.0.0.1"
        log = folder / "log"
        subprocess.run(
            [*as_user, pg_ctl, "-D", pgdata, "-l", log, "-o", options, "-w", "start"], **run
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, pg_ctl, "-D", pgdata, "-m", "immediate", "stop"], **run)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
