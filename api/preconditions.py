"""Optimistic concurrency: ``ETag`` is a resource's version, ``If-Match`` is required to
change it (428 without, 412 on a stale version)."""

from __future__ import annotations

from fastapi import Request, Response

from api.problems import Problem


def etag(version: int) -> str:
    return f'"{version}"'


def set_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = etag(version)


def check_if_match(request: Request, current: int, what: str) -> None:
    header = request.headers.get("if-match")
    if header is None:
        raise Problem(
            428,
            f"changing {what} needs an If-Match header with its ETag ({etag(current)}): "
            "read it first, then send the change",
            kind="precondition-required",
        )
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    if "*" in candidates or etag(current) in candidates:
        return
    raise Problem(
        412,
        f"{what} is at version {current}, not {header.strip()}: it changed since you read it; "
        "read it again and reapply your change",
        kind="stale-version",
        current_version=current,
    )
