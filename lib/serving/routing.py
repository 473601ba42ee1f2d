"""ModelService: the state behind the app. Loaded variants (champion, canary), the canary's
weight and lease (a dead-man switch), the prediction store, the batcher and the metrics.

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
from lib.serving.batching import MicroBatcher, Variant
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
        self.lease_expired_at = time.time()
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
        }

    def set_canary(self, canary: Variant | None, weight: float, lease: float | None) -> None:
        self.canary = canary
        self.canary_weight = float(weight) if canary is not None else 0.0
        self.lease_seconds = lease
        self.lease_deadline = time.monotonic() + lease if lease and canary is not None else None
        self.metrics.canary_weight.set(self.canary_weight)
        logger.info(
            "routing: canary %s at %.2f%%%s",
            canary.version if canary else "none",
            self.canary_weight,
            f" (lease {lease:g} s)" if self.lease_deadline is not None else "",
        )

    async def update_routing(self, update: RoutingUpdate) -> dict[str, Any]:
        """PUT /admin/routing: load the canary version (if new), set weight and lease."""
        keep = "canary_version" not in update.model_fields_set  # absent: keep the canary there is
        version: Any = ... if keep else update.canary_version
        weight, lease = update.weight, update.lease_seconds
        async with self.admin_lock:
            self._check_expected_weight(update.expected_weight)  # before a load for nothing
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
            self._check_expected_weight(update.expected_weight)  # the lease may have run out
            self.set_canary(canary, float(weight), float(lease) if lease is not None else None)
            return self.routing()

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
        """POST /admin/reload: follow the champion alias (promotion or rollback)."""
        async with self.admin_lock:
            try:
                version = await asyncio.to_thread(self._look_up_champion)
            except Exception as exc:
                raise AdminError(503, f"cannot reach the MLflow registry: {exc}") from exc
            previous = self.champion.version if self.champion else None
            if version is None:
                raise AdminError(409, self._no_champion_message())
            reloaded = False
            if previous != version:
                canary = self.canary
                if canary is not None and canary.version == version:  # promotion: already loaded
                    champion = Variant(self.settings.champion_label, version, canary.predictor)
                else:
                    champion = await self._load_for_admin(self.settings.champion_label, version)
                self._set_champion(champion, SOURCE_REGISTRY)
                reloaded = True
                logger.info("champion: version %s -> %s", previous, version)
            self.champion_confirmed = True  # the registry named it just now
            self.follow_registry = False
            if self.canary is not None and self.canary.version == version:
                self.set_canary(None, 0.0, None)  # promoted: it is the champion now
            return {**self.routing(), "reloaded": reloaded, "previous_champion_version": previous}

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

    def health(self) -> dict[str, Any]:
        routing = self.routing()
        champion, canary = self.champion, self.canary
        ready = champion is not None
        registry_report, warning = self.registry_report()
        return {
            "status": "ok" if ready else "no_champion",
            "ready": ready,
            "detail": None if ready else f"no champion model yet: {self.champion_problem}",
            "warning": warning,
            "registry": registry_report,
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
        self.metrics.canary_weight.set(self.canary_weight)
        self.batcher.start()
        self.shadow.start()
        loop = asyncio.get_running_loop()
        lease = _every(self.settings.lease_check_seconds, self.check_lease, "lease")
        self._lease_task = loop.create_task(lease, name="canary-lease")
        if self.settings.registry_check_seconds > 0:
            check = _every(self.settings.registry_check_seconds, self.check_registry, "registry")
            self._registry_task = loop.create_task(check, name="registry-check")

    async def shutdown(self) -> None:
        for task in (self._lease_task, self._registry_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
