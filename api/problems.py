"""Every error as ``application/problem+json`` (RFC 9457): a type, a title, the status and a
precise ``detail``; never a stack trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("smart_alerts.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://vs9.dev/problems/"  # documented in docs/api.md, one anchor per type

TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
}


class ProblemDocument(BaseModel):
    """The body of every error answer (RFC 9457); some kinds add members (``errors``)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="a URL naming the kind of problem")
    title: str = Field(description="the status in words")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what is wrong and what to do")
    instance: str | None = Field(None, description="the path of the request")


PROBLEM_SCHEMA = "#/components/schemas/Problem"
FASTAPI_422 = "#/components/schemas/HTTPValidationError"


class Problem(Exception):
    """An error answer. ``kind`` names the problem type (``<TYPE_BASE><kind>``)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    kind = kind or TITLES.get(status, "error").lower().replace(" ", "-")
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for error in exc.errors():
        loc = error.get("loc", ())
        if error.get("type") == "json_invalid":
            # FastAPI puts the character's position where a field's name would be, and the
            # parser's reason in ctx.
            reason = error.get("ctx", {}).get("error", "JSON decode error")
            errors.append(
                {"pointer": "body", "detail": f"not valid JSON ({reason} at character {loc[-1]})"}
            )
            continue
        where = ".".join(str(part) for part in loc if part != "body") or "body"
        errors.append({"pointer": where, "detail": str(error.get("msg", "invalid"))})
    first = errors[0] if errors else {"pointer": "body", "detail": "invalid"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first['pointer']}: {first['detail']}{more}", errors


def _document_problems(document: dict[str, Any]) -> None:
    """Every error response a route documents is a problem document, whether the route named
    its content or not, in place of FastAPI's own 422 body (which this app never sends). A
    response documented with a model of its own (the readiness report's 503) stays as it is."""
    problem = {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA}}}
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                fastapi_422 = (
                    content.get("application/json", {}).get("schema", {}).get("$ref") == FASTAPI_422
                )
                if code[:1] in "45" and (set(content) <= {PROBLEM_JSON} or fastapi_422):
                    response["content"] = problem
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = ProblemDocument.model_json_schema()
    if FASTAPI_422 not in json.dumps(document):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into a problem document, and document
    them so in the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_problems(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            kind=exc.kind,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extensions,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a JSON body that is not UTF-8 with a bare 400; it is invalid input
            # like malformed JSON (a 422), so it gets the same answer.
            where = f"body: not UTF-8 encoded JSON ({exc.__cause__})"
            error = {"pointer": "body", "detail": str(exc.__cause__)}
            return problem_response(422, where, instance=request.url.path, errors=[error])
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(
            exc.status_code,
            detail,
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _validation_detail(exc)
        return problem_response(422, detail, instance=request.url.path, errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            f"the server failed to answer ({type(exc).__name__}); it is logged, try again",
            instance=request.url.path,
        )
