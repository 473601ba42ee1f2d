"""Routing shared by every replica: which champion and canary, the canary's weight and lease, in
the prediction store's database (SQLite for one machine, PostgreSQL for several).

One row per served scope (`<model name>@<champion alias>`) holds the routing every replica
applies; `generation` grows by one at each change, so a change is a compare-and-set and a
replica knows what it has applied. Each replica writes its own heartbeat row (what it applied,
when it was last seen): a deployer waits for every live replica to apply a generation before it
measures a step. Times are epoch seconds (`time.time()`): replicas on several machines need
synchronized clocks, as Kubernetes leases do.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from lib.serving import store_schema

routing_metadata = MetaData()

routing_table = Table(
    "serving_routing",
    routing_metadata,
    Column("scope", String(255), primary_key=True),  # "<model name>@<champion alias>"
    Column("generation", Integer, nullable=False),  # +1 per change (compare-and-set)
    Column("champion_version", String(64), nullable=True),  # None: follow the registry alias
    Column("canary_version", String(64), nullable=True),
    Column("canary_weight", Double, nullable=False),  # percent, 0..100
    Column("lease_seconds", Double, nullable=True),
    Column("lease_expires_at", Double, nullable=True),  # epoch; None: no lease
    Column("lease_expired_at", Double, nullable=True),  # epoch of the last expiry
    Column("updated_at", Double, nullable=False),
    Column("updated_by", String(255), nullable=True),  # the replica that applied the change
)

replicas_table = Table(
    "serving_replicas",
    routing_metadata,
    Column("replica_id", String(255), primary_key=True),
    Column("scope", String(255), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("seen_at", Double, nullable=False),  # its last heartbeat
    Column("applied_generation", Integer, nullable=True),
    Column("champion_version", String(64), nullable=True),
    Column("canary_version", String(64), nullable=True),
    Column("canary_weight", Double, nullable=True),
)


@dataclass(frozen=True)
class SharedRouting:
    """One generation of the shared routing (a row of `serving_routing`)."""

    scope: str
    generation: int
    champion_version: str | None
    canary_version: str | None
    canary_weight: float
    lease_seconds: float | None
    lease_expires_at: float | None
    lease_expired_at: float | None
    updated_at: float
    updated_by: str | None


def replica_id() -> str:
    """This process's name in /health, /metrics and `serving_replicas`: SERVING_REPLICA_ID
    (a pod's name), else `<host>-<pid>`."""
    return os.environ.get("SERVING_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}"


def scope_of(model_name: str, champion_alias: str) -> str:
    """The routing row a service follows: a staging instance (another alias) has its own."""
    return f"{model_name}@{champion_alias}"


# --------------------------------------------------------------------------- database access
# Each function is one short transaction (blocking: the service calls them off its event loop).


def ensure_routing_tables(engine: Engine) -> None:
    """The routing tables are the store's migration 0003: bring the store to its latest
    revision (one read when it is there; under the migration lock otherwise)."""
    store_schema.upgrade(engine)


def read_routing(engine: Engine, scope: str) -> SharedRouting | None:
    """The scope's row (one primary-key SELECT), None when no change was ever made."""
    with engine.connect() as conn:
        row = conn.execute(select(routing_table).where(routing_table.c.scope == scope)).first()
    return None if row is None else SharedRouting(**row._asdict())


def write_routing(engine: Engine, routing: SharedRouting) -> bool:
    """Compare-and-set: store `routing` only if the row is still at `routing.generation - 1`
    (no row at all for generation 1). False: another replica changed it first."""
    values = asdict(routing)
    if routing.generation == 1:
        return _insert_once(engine, routing_table, values)
    with engine.begin() as conn:
        result = conn.execute(
            update(routing_table)
            .where(routing_table.c.scope == routing.scope)
            .where(routing_table.c.generation == routing.generation - 1)
            .values(**values)
        )
        return result.rowcount == 1


def _insert_once(engine: Engine, table: Table, values: dict[str, Any]) -> bool:
    """INSERT in a transaction of its own; False when the key is there already."""
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(**values))
    except IntegrityError:
        return False
    return True


def lapse_lease(engine: Engine, scope: str, generation: int, by: str) -> bool:
    """The canary's lease ran out at `generation`: write weight 0 as the next generation
    (compare-and-set: the first replica that sees it writes it; False for the others)."""
    now = time.time()
    with engine.begin() as conn:
        result = conn.execute(
            update(routing_table)
            .where(routing_table.c.scope == scope)
            .where(routing_table.c.generation == generation)
            .values(
                generation=generation + 1,
                canary_version=None,
                canary_weight=0.0,
                lease_seconds=None,
                lease_expires_at=None,
                lease_expired_at=now,
                updated_at=now,
                updated_by=by,
            )  # fmt: skip
        )
        return result.rowcount == 1


def heartbeat(engine: Engine, values: dict[str, Any]) -> None:
    """Upsert this replica's row of `serving_replicas` (portable: UPDATE, else INSERT)."""
    key = replicas_table.c.replica_id == values["replica_id"]
    for _ in range(2):  # a twin (same id) may insert between our UPDATE and INSERT
        with engine.begin() as conn:
            if conn.execute(update(replicas_table).where(key).values(**values)).rowcount:
                return
        if _insert_once(engine, replicas_table, values):
            return


def live_replicas(engine: Engine, scope: str, seen_since: float) -> list[dict[str, Any]]:
    """The replicas of `scope` that sent a heartbeat since `seen_since`, by id."""
    columns = [
        replicas_table.c[name]
        for name in ("replica_id", "applied_generation", "seen_at", "champion_version",
                     "canary_version", "canary_weight")
    ]  # fmt: skip
    query = (
        select(*columns)
        .where(replicas_table.c.scope == scope)
        .where(replicas_table.c.seen_at >= seen_since)
        .order_by(replicas_table.c.replica_id)
    )
    with engine.connect() as conn:
        return [row._asdict() for row in conn.execute(query)]
