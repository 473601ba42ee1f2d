"""The prediction store's schema, created or migrated by Alembic when a PredictionStore opens.

The revisions live in `store_migrations/` (shipped with the package; no alembic.ini): 0001 the
predictions and feedback tables, 0002 `shadow_of`, 0003 the replicas' shared routing tables,
0004 an index on feedback.created_at (the windows' labels).
A store made before Alembic (no version table) is stamped at the revision its columns show,
then upgraded. Replicas starting at once take turns: PostgreSQL's advisory lock, or an flock on
the SQLite file, around the check and the upgrade. Readers never migrate. The version table has
its own name, so an MLflow backend in the same database (`alembic_version`) is not touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from lib.serving import store_journal

try:
    import fcntl
except ImportError:  # not POSIX: SQLite stores migrate without a lock (one process)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# a folder shipped with the package (pyproject package-data), not a place for data
MIGRATIONS = Path(str(resources.files("lib.serving").joinpath("store_migrations")))
VERSION_TABLE = "prediction_store_version"
HEAD = "0004"  # the last revision in store_migrations/versions (a test checks it)
# pg_advisory_xact_lock's key: any constant the store's database uses for nothing else
_ADVISORY_KEY = 0x5052_4544  # "PRED"


def revision(connection: Connection) -> str | None:
    """The store's revision; None for an empty database or a store made before Alembic."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine) -> str | None:
    """Bring the store to HEAD; what it was before (None: empty or pre-Alembic). A store at
    HEAD costs one read; otherwise the upgrade runs under a lock, re-checked once held."""
    with engine.connect() as conn:
        before = revision(conn)
    if before == HEAD:
        return before
    with _exclusive(engine) as conn:
        before = revision(conn)
        if before == HEAD:
            return before
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        if before is None:
            found = _pre_alembic_revision(conn)
            if found is not None:
                logger.info("prediction store made before its migrations: stamped at %s", found)
                command.stamp(config, found)
        command.upgrade(config, "head")
    logger.info("prediction store schema upgraded from %s to %s", before or "nothing", HEAD)
    return before


def _pre_alembic_revision(conn: Connection) -> str | None:
    """The revision a store without a version table matches: 0002 if predictions has
    shadow_of, 0001 if it has the tables of then; None for an empty database, or one so old
    that 0001 must add `feedback.source` (0001 leaves existing tables alone otherwise)."""
    found = inspect(conn)
    tables = set(found.get_table_names())
    if not {"predictions", "feedback"} <= tables:
        return None
    if "source" not in {c["name"] for c in found.get_columns("feedback")}:
        return None
    if "shadow_of" in {c["name"] for c in found.get_columns("predictions")}:
        return "0002"
    return "0001"


@contextlib.contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """A transaction that one process at a time holds: PostgreSQL's transaction-scoped advisory
    lock; for a SQLite file an flock on the file (SQLite itself locks with fcntl, which an
    flock does not disturb); in-memory SQLite and other databases: the transaction alone."""
    backend = engine.dialect.name
    file = store_journal.sqlite_file(str(engine.url)) if backend == "sqlite" else None
    with contextlib.ExitStack() as stack:
        if file is not None and fcntl is not None:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            stack.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the fd closes
        conn = stack.enter_context(engine.begin())
        if backend == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_KEY})")
        yield conn
