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
from dataclasses import dataclass

from sqlalchemy import Column, Double, Integer, MetaData, String, Table

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
