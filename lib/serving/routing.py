"""ModelService: the state behind the app. Loaded variants (champion, canary), the canary's
weight and lease (a dead-man switch), the prediction store, the batcher and the metrics.

The routing is shared by every replica through the prediction store's database (a row of
lib.serving.routing_state): an admin change is written there first (compare-and-set on its
generation), then applied here; every replica reads the row every `routing_poll_seconds` and
applies a newer generation, so a change reaches all within one poll interval plus the time to
load a version. A replica whose database is down serves the routing it applied last, and its
canary's lease still runs out on its own clock.

A background task reads the champion alias every `registry_check_seconds`, so /health reports a
registry that names another version (or is down) without calling it per probe. A registry that
does not answer at start-up (`registry_start_seconds`) does not keep the service down: the
champion alias is served from models/production until the registry answers (a staging instance,
another alias, never falls back: that copy is not the model it must smoke-test).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib import registry
from lib.config import redact_url
from lib.errors import RegistryUnavailable
from lib.pipeline.training import for_inference
from lib.serving import routing_state
from lib.serving.batching import MicroBatcher, Variant, stop_task
from lib.serving.metrics import Metrics
from lib.serving.prediction_store import PredictionStore
from lib.serving.predictor import Predictor
from lib.serving.rows import Row
from lib.serving.schemas import RoutingUpdate
from lib.serving.settings import CHAMPION_ALIAS, ServingSettings
from lib.serving.shadow import ShadowScorer
from lib.settings import PRODUCTION_DIR

logger = logging.getLogger(__name__)

SOURCE_REGISTRY = "registry"  # where the served champion was loaded from (/health)
SOURCE_LOCAL_COPY = "models/production"
# a replica is live while its last heartbeat is at most this many poll intervals old
LIVE_POLLS = 5
ROUTING_DB_SECONDS = 10.0  # a look at the shared routing that takes longer counts as failed
CAS_ATTEMPTS = 3  # an admin change lost to another replica's is tried again this many times
REPLICA_FIELDS = ("replica_id", "applied_generation", "champion_version", "canary_version",
                  "canary_weight")  # fmt: skip


def variant_bucket(request_id: str) -> int:
    """A stable bucket 0..9999 of a request id: the canary takes the buckets below weight*100."""
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000


class AdminError(Exception):
    """An admin request that cannot be applied; routing is left as it was."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_MLFLOW_LOCK = threading.Lock()


