"""Rules: create (JSON, rule text, template), list, read, change, enable/disable, delete,
versions.

Every write runs in one transaction (api/rule_store.py): the rule is locked, the new version
is written to PostgreSQL, published to the rules topic and acknowledged by the broker, then
committed. A broker that refuses rolls it back (503), and a read that follows a write's answer
reads what it wrote. The answer is the rule exactly as published (the alerts.rules message),
its ``ETag`` the version.

Rules another producer put on alerts.rules (the CLI, a replay, the demo) are read as the job
stored them; the first change through the API imports such a rule and continues its versions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

import psycopg
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import rule_store as store
from api.auth import Principal, for_user, not_found, require, services
from api.pagination import (
    CursorParam,
    LimitParam,
    Page,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
    time_cursor,
)
from api.preconditions import check_if_match, etag
from api.problems import Problem
from api.services import Services
from pipeline.fields import NUL_FREE
from pipeline.messages import (
    MAX_TEXT_LENGTH,
    Id,
    Priority,
    Rule,
    describe_validation_error,
    format_timestamp,
)
from pipeline.rules.english import EnglishRuleError, understand
from pipeline.rules.templates import Template, TemplateError, list_templates
from pipeline.rules.text import RuleTextError
from sinks.kafka import OutgoingRecord

router = APIRouter(prefix="/v1/rules", tags=["rules"])

Reader = Annotated[Principal, Depends(require("rules:read"))]
Writer = Annotated[Principal, Depends(require("rules:write"))]
Svc = Annotated[Services, Depends(services)]
RuleIdParam = Annotated[str, Path(description="the rule's id", max_length=128)]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or invalid credentials"},
    403: {"description": "the credentials lack the scope (analysts never write rules)"},
    503: {"description": "PostgreSQL or Kafka is unavailable; nothing was changed"},
}
ONE_RULE: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: {"description": "no such rule, or another user's: nothing of it is shown"},
}
CREATE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    409: {"description": "a rule with this id exists (change it with PUT) or the id is taken"},
    422: {"description": "not a valid rule (the field, or the rule text's column, is named)"},
}
CHANGE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **ONE_RULE,
    412: {"description": "If-Match names an older version: read the rule again, reapply"},
    422: {"description": "not a valid rule (the field is named)"},
    428: {"description": "If-Match is missing"},
}
ETAG_HEADER = {"headers": {"ETag": {"description": "the rule's version"}}}
UNDERSTOOD_HEADERS = {
    "headers": {
        **ETAG_HEADER["headers"],
        "X-Rule-Understood-As": {
            "description": "only when the text was read as plain English: the canonical rule "
            "text it was read as (non-ASCII characters as \\uXXXX escapes)",
            "schema": {"type": "string"},
        },
        "X-Rule-Unused-Words": {
            "description": "only when the text was read as plain English and some words were "
            "not used: those words, separated by spaces (non-ASCII as \\uXXXX escapes)",
            "schema": {"type": "string"},
        },
    }
}


class RuleInput(Rule):
    """A rule as sent to the API: the alerts.rules message, where ``id`` may be left out
    (one is generated), ``user_id`` may be left out (the caller; only admins name another
    user) and ``version`` is ignored (the API numbers the versions)."""

    id: Id | None = None  # type: ignore[assignment]
    user_id: Id | None = None  # type: ignore[assignment]
    version: int | None = None  # type: ignore[assignment]


class RuleTextInput(BaseModel):
    """A rule written as rule text or a plain-English sentence (docs/rules.md, *Rule text*,
    *Plain English*)."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH, pattern=NUL_FREE)]
    id: Id | None = Field(None, description="the rule's id, unless the text names one")
    user_id: Id | None = Field(None, description="the owner (admins only; default the caller)")


