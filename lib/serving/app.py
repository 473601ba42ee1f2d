"""The FastAPI app: routes over a `ModelService`, and `serve` to run it with uvicorn.

Request bodies are validated by the models of `schemas` straight from the raw bytes (one parse,
in pydantic-core) instead of FastAPI's body parameters, which would parse the JSON, validate it
and then answer errors in another shape. `/openapi.json` still describes every body and every
error answer: `_openapi` adds the models' JSON schemas to the generated document.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lib import registry
from lib.pipeline.features import FEATURE_COLUMNS
from lib.serving import schemas
from lib.serving.batching import Variant
from lib.serving.prediction_store import FeedbackRefused
from lib.serving.routing import AdminError, ModelService
from lib.serving.rows import Row
from lib.serving.schemas import InputError
from lib.serving.settings import ServingSettings

logger = logging.getLogger(__name__)


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(content, allow_nan=False).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": schemas.ErrorBody}


def _body(component: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{component}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_REFUSED = _error("the body is not valid: every problem, naming the field and the value")
_ADMIN_ERRORS = {
    401: _error("no 'Authorization: Bearer <token>' header"),
    403: _error("wrong token, or the admin API is disabled (no SERVING_ADMIN_TOKEN)"),
}
_bearer = HTTPBearer(auto_error=False, description="the service's SERVING_ADMIN_TOKEN")


def create_app(settings: ServingSettings) -> FastAPI:
    """The service as an ASGI app; the state is `app.state.service` (a ModelService)."""
    service = ModelService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    app = FastAPI(title="Play Store rating model service", lifespan=lifespan)
    app.state.service = service
    metrics = service.metrics
    store = service.store

    def admin(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        """Admin routes: a bearer token equal (constant-time) to SERVING_ADMIN_TOKEN."""
        token = settings.admin_token
        if not token:
            raise HTTPException(
                403,
                "admin API disabled: set SERVING_ADMIN_TOKEN in the service's environment and "
                "send 'Authorization: Bearer <token>'",
            )
        given = credentials.credentials.strip() if credentials is not None else ""
        if not given:
            raise HTTPException(
                401,
                "admin call needs 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), token.encode()):
            host = request.client.host if request.client else "?"
            logger.warning("admin call refused: wrong token (from %s)", host)
            raise HTTPException(403, "admin token refused")

    @app.post(
        "/predict",
        openapi_extra=_body("PredictRequest"),
        responses={
            200: {"description": "the label and probability (or a list of them for a batch)"},
            422: _REFUSED,
            500: _error("the model failed on this input (counted, stored, logged)"),
            503: _error("no champion model is loaded yet"),
        },
    )
    async def predict(request: Request) -> Response:
        """One app, a list of apps or {"instances": [...]}: the champion's (or canary's) answer."""
        service.batcher.enter()
        try:
            return await _predict(request)
        finally:
            service.batcher.leave()

    async def _predict(request: Request) -> Response:
        started = time.perf_counter()
        created = time.time()
        service.check_lease()
        if service.champion is None:
            metrics.unavailable.inc()
            return _json(503, {"detail": f"no champion model yet: {service.champion_problem}"})
        try:
            parsed = schemas.parse_predict(await request.body())
            rid = schemas.request_id(request.headers.get("x-request-id"), parsed.request_id)
        except InputError as exc:
            metrics.invalid.inc()
            return _json(422, {"detail": str(exc), "errors": exc.messages})
        variant = service.route(rid)
        if variant is None:  # the champion went away between the check and here
            metrics.unavailable.inc()
            return _json(503, {"detail": f"no champion model yet: {service.champion_problem}"})
        rows = parsed.rows
        ids = [f"{rid}-{i}" for i in range(len(rows))] if parsed.batch else [rid]
        requests_c, errors_c, latency_h = metrics.for_variant(variant)
        requests_c.inc()
        try:
            proba, labels = await service.batcher.predict(variant, rows)
        except Exception as exc:
            latency = time.perf_counter() - started
            errors_c.inc()
            latency_h.observe(latency)
            message = f"{type(exc).__name__}: {exc}"
            logger.error("model error (%s %s, %s): %s", variant.name, variant.version, rid, message)
            store.submit(
                [
                    _store_row(i, created, variant, None, None, latency, message, row)
                    for i, row in zip(ids, rows, strict=True)
                ]
            )
            return _json(500, {"detail": f"model error: {message}", "request_id": rid})
        latency = time.perf_counter() - started
        latency_h.observe(latency)
        metrics.count_labels(variant, labels)
        store.submit(
            [
                _store_row(i, created, variant, lab, p, latency, None, row)
                for i, row, lab, p in zip(ids, rows, labels, proba, strict=True)
            ]
        )
        headers = {"X-Request-ID": rid}
        answers = [
            {
                "request_id": i,
                "label": _plain(lab),
                "probability": p,
                "model_version": variant.version,
                "variant": variant.name,
            }
            for i, lab, p in zip(ids, labels, proba, strict=True)
        ]
        if not parsed.batch:
            return _json(200, answers[0], headers)
        body = {"request_id": rid, "model_version": variant.version, "variant": variant.name}
        return _json(200, {**body, "predictions": answers}, headers)

    @app.post(
        "/feedback",
        openapi_extra=_body("Feedback"),
        responses={
            200: {"description": "the stored outcome"},
            404: _error("no prediction was made with this request_id"),
            422: _REFUSED,
            409: _error("the prediction failed: there is no outcome to give feedback on"),
            503: _error("the prediction store is unavailable"),
        },
    )
    async def post_feedback(request: Request) -> Response:
        """The true rating (or label) of an app a prediction was made for."""
        try:
            feedback = schemas.parse_feedback(await request.body(), settings.target_threshold)
        except InputError as exc:
            return _json(422, {"detail": str(exc), "errors": exc.messages})
        rid = feedback.request_id
        try:
            stored = await run_in_threadpool(
                store.record_feedback, rid, feedback.rating, settings.target_threshold,
                feedback.label,
            )  # fmt: skip
        except FeedbackRefused as exc:
            return _json(409, {"detail": str(exc)})
        except Exception as exc:
            logger.exception("feedback for %s not stored", rid)
            return _json(503, {"detail": f"prediction store unavailable: {type(exc).__name__}"})
        if stored is None:
            return _json(
                404,
                {
                    "detail": f"unknown request_id {rid!r}: no prediction was made with it "
                    "(items of a batch have ids '<request_id>-<index>')"
                },
            )
        return _json(200, stored)

    @app.get("/health")
    async def health() -> Response:
        """Ready when a champion is loaded; the versions, the routing and the predictor kind."""
        return _json(200, service.health())

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        service.check_lease()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/routing")
    async def get_routing() -> Response:
        """The routing now: champion and canary versions, the canary's weight and lease."""
        return _json(200, service.routing())

    @app.put(
        "/admin/routing",
        dependencies=[Depends(admin)],
        openapi_extra=_body("RoutingUpdate"),
        responses={
            200: {"description": "the routing now"},
            **_ADMIN_ERRORS,
            404: _error("no such model version in the registry"),
            422: _error("the body is not valid, or the version cannot be loaded"),
        },
    )
    async def put_routing(request: Request) -> Response:
        """Set the canary version, its weight (percent of request ids) and its lease."""
        try:
            update = schemas.parse_routing(await request.body())
            return _json(200, await service.update_routing(update))
        except InputError as exc:
            return _json(422, {"detail": str(exc), "errors": exc.messages})
        except AdminError as exc:
            return _json(exc.status, {"detail": str(exc)})

    @app.post(
        "/admin/reload",
        dependencies=[Depends(admin)],
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

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request models' schemas (the routes read raw bodies)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schemas.openapi_components("#/components/schemas/{model}"))
        app.openapi_schema = document
    return app.openapi_schema


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _store_row(
    request_id: str,
    created: float,
    variant: Variant,
    label: Any,
    probability: float | None,
    latency: float,
    error: str | None,
    row: Row,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "created_at": created,
        "variant": variant.name,
        "model_version": variant.version,
        "label": None if label is None else int(label),
        "probability": probability,
        "latency_ms": latency * 1000.0,
        "error": error,
        "features": dict(zip(FEATURE_COLUMNS, row, strict=True)),
    }


def serve(settings: ServingSettings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the service with uvicorn (one worker: routing state lives in the process)."""
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
        registry.redact_uri(settings.tracking_uri),
        host,
        port,
        registry.redact_uri(settings.store_url),
    )
    uvicorn.Server(config).run()
