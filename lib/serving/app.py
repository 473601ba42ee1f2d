"""The FastAPI app: routes over a `ModelService` in groups (predictions, feedback, operations,
admin), and `serve` to run it with uvicorn. Bodies are checked before parsing (`_JSONRequest`: 415,
413), then validated by the pydantic models of `schemas` (422, one message per problem)."""

import asyncio
import contextlib
import faulthandler
import hmac
import json
import logging
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic_core
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lib.config import redact_url
from lib.pipeline.features import FEATURE_COLUMNS
from lib.serving import fields, schemas
from lib.serving.batching import Variant
from lib.serving.fields import show
from lib.serving.prediction_store import FeedbackRefused
from lib.serving.routing import AdminError, ModelService
from lib.serving.rows import Row
from lib.serving.schemas import InputError
from lib.serving.settings import MAX_BODY_BYTES, ServingSettings

logger = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 90.0  # the store's flush alone may take 30 s (routing.ModelService._close_store)

# The longest a request waits for its request id to be looked up in the prediction store; past
# it the request is answered unchecked (logged): a slow database never holds predictions. The
# look-ups run in a pool of their own: a hung database ties up these threads only.
CLAIM_WAIT_SECONDS = 2.0
CLAIM_THREADS = 4


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, allow_nan=False).encode()
    return Response(body, status, headers, media_type="application/json")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": schemas.ErrorBody}


_REFUSED = _error("the body is not valid: every problem, naming the field and the value")
_BODY_ERRORS = {
    400: _error("a malformed Content-Length, or JSON nested too deeply"),
    413: _error(f"the body is larger than {MAX_BODY_BYTES} bytes"),
    415: _error(
        "a Content-Type other than application/json, or a Content-Encoding other than identity"
    ),
}


class Refused(HTTPException):
    """A request refused before its body is parsed (400, 413, 415): status, detail, headers."""


def _check_content_type(value: str | None) -> None:
    """application/json (charset utf-8 if any); a missing Content-Type is read as JSON."""
    if value is None or value == "application/json":
        return
    media, _, params = value.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, given = param.partition("=")
        if name.strip().lower() == "charset":
            charset = given.strip().strip('"').lower()
    if media.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise Refused(
            415,
            f"Content-Type {show(value)} is not accepted: send the body as JSON (UTF-8) with "
            "'Content-Type: application/json'",
        )


def _check_content_encoding(value: str | None) -> None:
    """Only identity: the service inflates nothing (a decompression bomb is not its risk to take),
    and a body said to be compressed is never read as if it were plain."""
    if value is None:
        return
    codings = [c.strip().lower() for c in value.split(",") if c.strip()]
    if any(c != "identity" for c in codings):
        raise Refused(
            415,
            f"Content-Encoding {show(value)} is not accepted: send the body uncompressed "
            "(no Content-Encoding, or identity)",
            {"Accept-Encoding": "identity"},
        )


def _refused(exc: InputError) -> Response:
    return _json(422, {"detail": str(exc), "errors": exc.messages})


class _Guard:
    """ASGI layer around the routes: an exception a route did not answer becomes a generic 500
    (or 400 for a RecursionError: input nested too deeply) with a request id, its detail
    logged; the connection stays open (Starlette's ServerErrorMiddleware, outside this layer,
    would re-raise it, and uvicorn then drops the connection)."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = (b"x-replica", replica.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True  # every answer names the replica that gave it (X-Replica)
                message["headers"] = [*message.get("headers", ()), self.replica]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            rid = _header_id(scope)
            if isinstance(exc, ClientDisconnect):  # the caller left mid-body: nobody to answer
                logger.info("%s: client disconnected (request %s)", scope.get("path"), rid)
                return
            where = f"{scope.get('method')} {scope.get('path')}"
            if isinstance(exc, RecursionError):
                logger.warning("%s (request %s): input nested too deeply", where, rid)
                status, detail = 400, "request refused: input nested too deeply"
            else:
                logger.exception("%s (request %s) failed", where, rid)
                status, detail = 500, f"internal error (request {rid}; details in the log)"
            response = _json(status, {"detail": detail, "request_id": rid})
            await response(scope, receive, tracked)


def _header_id(scope: Scope) -> str:
    """The caller's X-Request-ID if it follows the rule, else a new one (for a 500's log line)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and (text := fields.request_id_text(value.decode("latin-1"))):
            return text
    return uuid.uuid4().hex