class RuleFromTemplate(BaseModel):
    """A rule made from a template: a built-in one (by name) or a published one (by id)."""

    model_config = ConfigDict(extra="forbid")

    template: Annotated[str, Field(min_length=1, max_length=128, pattern=NUL_FREE)] = Field(
        description="a built-in template's name (GET /v1/templates) or a published "
        "template's id (st-..., GET /v1/templates/shared)"
    )
    symbol: Annotated[str, Field(min_length=1, max_length=40_000, pattern=NUL_FREE)] = Field(
        description="AAPL, a watchlist AAPL,MSFT, or * for every symbol"
    )
    params: dict[str, str | int | float] = Field(
        default_factory=dict,
        description='parameter values as the template lists them (e.g. {"level": "200"})',
    )
    user_id: Id | None = Field(None, description="the owner (admins only; default the caller)")


class RuleVersion(BaseModel):
    """One version of a rule: the message as published, what made it, who, when."""

    version: int
    change: store.Change = Field(
        description="imported: the version another producer put on alerts.rules, where the "
        "API's history of the rule starts"
    )
    written_by: str | None = Field(
        description="the user id of the token or API key that wrote it; null when imported"
    )
    written_at: datetime = Field(
        description="when it was written (imported: when the job stored it)"
    )
    rule: Rule


# ---------------------------------------------------------------- answers and checks


def rule_response(document: dict[str, Any], status: int = 200, **headers: str) -> JSONResponse:
    """The rule's message as published, with its version as the ETag."""
    return JSONResponse(
        document, status_code=status, headers={"ETag": etag(document["version"]), **headers}
    )


def readable(
    principal: Principal, current: store.StoredRule | None, rule_id: str
) -> store.StoredRule:
    """The live rule if the caller may read it; 404 otherwise (another user's looks missing)."""
    if current is None or not current.live or not principal.may_read(current.owner):
        raise not_found("rule", rule_id)
    return current


def writable(
    principal: Principal, current: store.StoredRule | None, rule_id: str
) -> store.StoredRule:
    if current is None or not current.live or not principal.may_write(current.owner):
        raise not_found("rule", rule_id)
    return current


def invalid_rule(exc: ValidationError) -> Problem:
    errors = [
        {"pointer": ".".join(str(part) for part in e["loc"]) or "body", "detail": e["msg"]}
        for e in exc.errors(include_url=False)
    ]
    return Problem(422, describe_validation_error(exc), kind="invalid-rule", errors=errors)


def _rule_of(body: RuleInput, *, rule_id: str, owner: str, version: int) -> Rule:
    document = body.model_dump(mode="json", exclude_none=True)
    document.update(id=rule_id, user_id=owner, version=version)
    try:
        return Rule.model_validate(document)
    except ValidationError as exc:
        raise invalid_rule(exc) from None


def create(
    svc: Services,
    principal: Principal,
    rule: Rule,
    *,
    shared_template: str | None = None,
) -> JSONResponse:
    """Write ``rule`` as a new rule (version 1; a deleted rule of the same owner comes back
    as its next version), publish it, commit; 409 if the id is in use (also by a rule another
    producer put on alerts.rules: the engine holds it, so it is changed with PUT)."""
    with svc.transaction() as conn:
        current = store.lock_rule(conn, rule.id)
        version = 1
        if current is not None and current.owner == rule.user_id and not current.live:
            version = current.version + 1
        elif current is not None and current.owner == rule.user_id:
            origin = " (it came to alerts.rules from another producer)" if current.imported else ""
            raise Problem(
                409,
                f"rule {rule.id!r} exists{origin}: change it with PUT /v1/rules/{rule.id} "
                f"(If-Match: {etag(current.version)})",
                kind="rule-exists",
            )
        elif current is not None:
            raise Problem(
                409,
                f"the rule id {rule.id!r} is taken: choose another id or leave it out",
                kind="rule-id-taken",
            )
        rule = rule.model_copy(update={"version": version})
        try:
            document = store.write_version(
                conn, rule, previous=current, change="create", actor=principal.user_id
            )
        except psycopg.errors.UniqueViolation:
            raise Problem(
                409,
                f"rule {rule.id!r} was created by another request at the same time",
                kind="rule-exists",
            ) from None
        if shared_template is not None:
            store.count_use(conn, shared_template)
        svc.publish(svc.settings.topics.rules, [rule])
    return rule_response(document, 201, Location=f"/v1/rules/{quote(rule.id, safe='')}")


