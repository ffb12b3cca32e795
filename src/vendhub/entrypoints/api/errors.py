"""One error shape for every failure: {"error", "message", "details"?}; never a stack trace."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vendhub.adapters.mqtt.client import MqttNotConnected, MqttPublishError
from vendhub.domain.model import DomainError, IllegalTransition, OutOfStock
from vendhub.services.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthorized,
)
from vendhub.services.ports import GatewayError, InvalidNotification

log = logging.getLogger(__name__)

STATUS = {
    NotFound: 404,
    Conflict: 409,
    OutOfStock: 409,
    IllegalTransition: 409,
    InvalidRequest: 422,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
}


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        status = next((s for t, s in STATUS.items() if isinstance(exc, t)), 400)
        response = error_response(status, exc.code, str(exc), getattr(exc, "details", None))
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response

    @app.exception_handler(InvalidNotification)
    async def _notification(_: Request, exc: InvalidNotification) -> JSONResponse:
        return error_response(401, "invalid_notification", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return error_response(422, "validation_error", "request is invalid", details)

    @app.exception_handler(MqttNotConnected)
    @app.exception_handler(MqttPublishError)
    async def _mqtt(_: Request, exc: Exception) -> JSONResponse:
        # A dependency is down, not a bug: tell the client to retry later, not "internal error".
        return error_response(503, "mqtt_unavailable", str(exc))

    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError) -> JSONResponse:
        # The payment gateway failed us, not the client: a bad gateway, worth a retry.
        log.warning("payment gateway error: %s", exc)
        return error_response(502, "payment_gateway_error", "the payment gateway did not answer")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only 400 is a body it cannot decode at all (e.g. not UTF-8): the same
            # client mistake as broken JSON, which it reports as 422.
            return error_response(422, "validation_error", "request body is not valid JSON")
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; it has been logged")