def public_store_name(uri: str) -> str:
    """A tracking URI fit for an answer anyone can read: no directory, user or password
    ("sqlite:////srv/x/mlflow.db" -> "sqlite:///.../mlflow.db", "https://u:p@h:5000/x" ->
    "https://h:5000", a plain path -> ".../mlruns")."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return f".../{uri.rstrip('/').rsplit('/', 1)[-1]}"
    if scheme.split("+", 1)[0] in ("sqlite", "file"):
        return f"{scheme}:///.../{rest.rstrip('/').rsplit('/', 1)[-1]}"
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}"


def _in_daemon_thread(work: Callable[[], Any], name: str) -> futures.Future:
    """`work()` in a daemon thread: a hung registry holds neither the event loop nor shutdown."""
    answer: futures.Future = futures.Future()

    def run() -> None:
        if not answer.set_running_or_notify_cancel():  # the caller gave up (shutdown)
            return
        try:
            answer.set_result(work())
        except BaseException as exc:  # handed to the waiting caller
            answer.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return answer


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RegistryView:
    """What the last background look at the champion alias found (times are time.time())."""

    champion_version: str | None = None  # as of the last good check
    checked_at: float | None = None  # the last attempt
    last_good_at: float | None = None
    error: str | None = None  # the last attempt failed: why (no detail, no URI)


@dataclass(frozen=True)
class StoreView:
    """The last look at the shared routing row (times are time.time())."""

    checked_at: float | None = None
    last_good_at: float | None = None
    error: str | None = None  # the last attempt failed: the exception's type


class ModelService:
    """The state behind the app: loaded variants, routing, lease, store, batcher, metrics."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = PredictionStore(settings.store_url, journal_dir=settings.journal_dir)
        self.metrics.watch_store(self.store.stats)
        self.batcher = MicroBatcher(
            settings.max_batch, settings.batch_wait_ms / 1000.0, self.metrics.batch_rows.observe
        )
        self.shadow = ShadowScorer(
            self.store, self.metrics, settings.shadow, settings.shadow_max_rows
        )
        self.started = time.monotonic()
        self.champion: Variant | None = None
        self.canary: Variant | None = None
        self.canary_weight = 0.0
        self.lease_seconds: float | None = None
        self.lease_deadline: float | None = None  # time.monotonic()
        self.lease_expired_at: float | None = None  # time.time() of the last expiry
        self.lease_expires_at: float | None = None  # time.time(): the shared row's expiry
        # the routing shared with the other replicas (lib.serving.routing_state)
        self.replica = routing_state.replica_id()
        self.scope = routing_state.scope_of(settings.model_name, settings.champion_alias)
        self.generation = 0  # the shared routing's generation applied here (0: none yet)
        self.shared_champion: str | None = None  # the row's champion (None: follow the alias)
        self.lease_lapsed: int | None = None  # a generation whose lease ran out here, unwritten
        self.store_view = StoreView()
        self.started_at = time.time()
        self._routing_tables = False
        self._poll_task: asyncio.Task | None = None
        self.metrics.replica.labels(replica=self.replica).set(1)
        self.champion_problem = "not loaded yet (the service is starting)"
        self.champion_source: str | None = None  # SOURCE_REGISTRY or SOURCE_LOCAL_COPY
        self.champion_confirmed = False  # the registry named the served champion since its load
        self.follow_registry = False  # start-up missed the registry: adopt its next answer
        self.admin_lock = asyncio.Lock()  # (bound to a loop at its first contended use)
        self._lease_task: asyncio.Task | None = None
        self._registry_task: asyncio.Task | None = None
        self.registry_view = RegistryView()
        self.registry_checks = 0  # calls made to the registry for /health (not per request)

    # ------------------------------------------------------------------------ MLflow

    def champion_version(self) -> str | None:
        """The version behind the champion alias now (None: no model or alias)."""
        from mlflow import MlflowClient

        uri, alias = self.settings.tracking_uri, self.settings.champion_alias
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return registry.alias_version(client, self.settings.model_name, alias)

    def load_variant(self, name: str, version: str) -> Variant:
        """Load a registered version (blocking: call it from a thread)."""
        import mlflow

        with _MLFLOW_LOCK:  # lib.registry loads through MLflow's process-wide URIs
            mlflow.set_tracking_uri(self.settings.tracking_uri)
            mlflow.set_registry_uri(self.settings.tracking_uri)
            model = registry.load_version(self.settings.model_name, str(version))
        return self._variant(name, str(version), model, SOURCE_REGISTRY)

    def _variant(self, name: str, version: str, model: Any, source: str) -> Variant:
        for_inference(model)
        predictor = Predictor(model, self.settings.compile_models)
        loaded = f"{self.settings.model_name} version {version} from {source} as {name}"
        logger.info("loaded %s (%s predictor)", loaded, predictor.kind)
        return Variant(name, version, predictor)

    def load_production_copy(self) -> tuple[Variant | None, str]:
        """The champion from models/production (blocking), or None and why not: no copy, no
        readable metadata, no version in it, another model, a copy that does not load."""
        where, meta_file = SOURCE_LOCAL_COPY, registry.LOCAL_COPY_METADATA
        folder = Path(self.settings.models_dir) / PRODUCTION_DIR
        if not folder.is_dir():
            return None, f"{where} holds no model"
        meta = registry.local_copy_metadata(folder)
        if meta is None:
            return None, f"{where}/{meta_file} is missing or unreadable"
        version = meta.get("version")
        if version is None or not str(version).strip():
            return None, f"{where}/{meta_file} names no version"
        named = meta.get("model_name")
        if named is not None and named != self.settings.model_name:
            return None, f"{where} holds model {named!r}, not {self.settings.model_name!r}"
        try:
            model = registry.load_local_copy(folder)
        except Exception as exc:  # the detail (paths) goes to the log only
            logger.exception("%s could not be loaded", folder)
            return None, (
                f"{where} (v{version}) could not be loaded ({type(exc).__name__}; details in "
                "the service log)"
            )
        return self._variant(self.settings.champion_label, str(version), model, where), ""

    def _set_champion(self, variant: Variant, source: str) -> None:
        self.champion = variant
        self.champion_source = source
        self.champion_confirmed = source == SOURCE_REGISTRY
        self.champion_problem = ""

    def _no_champion_message(self) -> str:
        return (
            f"alias {self.settings.champion_alias!r} of model {self.settings.model_name!r} is not "
            f"set in {public_store_name(self.settings.tracking_uri)}; train and promote a "
            "version, then POST /admin/reload"
        )

    def load_champion_at_start(self) -> None:
        """Start-up: load the champion if there is one; never raise (503s explain it instead).

        The registry gets `registry_start_seconds` to answer (MLflow's own retries would keep
        the port closed for minutes); an outage falls back to models/production."""
        registry.bound_http_retries()  # the background checks and reloads report outages fast
        try:
            version = self._look_up_within(self.settings.registry_start_seconds)
            if version is None:
                self.champion_problem = self._no_champion_message()
                logger.warning("no champion model yet: %s", self.champion_problem)
                return
            self._set_champion(
                self.load_variant(self.settings.champion_label, version), SOURCE_REGISTRY
            )
        except RegistryUnavailable as exc:
            self._start_without_registry(exc)
        except Exception as exc:  # the detail (paths, URIs) goes to the log only
            self.champion_problem = (
                f"loading the champion failed ({type(exc).__name__}; details in the service log)"
            )
            logger.exception("no champion model yet")

    def _start_without_registry(self, outage: RegistryUnavailable) -> None:
        """Serve the champion alias from models/production until the registry answers."""
        self.follow_registry = True
        logger.warning("start-up without the registry: %s", outage)
        store = public_store_name(self.settings.tracking_uri)
        missed = f"the MLflow registry ({store}) could not be reached at start-up ({outage.reason})"
        alias = self.settings.champion_alias
        if alias != CHAMPION_ALIAS:
            self.champion_problem = (
                f"{missed}; an instance serving alias {alias!r} does not fall back to "
                f"{SOURCE_LOCAL_COPY} (only {CHAMPION_ALIAS!r} does): it loads its model when "
                "the registry answers"
            )
            return
        variant, problem = self.load_production_copy()
        if variant is None:
            self.champion_problem = (
                f"{missed} and {problem}; the service loads the champion when the registry answers"
            )
            logger.warning("no champion model yet: %s", self.champion_problem)
            return
        self._set_champion(variant, SOURCE_LOCAL_COPY)
        logger.warning(
            "serving %s v%s from %s until the registry confirms it",
            self.settings.model_name,
            variant.version,
            SOURCE_LOCAL_COPY,
        )

    # ------------------------------------------------------------------------ routing

    def check_lease(self) -> None:
        """The dead-man switch: an expired lease drops the canary's weight to 0 and unloads it
        (the deployer that held the lease is gone: the canary is rolled back, not paused)."""
        deadline = self.lease_deadline
        if deadline is None or time.monotonic() < deadline:
            return
        self.lease_deadline = None
        self.lease_expires_at = None
        self.lease_expired_at = time.time()
        if self.generation:  # the poll writes weight 0 to the shared row (the first one does)
            self.lease_lapsed = self.generation
        if self.canary is not None:
            logger.warning(
                "canary lease of %.0f s expired without renewal: canary %s at %.2f%% unloaded",
                self.lease_seconds or 0,
                self.canary.version,
                self.canary_weight,
            )
        if self.canary_weight > 0:
            self.metrics.lease_expiries.inc()
        self.canary = None
        self.canary_weight = 0.0
        self.metrics.canary_weight.set(0.0)

    def route(self, request_id: str) -> Variant | None:
        canary = self.canary
        if canary is not None and self.canary_weight > 0:
            if variant_bucket(request_id) < self.canary_weight * 100:
                return canary
        return self.champion

    def offer_shadow(
        self, answered: Variant, ids: list[str], rows: list[Row], created: float
    ) -> None:
        """An answered request's rows go to the variant that did not answer, to be scored in
        the shadow (while a canary is loaded, at any weight); never waits."""
        canary, champion = self.canary, self.champion
        if canary is None or champion is None or not self.shadow.enabled:
            return
        if answered is champion:
            self.shadow.offer(canary, ids, rows, created)
        elif answered is canary:
            self.shadow.offer(champion, ids, rows, created)
        # (else the answering variant was replaced meanwhile: no pair to make)

    def routing(self) -> dict[str, Any]:
        self.check_lease()
        remaining = None
        if self.lease_deadline is not None:
            remaining = round(max(0.0, self.lease_deadline - time.monotonic()), 3)
        return {
            "model_name": self.settings.model_name,
            "champion_version": self.champion.version if self.champion else None,
            "canary_version": self.canary.version if self.canary else None,
            "canary_weight": self.canary_weight,
            "lease_seconds": self.lease_seconds if self.lease_deadline is not None else None,
            "lease_expires_in": remaining,
            "lease_expired_at": self.lease_expired_at,
            "generation": self.generation,
        }

    def set_canary(
        self,
        canary: Variant | None,
        weight: float,
        lease: float | None,
        expires_at: float | None = None,
    ) -> None:
        """Route `weight`% to `canary`; a lease ends at `expires_at` (time.time(); default:
        `lease` seconds from now)."""
        self.canary = canary
        self.canary_weight = float(weight) if canary is not None else 0.0
        self.lease_seconds = lease
        self.lease_deadline = self.lease_expires_at = None
        if lease and canary is not None:
            self.lease_expires_at = time.time() + lease if expires_at is None else expires_at
            self.lease_deadline = time.monotonic() + (self.lease_expires_at - time.time())
        self.metrics.canary_weight.set(self.canary_weight)
        logger.info(
            "routing: canary %s at %.2f%%%s",
            canary.version if canary else "none",
            self.canary_weight,
            f" (lease {lease:g} s)" if self.lease_deadline is not None else "",
        )

    async def update_routing(self, update: RoutingUpdate) -> dict[str, Any]:
        """PUT /admin/routing: load the canary version (if new), set weight and lease, in the
        shared row first (compare-and-set on its generation), then here."""
        keep = "canary_version" not in update.model_fields_set  # absent: keep the canary there is
        version: Any = ... if keep else update.canary_version
        async with self.admin_lock:
            for _ in range(CAS_ATTEMPTS):
                await self._sync_for_admin()
                self._check_expected_weight(update.expected_weight)  # before a load for nothing
                canary, weight = await self._requested_canary(version, update.weight)
                self._check_expected_weight(update.expected_weight)  # the lease may have run out
                lease = float(update.lease_seconds) if update.lease_seconds is not None else None
                now = time.time()
                expires = now + lease if lease and canary is not None else None
                row = self._next_row(canary, weight, lease, expires, self.shared_champion, now)
                if await self._write_shared(row):
                    self.set_canary(canary, weight, lease, expires)
                    self._written(row)
                    await self._heartbeat()
                    return await self.admin_routing()
            raise AdminError(409, "routing changed by other replicas meanwhile: try again")

    async def _requested_canary(self, version: Any, weight: float | None) -> tuple[Any, float]:
        """The canary and weight a PUT asks for (`...`: keep the canary there is)."""
        canary = self.canary
        if version is None:
            canary = None
        elif version is not ...:
            if canary is None or canary.version != version:
                canary = await self._load_for_admin(self.settings.canary_label, version)
        if canary is None and weight:
            if version is ...:  # the request is fine, the state is not: no canary loaded
                raise AdminError(409, "weight > 0 needs a canary: none is loaded; set "
                                      "canary_version")  # fmt: skip
            raise AdminError(422, "weight > 0 needs a canary: set canary_version")
        if weight is None:
            weight = self.canary_weight if canary is self.canary else 0.0
        return canary, float(weight) if canary is not None else 0.0

    def _next_row(
        self,
        canary: Variant | None,
        weight: float,
        lease: float | None,
        expires: float | None,
        champion: str | None,
        now: float,
    ) -> routing_state.SharedRouting:
        """The shared row after a change made here: the next generation."""
        return routing_state.SharedRouting(
            scope=self.scope, generation=self.generation + 1, champion_version=champion,
            canary_version=canary.version if canary is not None else None,
            canary_weight=weight if canary is not None else 0.0,
            lease_seconds=lease if expires is not None else None, lease_expires_at=expires,
            lease_expired_at=self.lease_expired_at, updated_at=now, updated_by=self.replica,
        )  # fmt: skip

    def _check_expected_weight(self, expected: float | None) -> None:
        """Compare-and-set: the caller's change was meant for `expected` (the weight it set
        last); a weight moved since (a person's stop, an expired lease) refuses it (409)."""
        if expected is None:
            return
        self.check_lease()
        if self.canary_weight != expected:
            raise AdminError(
                409,
                f"routing changed: canary weight is {self.canary_weight:g}, expected {expected:g}",
            )

    async def _load_for_admin(self, name: str, version: str) -> Variant:
        from mlflow.exceptions import MlflowException

        try:
            return await asyncio.to_thread(self.load_variant, name, version)
        except Exception as exc:
            status, why = 422, f"{type(exc).__name__}: {exc}"
            if isinstance(exc, MlflowException):
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    status = 404
            what = f"cannot load {self.settings.model_name} version {version}"
            raise AdminError(status, f"{what}: {why}") from exc

    async def reload_champion(self) -> dict[str, Any]:
        """POST /admin/reload: follow the champion alias (promotion or rollback), in the shared
        row first (every replica loads that version at its next poll), then here."""
        async with self.admin_lock:
            for _ in range(CAS_ATTEMPTS):
                await self._sync_for_admin()
                try:
                    version = await asyncio.to_thread(self._look_up_champion)
                except Exception as exc:
                    raise AdminError(503, f"cannot reach the MLflow registry: {exc}") from exc
                previous = self.champion.version if self.champion else None
                if version is None:
                    raise AdminError(409, self._no_champion_message())
                champion = self.champion
                if previous != version:
                    champion = await self._variant_for(self.settings.champion_label, version)
                promoted = self.canary is not None and self.canary.version == version
                if promoted or self.shared_champion != version:
                    canary = None if promoted else self.canary
                    row = self._next_row(
                        canary, self.canary_weight, self.lease_seconds, self.lease_expires_at,
                        version, time.time(),
                    )  # fmt: skip
                    if not await self._write_shared(row):
                        continue
                    self._written(row)
                if champion is not self.champion:
                    self._set_champion(champion, SOURCE_REGISTRY)  # type: ignore[arg-type]
                    logger.info("champion: version %s -> %s", previous, version)
                self.champion_confirmed = True  # the registry named it just now
                self.follow_registry = False
                if promoted:
                    self.set_canary(None, 0.0, None)  # promoted: it is the champion now
                await self._heartbeat()
                reloaded = previous != version
                answer = await self.admin_routing()
                return {**answer, "reloaded": reloaded, "previous_champion_version": previous}
            raise AdminError(409, "routing changed by other replicas meanwhile: try again")

    async def _variant_for(self, name: str, version: str) -> Variant:
        """`version` as variant `name`: the loaded predictor when either variant serves it."""
        for loaded in (self.canary, self.champion):
            if loaded is not None and loaded.version == version:
                return loaded if loaded.name == name else Variant(name, version, loaded.predictor)
        return await self._load_for_admin(name, version)

    # ------------------------------------------------------------------------ shared routing

    async def _db(self, work: Callable[..., Any], *args: Any) -> Any:
        """`work(engine, *args)` on the store's database in a daemon thread (a hung database
        holds neither the event loop nor shutdown: given up after ROUTING_DB_SECONDS); the
        tables are made at the first use."""
        engine = self.store.engine

        def run() -> Any:
            if not self._routing_tables:
                routing_state.ensure_routing_tables(engine)
                self._routing_tables = True
            return work(engine, *args)

        try:
            async with asyncio.timeout(ROUTING_DB_SECONDS):  # (not 3.11's wait_for: see stop_task)
                answer = await asyncio.wrap_future(_in_daemon_thread(run, "routing-store"))
        except Exception as exc:
            before = self.store_view
            if before.error is None:
                logger.warning("shared routing store failed: %s: %s", type(exc).__name__, exc)
            self.store_view = StoreView(time.time(), before.last_good_at, type(exc).__name__)
            raise
        if self.store_view.error is not None:
            logger.warning("shared routing store answers again")
        self.store_view = StoreView(time.time(), time.time(), None)
        return answer

    async def _sync_for_admin(self) -> None:
        """Apply the shared row if it is newer (an admin change starts from it); 503 when the
        database cannot be read or the newer generation cannot be applied."""
        try:
            row = await self._db(routing_state.read_routing, self.scope)
        except Exception as exc:
            raise AdminError(
                503,
                f"the shared routing (the prediction store's database) cannot be read "
                f"({type(exc).__name__}): nothing changed",
            ) from exc
        if row is not None and not await self._apply_shared(row):
            raise AdminError(503, f"routing generation {row.generation} could not be applied")

    async def _write_shared(self, row: routing_state.SharedRouting) -> bool:
        """The compare-and-set of `row`; False when another replica wrote first."""
        try:
            return bool(await self._db(routing_state.write_routing, row))
        except Exception as exc:
            raise AdminError(
                503,
                f"the shared routing (the prediction store's database) cannot be written "
                f"({type(exc).__name__}): nothing changed",
            ) from exc

    def _written(self, row: routing_state.SharedRouting) -> None:
        self.generation = row.generation
        self.shared_champion = row.champion_version
        self.lease_lapsed = None
        self.metrics.routing_generation.set(row.generation)

    async def _apply_shared(self, row: routing_state.SharedRouting, at_start: bool = False) -> bool:
        """Apply a newer generation of the shared row (call with admin_lock held): load the
        versions it names (off the event loop), then switch. False when a load failed (the
        next poll tries again; the heartbeat shows the older generation meanwhile). At start-up
        the champion is the registry alias's (the truth the row's champion follows)."""
        if row.generation <= self.generation:
            return True
        champion, want = self.champion, row.champion_version
        try:
            if want is not None and not at_start and (champion is None or champion.version != want):
                champion = await self._variant_for(self.settings.champion_label, want)
            canary = None
            if row.canary_version is not None:
                canary = await self._variant_for(self.settings.canary_label, row.canary_version)
        except Exception:
            logger.exception("routing generation %d not applied yet", row.generation)
            return False
        if champion is not None and champion is not self.champion:
            logger.info("champion: version %s -> %s (shared routing)", self.champion and
                        self.champion.version, champion.version)  # fmt: skip
            self._set_champion(champion, SOURCE_REGISTRY)
        self.set_canary(canary, row.canary_weight, row.lease_seconds, row.lease_expires_at)
        if row.lease_expired_at is not None:
            self.lease_expired_at = row.lease_expired_at
        self._written(row)
        return True

    async def poll_routing(self) -> None:
        """Every `routing_poll_seconds`: read the shared row (one primary-key SELECT), apply a
        newer generation, write a lease that ran out here as weight 0 (compare-and-set: the
        first replica that sees it), then the heartbeat. Never raises: a database that is down
        leaves the last applied routing in place (and its lease still runs out here)."""
        self.check_lease()
        try:
            row = await self._db(routing_state.read_routing, self.scope)
            if row is not None and row.generation > self.generation:
                async with self.admin_lock:
                    await self._apply_shared(row)
            elif row is not None and self.lease_lapsed == row.generation == self.generation:
                await self._write_lapse(row.generation)
        except Exception:
            return  # recorded in store_view (/health)
        await self._heartbeat()

    async def _write_lapse(self, generation: int) -> None:
        if not await self._db(routing_state.lapse_lease, self.scope, generation, self.replica):
            return  # another replica wrote it first (or renewed it): the next poll applies it
        async with self.admin_lock:
            if self.generation == generation:  # the canary is off here already (check_lease)
                self.generation = generation + 1
                self.lease_lapsed = None
                self.metrics.routing_generation.set(self.generation)
        logger.warning("canary lease lapsed: weight 0 written as generation %d", generation + 1)

    def _heartbeat_values(self) -> dict[str, Any]:
        canary = self.canary
        return {
            "replica_id": self.replica, "scope": self.scope, "host": socket.gethostname(),
            "pid": os.getpid(), "started_at": self.started_at, "seen_at": time.time(),
            "applied_generation": self.generation,
            "champion_version": self.champion.version if self.champion else None,
            "canary_version": canary.version if canary else None,
            "canary_weight": self.canary_weight,
        }  # fmt: skip

    async def _heartbeat(self) -> None:
        """This replica's row in `serving_replicas`; never raises (recorded in store_view)."""
        with contextlib.suppress(Exception):
            await self._db(routing_state.heartbeat, self._heartbeat_values())

    async def join_shared_routing(self) -> None:
        """Start-up: adopt the shared row's canary, weight and lease; never raises (the poll
        keeps trying while the database is down)."""
        try:
            row = await self._db(routing_state.read_routing, self.scope)
        except Exception:
            logger.warning("start-up without the shared routing: the poll keeps trying")
            return
        if row is not None:
            async with self.admin_lock:
                await self._apply_shared(row, at_start=True)
        await self._heartbeat()

    async def admin_routing(self) -> dict[str, Any]:
        """The routing with its generation and the live replicas (each with the generation it
        applied): a deployer measures a step once every live replica applied its change."""
        mine = {k: v for k, v in self._heartbeat_values().items() if k in REPLICA_FIELDS}
        since = time.time() - LIVE_POLLS * max(self.settings.routing_poll_seconds, 1.0)
        try:
            rows = await self._db(routing_state.live_replicas, self.scope, since)
        except Exception:
            rows = []  # the database is down: this replica speaks for itself only
        others = [
            {k: v for k, v in row.items() if k in REPLICA_FIELDS}
            for row in rows
            if row["replica_id"] != self.replica
        ]
        replicas = sorted([mine, *others], key=lambda r: r["replica_id"])
        return {**self.routing(), "replica": self.replica, "replicas": replicas}

    # ------------------------------------------------------------------------ registry check

    def _look_up_champion(self) -> str | None:
        """The champion alias's version, recorded as a registry check (raises on an outage)."""
        attempted = time.time()
        self.registry_checks += 1
        try:
            version = self.champion_version()
        except Exception as exc:
            self._record_failed_check(attempted, exc)
            raise
        self.registry_view = RegistryView(version, attempted, attempted, None)
        return version

    def _record_failed_check(self, attempted: float, exc: BaseException) -> None:
        before = self.registry_view
        if before.error is None:
            logger.warning("registry check failed: %s: %s", type(exc).__name__, exc)
        self.registry_view = RegistryView(
            before.champion_version, attempted, before.last_good_at, type(exc).__name__
        )

    def _look_up_within(self, seconds: float) -> str | None:
        """_look_up_champion given up after `seconds` (<= 0: no bound) with RegistryUnavailable:
        a hung server is not bounded by MLflow's retries alone."""
        attempted = time.time()
        answer = _in_daemon_thread(self._look_up_champion, "registry-start")
        if not futures.wait([answer], seconds if seconds > 0 else None).done:
            outage = RegistryUnavailable(
                redact_url(self.settings.tracking_uri),
                f"looking up {self.settings.model_name}@{self.settings.champion_alias}",
                f"no answer within {seconds:g} s",
            )
            self._record_failed_check(attempted, outage)
            raise outage
        return answer.result()

    async def check_registry(self) -> None:
        """One background look at the champion alias; never raises (a failure is recorded).
        After an outage at start-up, the first answer is followed (see _follow_registry)."""
        try:
            version = await asyncio.wrap_future(
                _in_daemon_thread(self._look_up_champion, "registry-check")
            )
        except Exception:
            return
        if self.follow_registry:
            await self._follow_registry(version)

    async def _follow_registry(self, version: str | None) -> None:
        """The registry answers after an outage at start-up: the same version as served is
        confirmed, another one is loaded (a failed load is tried again at the next check), no
        alias leaves what is served (the warning says so); never raises."""
        async with self.admin_lock:
            if not self.follow_registry:  # an admin reload settled it meanwhile
                return
            served = self.champion.version if self.champion else None
            alias = self.settings.champion_alias
            if version is None:
                logger.warning("the registry has no %r alias (serving %s)", alias, served)
                if self.champion is None:
                    self.champion_problem = self._no_champion_message()
            elif version == served:
                self.champion_confirmed = True
                logger.info("the registry confirms v%s as %r", version, alias)
            else:
                try:
                    variant = await asyncio.to_thread(
                        self.load_variant, self.settings.champion_label, version
                    )
                except Exception:
                    logger.exception("the registry names v%s %r: loading it failed", version, alias)
                    return  # still following: the next check tries again
                self._set_champion(variant, SOURCE_REGISTRY)
                logger.warning(
                    "champion: v%s -> v%s, which the registry names %r now", served, version, alias
                )
            self.follow_registry = False

    def registry_report(self) -> tuple[dict[str, Any], str | None]:
        """/health's `registry` object and a warning when the registry and the service differ
        or the registry could not be read at the last check."""
        view = self.registry_view
        served = self.champion.version if self.champion else None
        known = view.last_good_at is not None
        report = {
            "champion_alias": self.settings.champion_alias,
            "champion_version": view.champion_version,
            "checked_at": view.checked_at,
            "last_good_check_at": view.last_good_at,
            "reachable": None if view.checked_at is None else view.error is None,
            "error": None if view.error is None else f"registry unreachable ({view.error})",
            "matches": (view.champion_version == served) if known else None,
        }
        warnings = []
        if self.champion is not None and not self.champion_confirmed:
            warnings.append(
                f"serving v{served} from {self.champion_source}: the registry could not be "
                "reached at start-up and has not confirmed it yet"
                + ("; the service follows the registry when it answers"
                   if self.follow_registry else "")
            )  # fmt: skip
        if view.error is not None:
            warnings.append(
                f"registry unreachable at {_when(view.checked_at)} ({view.error}); last good "
                f"check {_when(view.last_good_at)}"
            )
        if known and view.champion_version != served:
            alias = self.settings.champion_alias
            named = (
                f"names v{view.champion_version} {alias}"
                if view.champion_version is not None
                else f"has no {alias!r} alias"
            )
            warnings.append(
                f"the registry {named}, this service serves "
                f"{'v' + served if served else 'no model'}: POST /admin/reload or run the pipeline"
            )
        return report, "; ".join(warnings) or None

    def shared_routing_report(self) -> tuple[dict[str, Any], str | None]:
        """/health's `shared_routing`: the generation applied, the last look at the row, and
        a warning while the database cannot be read (the last applied routing is served)."""
        view = self.store_view
        report = {
            "generation": self.generation,
            "poll_seconds": self.settings.routing_poll_seconds,
            "checked_at": view.checked_at,
            "last_good_check_at": view.last_good_at,
            "reachable": None if view.checked_at is None else view.error is None,
            "error": None if view.error is None else f"store unreachable ({view.error})",
        }
        if view.error is None:
            return report, None
        return report, (
            f"shared routing unreachable at {_when(view.checked_at)} ({view.error}); serving "
            f"generation {self.generation} as last applied (last good check "
            f"{_when(view.last_good_at)}); a canary's lease still runs out here"
        )

    def health(self) -> dict[str, Any]:
        routing = self.routing()
        champion, canary = self.champion, self.canary
        ready = champion is not None
        registry_report, warning = self.registry_report()
        shared, shared_warning = self.shared_routing_report()
        return {
            "status": "ok" if ready else "no_champion",
            "ready": ready,
            "replica": self.replica,
            "detail": None if ready else f"no champion model yet: {self.champion_problem}",
            "warning": "; ".join(w for w in (warning, shared_warning) if w) or None,
            "registry": registry_report,
            "shared_routing": shared,
            **routing,
            "champion": None
            if champion is None
            else {
                "version": champion.version,
                "source": self.champion_source,
                "confirmed_by_registry": self.champion_confirmed,
            },
            # what takes traffic: a canary at weight 0 (the shadow step, a pause) is not routed
            "canary": None
            if canary is None or self.canary_weight <= 0
            else {"version": canary.version, "weight": self.canary_weight},
            # while a canary is loaded (any weight), the variant that did not answer scores too
            "shadow": {**self.shadow.stats(), "active": self.shadow.enabled and canary is not None},
            "predictor": {
                v.name: v.predictor.kind for v in (self.champion, self.canary) if v is not None
            },
            "uptime_seconds": round(time.monotonic() - self.started, 3),
        }

    # ------------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        await asyncio.to_thread(self.load_champion_at_start)
        await self.join_shared_routing()
        self.metrics.canary_weight.set(self.canary_weight)
        self.batcher.start()
        self.shadow.start()
        loop = asyncio.get_running_loop()
        lease = _every(self.settings.lease_check_seconds, self.check_lease, "lease")
        self._lease_task = loop.create_task(lease, name="canary-lease")
        if self.settings.registry_check_seconds > 0:
            check = _every(self.settings.registry_check_seconds, self.check_registry, "registry")
            self._registry_task = loop.create_task(check, name="registry-check")
        poll = _every(self.settings.routing_poll_seconds, self.poll_routing, "routing")
        self._poll_task = loop.create_task(poll, name="routing-poll")

    async def shutdown(self) -> None:
        named = (("lease", self._lease_task), ("registry", self._registry_task))
        for what, task in (*named, ("routing poll", self._poll_task)):
            if task is not None:
                await stop_task(task, f"the {what} check")
        await self.batcher.stop()
        await asyncio.to_thread(self.shadow.stop)  # (its last scores go to the store)
        await asyncio.to_thread(self._close_store)

    def _close_store(self) -> None:
        if not self.store.flush(timeout=30):
            logger.error("prediction store: rows still pending at shutdown")
        self.store.close()


async def _every(seconds: float, check: Callable[[], Any], what: str) -> None:
    """`check()` (awaited if a coroutine) every `seconds`: a watchdog survives anything."""
    while True:
        await asyncio.sleep(seconds)
        try:
            if asyncio.iscoroutine(result := check()):
                await result
        except Exception:
            logger.exception("%s check failed", what)