def change(
    svc: Services,
    principal: Principal,
    request: Request,
    rule_id: str,
    kind: store.Change,
    make: Callable[[store.StoredRule], Rule | None],
) -> JSONResponse:
    """Write the rule ``make`` returns from the current one as the next version (under the
    rule's lock, If-Match checked); None from ``make`` changes nothing. An imported rule's
    first change continues from the version the job stored (``store.write_version``)."""
    with svc.transaction() as conn:
        current = writable(principal, store.lock_rule(conn, rule_id), rule_id)
        check_if_match(request, current.version, f"rule {rule_id!r}")
        rule = make(current)
        if rule is None:
            return rule_response(current.document)
        document = store.write_version(
            conn, rule, previous=current, change=kind, actor=principal.user_id
        )
        svc.publish(svc.settings.topics.rules, [rule])
    return rule_response(document)


# ---------------------------------------------------------------- create


@router.post(
    "",
    summary="Create a rule from its JSON",
    status_code=201,
    response_model=Rule,
    responses={201: ETAG_HEADER, **CREATE_PROBLEMS},
)
def create_rule(body: RuleInput, principal: Writer, svc: Svc) -> JSONResponse:
    """Create a rule (version 1) from the alerts.rules message. Without ``id`` one is
    generated (``r-`` and 32 hex digits). The answer is the message as published."""
    owner = for_user(principal, body.user_id, write=True)
    rule_id = body.id or f"r-{uuid.uuid4().hex}"
    return create(svc, principal, _rule_of(body, rule_id=rule_id, owner=owner, version=1))


@router.post(
    "/from-text",
    summary="Create a rule from rule text or a plain-English sentence",
    status_code=201,
    response_model=Rule,
    responses={
        201: UNDERSTOOD_HEADERS,
        **CREATE_PROBLEMS,
        422: {
            "description": "not a valid rule: the detail names the rule text's column "
            "(members line, column, excerpt); when the text reads as a sentence it also says "
            "why the sentence is refused, and the members understood and unused_words say "
            "what was read and what was not"
        },
    },
)
def create_rule_from_text(body: RuleTextInput, principal: Writer, svc: Svc) -> JSONResponse:
    """Create a rule from rule text or, when the text does not parse, from a plain-English
    sentence (docs/rules.md, *Plain English*); for a sentence the headers
    ``X-Rule-Understood-As`` and ``X-Rule-Unused-Words`` say how it was read. Without an id
    (in the body or the text) the id is ``r-`` and a hash of the owner and the rule text, so
    the same text twice is a 409. A text that is neither is a 422."""
    owner = for_user(principal, body.user_id, write=True)
    try:
        understood = understand(body.text, user_id=owner, rule_id=body.id)
    except EnglishRuleError as exc:
        formal = exc.formal
        where = {} if formal is None else _where(formal)
        raise Problem(
            422,
            str(exc),
            kind="invalid-rule-text",
            understood=exc.understood,
            unused_words=list(exc.unused),
            **where,
        ) from None
    except RuleTextError as exc:
        raise Problem(
            422, str(exc).splitlines()[0].rstrip(":"), kind="invalid-rule-text", **_where(exc)
        ) from None
    response = create(svc, principal, understood.rule)
    if understood.canonical is not None:
        response.headers["X-Rule-Understood-As"] = _ascii(understood.canonical)
        if understood.unused:
            response.headers["X-Rule-Unused-Words"] = _ascii(" ".join(understood.unused))
    return response


def _where(exc: RuleTextError) -> dict[str, Any]:
    """Where rule text went wrong: its line and column, and the line with a caret under it."""
    return {
        "line": exc.line,
        "column": exc.column,
        "excerpt": "\n".join(str(exc).splitlines()[1:]),
    }


def _ascii(text: str) -> str:
    # header values are Latin-1 on the wire: escape the rest rather than garble it
    return text.encode("ascii", "backslashreplace").decode("ascii")