_REQUEST_ID_HEADER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "the caller's id for this prediction (wins over the body's request_id): "
    f"{fields.REQUEST_ID_RULE}; blank or absent: a new uuid4 hex. One id, one prediction: an id "
    "already used (items of a batch are '<id>-<index>') is refused with 409",
    "schema": {"type": "string", "pattern": fields.REQUEST_ID_HEADER_PATTERN},
}


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTPException, with a 405's Allow naming every method of the path
    (Starlette names only those of the first route that matched it: GET /admin/routing)."""
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
        methods = {
            method
            for route in request.app.router.routes
            if route.matches(request.scope)[0] is not Match.NONE
            for method in getattr(route, "methods", None) or ()
        }
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)  # type: ignore[arg-type]


_ADMIN_ERRORS = {
    401: _error("no 'Authorization: Bearer <token>' header"),
    403: _error("wrong token, or the admin API is disabled (no SERVING_ADMIN_TOKEN)"),
}
_bearer = HTTPBearer(auto_error=False, description="the service's SERVING_ADMIN_TOKEN")
_feedback_bearer = HTTPBearer(
    auto_error=False, scheme_name="FeedbackToken", description="the SERVING_FEEDBACK_TOKEN"
)


class _JSONRequest(Request):
    """A JSON request whose body is refused (Refused: 415, 413) before it is read whole when too
    big: on its Content-Length header first, then chunk by chunk as it streams in. Parsed by
    pydantic-core: JSON nested over 200 levels or a lone surrogate is invalid JSON (422)."""

    _raw: bytes | None = None

    async def body(self) -> bytes:
        if self._raw is not None:
            return self._raw
        _check_content_type(self.headers.get("content-type"))
        _check_content_encoding(self.headers.get("content-encoding"))
        close = {"Connection": "close"}  # the rest of the body is not read: the connection ends
        length, limit = self.headers.get("content-length"), MAX_BODY_BYTES
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise Refused(400, f"Content-Length {show(length)} is not a number", close)
            if int(length) > limit:
                raise Refused(413, f"body of {length} bytes: at most {limit}", close)
        chunks = []
        size = 0
        async for chunk in self.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"body over {limit} bytes: at most {limit}", close)
            chunks.append(chunk)
        self._raw = b"".join(chunks)
        return self._raw

    async def json(self) -> Any:
        try:
            return pydantic_core.from_json(await self.body())
        except ValueError as exc:  # FastAPI answers a JSONDecodeError as invalid JSON
            raise json.JSONDecodeError(str(exc), "", 0) from None


class _JSONRoute(APIRoute):
    """A route whose body model FastAPI validates, read through `_JSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            request = _JSONRequest(request.scope, request.receive)
            await request.body()  # refused here (415, 413), or the client left: FastAPI would
            return await handler(request)  # answer either as "error parsing the body" (400)

        return bounded


class _PredictRoute(_JSONRoute):
    """/predict: a request counts for micro-batching from its first byte (`enter`), and a
    refused body counts as invalid input (a client's mistake: never a model error)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def counted(request: Request) -> Response:
            service: ModelService = request.app.state.service
            service.batcher.enter()
            try:
                return await handler(request)
            except (RequestValidationError, Refused):
                service.metrics.invalid.inc()
                raise
            finally:
                service.batcher.leave()

        return counted


async def _invalid_body(request: Request, exc: Exception) -> Response:
    """422 naming every problem: 'field: what was expected, got what came'."""
    assert isinstance(exc, RequestValidationError)
    tagged = request.url.path == "/predict"
    return _refused(InputError(schemas.messages(exc.errors(), tagged=tagged)))


def create_app(settings: ServingSettings) -> FastAPI:
    """The service as an ASGI app; the state is `app.state.service` (a ModelService)."""
    if settings.feedback_token and settings.feedback_token == settings.admin_token:
        raise ValueError(
            "SERVING_FEEDBACK_TOKEN must differ from SERVING_ADMIN_TOKEN: whoever sends labels "
            "must not be able to move traffic"
        )
    service = ModelService(settings)
    lookups = ThreadPoolExecutor(CLAIM_THREADS, thread_name_prefix="request-id-lookup")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            lookups.shutdown(wait=False, cancel_futures=True)
            # bounded: a shutdown step that never returns (seen once in a test worker, cause not
            # found) must not hold the process; rows not written yet stay in the journal
            stopping = asyncio.ensure_future(service.shutdown())
            done, _ = await asyncio.wait({stopping}, timeout=SHUTDOWN_SECONDS)
            if not done:
                logger.error("shutdown not done after %.0f s: left behind", SHUTDOWN_SECONDS)
            else:
                stopping.result()  # its error, if any, as before

    app = FastAPI(
        title="Play Store rating model service",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: /docs points at /openapi.json
        redoc_url=None,
        strict_content_type=False,  # a body without Content-Type is read as JSON
    )
    app.add_middleware(_Guard, replica=service.replica)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.state.service = service
    _Predictions(service, lookups).add_route(app.router)
    _add_feedback_route(app.router, service, settings.target_threshold)
    _add_operations_routes(app.router, service)
    _add_admin_routes(app.router, service)
    return app


class _Predictions:
    """POST /predict: validate, check the caller's request id, predict, store, answer."""

    def __init__(self, service: ModelService, lookups: ThreadPoolExecutor) -> None:
        self.service, self.lookups = service, lookups
        self.metrics, self.store = service.metrics, service.store

    def add_route(self, router: APIRouter) -> None:
        router.add_api_route(
            "/predict",
            self.predict,
            methods=["POST"],
            route_class_override=_PredictRoute,
            openapi_extra={"parameters": [_REQUEST_ID_HEADER]},
            responses={
                200: {
                    "description": "the label and probability (or a list of them for a batch)",
                    "headers": {
                        "X-Request-ID": {
                            "description": "the request's id",
                            "schema": {"type": "string"},
                        }
                    },
                },
                **_BODY_ERRORS,
                409: _error("the request id was already used for a prediction: nothing was done"),
                422: _REFUSED,
                500: _error(
                    "the model failed on this input (counted, stored, logged; the answer "
                    "names the request id, not the error)"
                ),  # fmt: skip
                503: _error("no champion model is loaded yet"),
            },
        )

    async def predict(self, body: schemas.PredictRequest, request: Request) -> Response:
        """One app, a list of apps or {"instances": [...]}: the champion's (or canary's) answer."""
        started = time.perf_counter()
        created = time.time()
        service, store = self.service, self.store
        service.check_lease()
        if service.champion is None:
            self.metrics.unavailable.inc()
            return _json(503, {"detail": f"no champion model yet: {service.champion_problem}"})
        try:
            rows, batch, body_id = body.parsed()
            given = schemas.caller_request_id(request.headers.get("x-request-id"), body_id)
        except InputError as exc:
            self.metrics.invalid.inc()  # a client's mistake: never a model error
            return _refused(exc)
        rid = given or uuid.uuid4().hex  # (a new uuid4 is unique: nothing to check)
        ids = [f"{rid}-{i}" for i in range(len(rows))] if batch else [rid]
        if given is None:
            return await self._answer(rid, ids, rows, batch, started, created, None)
        used = store.hold(ids)  # a request in flight or a row pending in this process
        if used is not None:
            return self._refuse_repeated(rid, used, batch)
        # a row stored before (a restart, another replica): looked up while the model predicts
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(self.lookups, store.stored, ids)
        try:
            return await self._answer(rid, ids, rows, batch, started, created, lookup)
        finally:
            lookup.cancel()  # (a no-op once done)
            store.release(ids)  # (what was submitted is a pending row already)

    def _refuse_repeated(self, rid: str, used: str, batch: bool) -> Response:
        self.metrics.repeated_ids.inc()  # a client's mistake: never a model error
        return _json(409, {"detail": _repeated(rid, used, batch), "request_id": rid})

    async def _answer(
        self,
        rid: str,
        ids: list[str],
        rows: list[Row],
        batch: bool,
        started: float,
        created: float,
        lookup: asyncio.Future[str | None] | None,
    ) -> Response:
        variant = self.service.route(rid)  # (not None: a champion, once loaded, stays)
        requests_c, errors_c, latency_h = self.metrics.for_variant(variant)
        error = None
        try:
            proba, labels = await self.service.batcher.predict(variant, rows)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if (used := await _stored(lookup)) is not None:
            return self._refuse_repeated(rid, used, batch)
        latency = time.perf_counter() - started
        requests_c.inc()
        latency_h.observe(latency)
        if error is not None:
            errors_c.inc()
            logger.error("model error (%s %s, %s): %s", variant.name, variant.version, rid, error)
            self.store.submit(_store_rows(ids, rows, created, variant, latency, error=error))
            detail = f"model error: the model could not answer (request {rid}; details in the log)"
            return _json(500, {"detail": detail, "request_id": rid})
        self.metrics.count_labels(variant, labels)
        answers = zip(labels, proba, strict=True)
        self.store.submit(_store_rows(ids, rows, created, variant, latency, answers))
        if self.service.canary is not None:  # a rollout: the other variant scores it too
            self.service.offer_shadow(variant, ids, rows, created)
        return _json(200, _answers(rid, ids, variant, labels, proba, batch), {"X-Request-ID": rid})


async def _stored(lookup: asyncio.Future[str | None] | None) -> str | None:
    """What the look-up found stored. A database that does not answer within
    CLAIM_WAIT_SECONDS costs the check (the primary key still keeps an id's first row),
    never the prediction."""
    if lookup is None:
        return None
    try:
        async with asyncio.timeout(CLAIM_WAIT_SECONDS):  # (wait_for would cost a task)
            return await lookup
    except TimeoutError:
        logger.warning("request id not checked: the prediction store did not answer")
    except Exception:  # a failing check must not cost an answered prediction
        logger.exception("request id not checked")
    return None


def _answers(
    rid: str, ids: list[str], variant: Variant, labels: Any, proba: Any, batch: bool
) -> dict[str, Any]:
    """The body of a 200: one answer, or a batch's answers under the request's id."""
    answers = [
        {
            "request_id": i,
            "label": lab,
            "probability": p,
            "model_version": variant.version,
            "variant": variant.name,
        }
        for i, lab, p in zip(ids, labels, proba, strict=True)
    ]
    if not batch:
        return answers[0]
    body = {"request_id": rid, "model_version": variant.version, "variant": variant.name}
    return {**body, "predictions": answers}


def _add_feedback_route(router: APIRouter, service: ModelService, threshold: float) -> None:
    """POST /feedback: the true rating (or label) of an app a prediction was made for."""
    feedback_body = schemas.feedback_model(threshold)

    async def post_feedback(feedback: feedback_body) -> Response:  # type: ignore[valid-type]
        """The true rating (or label) of an app a prediction was made for."""
        rid = feedback.request_id
        try:
            stored = await run_in_threadpool(
                service.store.record_feedback,
                rid, feedback.rating, threshold, feedback.label, source=feedback.source,
            )  # fmt: skip
        except FeedbackRefused as exc:
            return _json(409, {"detail": str(exc)})
        except Exception as exc:
            logger.exception("feedback for %s not stored", rid)
            return _json(503, {"detail": f"prediction store unavailable: {type(exc).__name__}"})
        if stored is None:
            detail = (
                f"unknown request_id {rid!r}: no prediction was made with it "
                "(items of a batch have ids '<request_id>-<index>')"
            )
            return _json(404, {"detail": detail})
        return _json(200, stored)

    router.add_api_route(
        "/feedback",
        post_feedback,
        methods=["POST"],
        dependencies=[Depends(_feedback_bearer), Depends(_require_feedback)],
        route_class_override=_FeedbackJSONRoute,
        responses={
            200: {"description": "the stored outcome"},
            401: _error("no 'Authorization: Bearer <SERVING_FEEDBACK_TOKEN>'"),
            403: _error("wrong token, or feedback is disabled (no SERVING_FEEDBACK_TOKEN)"),
            **_BODY_ERRORS,
            404: _error("no prediction was made with this request_id"),
            422: _REFUSED,
            409: _error("the prediction failed: there is no outcome to give feedback on"),
            503: _error("the prediction store is unavailable"),
        },
    )


def _add_operations_routes(router: APIRouter, service: ModelService) -> None:
    """/health, /metrics and /docs (which says where the document is)."""

    @router.get("/health")
    async def health() -> Response:
        """Ready when a champion is loaded; the versions, the routing and the predictor kind."""
        return _json(200, service.health())

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "the Prometheus text exposition format"}},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        service.check_lease()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        """No Swagger UI (it would load scripts from a CDN): where the document is."""
        return HTMLResponse(
            "<!doctype html><title>Play Store rating model service</title><p>The API is "
            'described by <a href="/openapi.json">/openapi.json</a> (OpenAPI 3); this service '
            "does not serve Swagger UI, which loads from a CDN: open the document in any OpenAPI "
            "viewer.</p>"
        )


def _require_bearer(request: Request, token: str | None, what: str, variable: str) -> None:
    """Refuse (HTTPException) unless the request carries a bearer token equal (constant-time)
    to `token`: 403 when none is configured (`variable` unset), 401 without one, 403 if wrong."""
    if not token:
        raise HTTPException(
            403,
            f"{what} disabled: set {variable} in the service's environment and send "
            "'Authorization: Bearer <token>'",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    if not given:
        raise HTTPException(
            401, f"{what} needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(given.encode(), token.encode()):
        host = request.client.host if request.client else "?"
        logger.warning("%s refused: wrong token (from %s)", what, host)
        raise HTTPException(403, f"{what}: token refused")


def _require_admin(request: Request) -> None:
    """The admin API's credential (a route's dependency: it documents the bearer scheme)."""
    token = request.app.state.service.settings.admin_token
    _require_bearer(request, token, "admin API", "SERVING_ADMIN_TOKEN")


def _require_feedback(request: Request) -> None:
    """Labels decide rollbacks, so they need their own credential, never the admin's."""
    token = request.app.state.service.settings.feedback_token
    _require_bearer(request, token, "feedback", "SERVING_FEEDBACK_TOKEN")


class _AdminJSONRoute(_JSONRoute):
    """A guarded route with a body: the token is checked before the body is read, so a caller
    without the token learns nothing about the body's rules (401/403, never 413/415/422)."""

    guard = staticmethod(_require_admin)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            self.guard(request)
            return await handler(request)

        return guarded


class _FeedbackJSONRoute(_AdminJSONRoute):
    guard = staticmethod(_require_feedback)


def _add_admin_routes(router: APIRouter, service: ModelService) -> None:
    """/admin/routing (read, or set with compare-and-set) and /admin/reload."""
    admin = [Depends(_bearer), Depends(_require_admin)]

    @router.get("/admin/routing", dependencies=admin, responses={**_ADMIN_ERRORS})
    async def get_routing() -> Response:
        """The routing now: champion and canary versions, the canary's weight and lease, the
        shared routing's generation and the live replicas with the generation each applied."""
        return _json(200, await service.admin_routing())

    async def put_routing(update: schemas.RoutingUpdate) -> Response:
        """Set the canary version, its weight (percent of request ids) and its lease; with
        expected_weight, only if the weight now is that one (compare-and-set). A canary at
        weight 0 answers nobody and scores every request in the shadow (the `shadow` step)."""
        try:
            return _json(200, await service.update_routing(update))
        except AdminError as exc:
            return _json(exc.status, {"detail": str(exc)})

    router.add_api_route(
        "/admin/routing",
        put_routing,
        methods=["PUT"],
        dependencies=admin,
        route_class_override=_AdminJSONRoute,
        responses={
            200: {"description": "the routing now"},
            **_ADMIN_ERRORS,
            **_BODY_ERRORS,
            404: _error("no such model version in the registry"),
            409: _error(
                "expected_weight is not the canary weight now (a person or an expired lease "
                "changed it), or a weight above 0 without a canary loaded: nothing was changed"
            ),
            422: _error("the body is not valid, or the version cannot be loaded"),
        },
    )

    @router.post(
        "/admin/reload",
        dependencies=admin,
        responses={
            200: {"description": "the routing now, and whether the champion changed"},
            **_ADMIN_ERRORS,
            404: _error("the aliased version is not in the registry"),
            409: _error("the champion alias is not set"),
            422: _error("the aliased version cannot be loaded"),
            503: _error("the MLflow registry cannot be reached"),
        },
    )
    async def reload() -> Response:
        """Follow the champion alias (after a promotion or a rollback)."""
        try:
            return _json(200, await service.reload_champion())
        except AdminError as exc:
            return _json(exc.status, {"detail": str(exc)})


def _repeated(rid: str, used: str, batch: bool) -> str:
    """Why a request id is refused: feedback names a prediction by its id, so one id, one."""
    which = f"request id {rid!r}" if used == rid else f"request id {rid!r}: item id {used!r}"
    items = "; the items of a batch are '<request id>-<index>'" if batch or used != rid else ""
    return (
        f"{which} was already used for a prediction: send a new id for each prediction "
        f"(feedback for an id joins the prediction answered under it{items})"
    )


def _store_rows(
    ids: list[str], rows: list[Row], created: float, variant: Variant, latency: float,
    answers: Any = None, error: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """A request's rows for the prediction store: (label, probability) answers, or its error."""
    return [
        {
            "request_id": i,
            "created_at": created,
            "variant": variant.name,
            "model_version": variant.version,
            "label": None if label is None else int(label),
            "probability": p,
            "latency_ms": latency * 1000.0,
            "error": error,
            "features": dict(zip(FEATURE_COLUMNS, row, strict=True)),
        }
        for i, row, (label, p) in zip(ids, rows, answers or [(None, None)] * len(ids), strict=True)
    ]


def serve(
    settings: ServingSettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Run one replica with uvicorn (one process; routing is shared with the other replicas
    through the prediction store's database). `sockets`: listen on these, already bound (a
    worker of `serve --workers N`), instead of host:port."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        workers=1,
        access_log=settings.access_log,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
    logger.info(
        "serving %s from %s on http://%s:%d (store %s)",
        settings.model_name,
        redact_url(settings.tracking_uri),
        host,
        port,
        redact_url(settings.store_url),
    )
    # `kill -USR1 <pid>` writes every thread's stack to stderr: what a stuck replica is doing
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    uvicorn.Server(config).run(sockets=sockets)