@router.post(
    "/from-template",
    summary="Create a rule from a template",
    status_code=201,
    response_model=Rule,
    responses={
        201: ETAG_HEADER,
        **CREATE_PROBLEMS,
        404: {"description": "no such template, or another user's private one"},
    },
)
def create_rule_from_template(body: RuleFromTemplate, principal: Writer, svc: Svc) -> JSONResponse:
    """Instantiate a built-in template (by name, with its parameters) or a published one (by
    id; its only parameter is the symbol) into a rule of the caller's. The id is
    ``tpl-{template}-{symbol}-{user}-{hash of the parameters}``, so the same instantiation
    twice is a 409. A published template's use count grows by one with the rule."""
    owner = for_user(principal, body.user_id, write=True)
    template, shared = _template(svc, principal, body.template)
    try:
        rule = template.instantiate(symbol=body.symbol, user_id=owner, params=body.params)
    except TemplateError as exc:
        raise Problem(422, str(exc), kind="invalid-template-parameters") from None
    return create(svc, principal, rule, shared_template=body.template if shared else None)


def _template(svc: Services, principal: Principal, name: str) -> tuple[Template, bool]:
    """The template ``name`` names and whether it is a published one; 404 if the caller
    cannot see it."""
    for builtin in list_templates():
        if builtin.name == name:
            return builtin, False
    with svc.transaction() as conn:
        row = store.read_template(conn, name)
    if row is None or not row.visible_to(principal):
        raise not_found("template", name)
    return Template(row.id, row.description, (), row.body, FilePath(row.id)), True


# ---------------------------------------------------------------- read


@router.get(
    "",
    summary="List rules",
    response_model=Page[Rule],
    responses={**PROBLEMS, 422: {"description": "a bad filter or cursor"}},
)
def list_rules(
    principal: Reader,
    svc: Svc,
    user_id: Annotated[
        str | None,
        Query(description="whose rules (analysts and admins list everyone's without it)"),
    ] = None,
    symbol: Annotated[
        str | None, Query(max_length=32, description="rules naming this symbol (or in symbols)")
    ] = None,
    active: Annotated[bool | None, Query(description="only active (or inactive) rules")] = None,
    priority: Annotated[Priority | None, Query(description="only rules of this priority")] = None,
    name: Annotated[
        str | None, Query(max_length=255, description="name contains this (any case)")
    ] = None,
    cursor: CursorParam = None,
    limit: LimitParam = 50,
) -> JSONResponse:
    """The rules the caller may read, newest first (by creation), each as published: the
    API's and those another producer put on alerts.rules (as the job stored them)."""
    everyone = user_id is None and principal.role in ("analyst", "admin")
    owner = None if everyone else for_user(principal, user_id)
    where = store.RuleFilter(owner, symbol, active, priority, name)
    with svc.transaction() as conn:
        rows = store.list_rules(conn, where, time_cursor(cursor, str), limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = (
        encode_cursor([rows[-1].created_at.isoformat(), rows[-1].rule_id]) if more else None
    )
    return JSONResponse({"items": [row.document for row in rows], "next_cursor": next_cursor})


@router.get(
    "/{rule_id}",
    summary="Read a rule",
    response_model=Rule,
    responses={200: ETAG_HEADER, **ONE_RULE},
)
def get_rule(rule_id: RuleIdParam, principal: Reader, svc: Svc) -> JSONResponse:
    """The rule as published (its current version); ``ETag`` is the version."""
    with svc.transaction() as conn:
        current = readable(principal, store.read_rule(conn, rule_id), rule_id)
    return rule_response(current.document)


@router.get(
    "/{rule_id}/versions",
    summary="List a rule's versions",
    response_model=Page[RuleVersion],
    responses={**ONE_RULE, 422: {"description": "a bad cursor"}},
)
def list_rule_versions(
    rule_id: RuleIdParam,
    principal: Reader,
    svc: Svc,
    cursor: CursorParam = None,
    limit: LimitParam = 50,
) -> JSONResponse:
    """Every version of the rule, newest first: the message as published, what made it
    (create, update, enable, disable; imported: the version another producer put on
    alerts.rules, where the history starts), who wrote it and when."""
    position = decode_cursor(cursor, length=1)
    before = position[0] if position else None
    if before is not None and not isinstance(before, int):
        raise invalid_cursor()
    with svc.transaction() as conn:
        current = readable(principal, store.read_rule(conn, rule_id), rule_id)
        rows = store.list_versions(conn, current, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "version": row["version"],
            "change": row["change"],
            "written_by": row["written_by"],
            "written_at": format_timestamp(row["written_at"]),
            "rule": row["document"],
        }
        for row in rows
    ]
    next_cursor = encode_cursor([rows[-1]["version"]]) if more else None
    return JSONResponse({"items": items, "next_cursor": next_cursor})


# ---------------------------------------------------------------- change


@router.put(
    "/{rule_id}",
    summary="Change a rule (a new version)",
    response_model=Rule,
    responses={200: ETAG_HEADER, **CHANGE_PROBLEMS},
)
def update_rule(
    rule_id: RuleIdParam, body: RuleInput, request: Request, principal: Writer, svc: Svc
) -> JSONResponse:
    """Replace the rule with the body (the whole rule) as its next version. ``If-Match``
    with the ETag read is required. ``id`` and ``user_id`` may be left out; if given they
    must be the rule's."""

    def make(current: store.StoredRule) -> Rule:
        if body.id is not None and store.rule_key(body.id) != current.key:
            raise Problem(422, f"id: the body names rule {body.id!r}, the path {rule_id!r}")
        if body.user_id is not None and body.user_id != current.owner:
            raise Problem(
                422, f"user_id: the rule belongs to {current.owner!r} and its owner cannot change"
            )
        return _rule_of(
            body, rule_id=current.rule_id, owner=current.owner, version=current.version + 1
        )

    return change(svc, principal, request, rule_id, "update", make)


def _activation(active: bool) -> Callable[[store.StoredRule], Rule | None]:
    def make(current: store.StoredRule) -> Rule | None:
        rule = current.rule
        if rule.active == active:
            return None
        return rule.model_copy(update={"active": active, "version": current.version + 1})

    return make


@router.post(
    "/{rule_id}/enable",
    summary="Enable a rule",
    response_model=Rule,
    responses={200: ETAG_HEADER, **CHANGE_PROBLEMS},
)
def enable_rule(
    rule_id: RuleIdParam, request: Request, principal: Writer, svc: Svc
) -> JSONResponse:
    """Set ``active`` (a new version; If-Match required). An active rule stays as it is."""
    return change(svc, principal, request, rule_id, "enable", _activation(True))


@router.post(
    "/{rule_id}/disable",
    summary="Disable a rule",
    response_model=Rule,
    responses={200: ETAG_HEADER, **CHANGE_PROBLEMS},
)
def disable_rule(
    rule_id: RuleIdParam, request: Request, principal: Writer, svc: Svc
) -> JSONResponse:
    """Clear ``active`` (a new version; If-Match required): the engine keeps the rule but
    does not evaluate it. An inactive rule stays as it is."""
    return change(svc, principal, request, rule_id, "disable", _activation(False))


@router.delete(
    "/{rule_id}",
    summary="Delete a rule",
    status_code=204,
    response_class=Response,
    responses={
        **ONE_RULE,
        412: CHANGE_PROBLEMS[412],
        428: CHANGE_PROBLEMS[428],
    },
)
def delete_rule(rule_id: RuleIdParam, request: Request, principal: Writer, svc: Svc) -> Response:
    """Delete the rule: a tombstone on alerts.rules (its id as key, no value) and in
    PostgreSQL. If-Match required. Its versions go with it (404 from then on)."""
    with svc.transaction() as conn:
        current = writable(principal, store.lock_rule(conn, rule_id), rule_id)
        check_if_match(request, current.version, f"rule {rule_id!r}")
        store.delete_rule(conn, current)
        svc.publish_records(
            [OutgoingRecord(svc.settings.topics.rules, current.rule_id.encode(), None)]
        )
    return Response(status_code=204)
