"""Rule templates: the built-in ones and those users publish (private or public).

A rule is made from either with POST /v1/rules/from-template. A published template is one of
the publisher's rules without its id, owner and symbol (the symbol is given when a rule is made
from it); a private one is seen by its owner only (and by analysts and admins), a public one by
everybody, with the count of rules made from it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api import rule_store as store
from api.auth import Principal, not_found, require, services
from api.pagination import (
    CursorParam,
    LimitParam,
    Page,
    encode_cursor,
    time_cursor,
)
from api.problems import Problem
from api.routes.rules import writable
from api.services import Services
from pipeline.fields import NUL_FREE
from pipeline.messages import MAX_TEXT_LENGTH, Id
from pipeline.rules.templates import BUILTINS, Parameter, Template, list_templates

router = APIRouter(prefix="/v1/templates", tags=["templates"])

Reader = Annotated[Principal, Depends(require("rules:read"))]
Writer = Annotated[Principal, Depends(require("rules:write"))]
Svc = Annotated[Services, Depends(services)]
TemplateIdParam = Annotated[str, Path(description="the published template's id (st-...)")]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or invalid credentials"},
    403: {"description": "the credentials lack the scope (analysts never publish)"},
}
SHARED_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: {"description": "no such template, or another user's private one"},
    503: {"description": "PostgreSQL is unavailable"},
}
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class TemplateParameter(BaseModel):
    name: str
    type: str = Field(
        description="int, number, money, duration, timeframe, priority, choice, string"
    )
    description: str
    required: bool
    default: str | int | float | None = Field(
        None, description="the value used when the parameter is left out"
    )
    example: str | None = Field(None, description="an example value of a required parameter")
    choices: list[str] | None = Field(None, description="the values a choice parameter takes")


class BuiltinTemplate(BaseModel):
    """A built-in template (pipeline/rules/templates/*.yaml)."""

    name: str
    description: str
    parameters: list[TemplateParameter]
    rule: dict[str, Any] = Field(
        description="the rule body; ${name} is a parameter's value, ${symbol} the symbol"
    )


class PublishTemplate(BaseModel):
    """Publish one of the caller's rules as a template."""

    model_config = ConfigDict(extra="forbid")

    rule_id: Id
    name: Annotated[str, Field(min_length=1, max_length=255, pattern=NUL_FREE)]
    description: Annotated[str, Field(max_length=MAX_TEXT_LENGTH, pattern=NUL_FREE)] = ""
    visibility: store.Visibility = "private"


class SharedTemplate(BaseModel):
    """A template a user published."""

    id: str
    name: str
    description: str
    visibility: store.Visibility
    mine: bool = Field(description="whether the caller published it")
    user_id: str | None = Field(
        None, description="the publisher, to those who may read their rules (else null)"
    )
    use_count: int = Field(description="how many rules were made from it")
    created_at: datetime
    rule: dict[str, Any] = Field(
        description="the rule body without v, id, version, user_id, symbol and symbols"
    )


def _parameter(parameter: Parameter) -> TemplateParameter:
    return TemplateParameter(
        name=parameter.name,
        type=parameter.type,
        description=parameter.description,
        required=parameter.required,
        default=None if parameter.required else parameter.default,
        example=parameter.example,
        choices=parameter.labels or None,
    )


def _builtin(template: Template) -> BuiltinTemplate:
    return BuiltinTemplate(
        name=template.name,
        description=template.description,
        parameters=[_parameter(p) for p in template.parameters],
        rule=template.body,
    )


def _shared(row: store.SharedTemplateRow, principal: Principal) -> SharedTemplate:
    return SharedTemplate(
        id=row.id,
        name=row.name,
        description=row.description,
        visibility=row.visibility,
        mine=row.owner == principal.user_id,
        user_id=row.owner if principal.may_read(row.owner) else None,
        use_count=row.use_count,
        created_at=row.created_at,
        rule=row.body,
    )


# ---------------------------------------------------------------- published templates
# Declared before /{name}, which would otherwise take "shared" for a built-in's name.


@router.get(
    "/shared",
    summary="List published templates",
    response_model=Page[SharedTemplate],
    responses={
        **PROBLEMS,
        422: {"description": "a bad filter or cursor"},
        503: SHARED_PROBLEMS[503],
    },
)
def list_shared_templates(
    principal: Reader,
    svc: Svc,
    visibility: Annotated[
        store.Visibility | None, Query(description="only public (or private) ones")
    ] = None,
    mine: Annotated[bool, Query(description="only the caller's own")] = False,
    cursor: CursorParam = None,
    limit: LimitParam = 50,
) -> Page[SharedTemplate]:
    """Public templates and the caller's private ones (analysts and admins: every one),
    newest first, with their use counts."""
    after = time_cursor(cursor, str)
    with svc.transaction() as conn:
        rows = store.list_templates(
            conn,
            me=principal.user_id,
            everyone=principal.role in ("analyst", "admin"),
            visibility=visibility,
            mine=mine,
            after=after,
            limit=limit + 1,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor([rows[-1].created_at.isoformat(), rows[-1].id]) if more else None
    return Page[SharedTemplate](
        items=[_shared(row, principal) for row in rows], next_cursor=next_cursor
    )


@router.post(
    "/shared",
    summary="Publish a rule as a template",
    status_code=201,
    response_model=SharedTemplate,
    responses={
        **SHARED_PROBLEMS,
        404: {"description": "no such rule, or another user's"},
        422: {"description": "a bad body, or the rule holds a ${...} that is not ${symbol}"},
    },
)
def publish_template(body: PublishTemplate, principal: Writer, svc: Svc) -> SharedTemplate:
    """Publish the current version of one of the caller's rules as a template: its body
    without id, owner and symbol. Rules are made from it with POST /v1/rules/from-template
    (``template`` = its id)."""
    with svc.transaction() as conn:
        source = writable(principal, store.read_rule(conn, body.rule_id), body.rule_id)
        unknown = sorted(
            {
                name
                for name in PLACEHOLDER.findall(_strings(store.template_body(source.document)))
                if name not in BUILTINS
            }
        )
        if unknown:
            raise Problem(
                422,
                f"rule {body.rule_id!r} holds the placeholder(s) "
                f"{', '.join('${' + name + '}' for name in unknown)}; a published template "
                "may only use ${symbol} and ${user_id}: rename them in the rule first",
                kind="invalid-template",
            )
        row = store.publish_template(
            conn,
            source,
            owner=source.owner,
            name=body.name,
            description=body.description,
            visibility=body.visibility,
        )
    return _shared(row, principal)


def _strings(node: Any) -> str:
    """Every string in a JSON value, one per line."""
    if isinstance(node, dict):
        return "\n".join(_strings(value) for value in node.values())
    if isinstance(node, list):
        return "\n".join(_strings(value) for value in node)
    return node if isinstance(node, str) else ""


@router.get(
    "/shared/{template_id}",
    summary="Read a published template",
    response_model=SharedTemplate,
    responses=SHARED_PROBLEMS,
)
def get_shared_template(
    template_id: TemplateIdParam, principal: Reader, svc: Svc
) -> SharedTemplate:
    with svc.transaction() as conn:
        row = store.read_template(conn, template_id)
    if row is None or not row.visible_to(principal):
        raise not_found("template", template_id)
    return _shared(row, principal)


@router.delete(
    "/shared/{template_id}",
    summary="Withdraw a published template",
    status_code=204,
    response_class=Response,
    responses=SHARED_PROBLEMS,
)
def delete_shared_template(template_id: TemplateIdParam, principal: Writer, svc: Svc) -> Response:
    """Withdraw one of the caller's templates; the rules made from it stay."""
    with svc.transaction() as conn:
        row = store.read_template(conn, template_id)
        if row is None or not principal.may_write(row.owner):
            raise not_found("template", template_id)
        store.delete_template(conn, template_id)
    return Response(status_code=204)


# ---------------------------------------------------------------- built-in templates


@router.get(
    "",
    summary="List the built-in templates",
    response_model=Page[BuiltinTemplate],
    responses=PROBLEMS,
)
def list_builtin_templates(principal: Reader) -> Page[BuiltinTemplate]:
    """Every built-in template with its parameters, by name (one page)."""
    return Page[BuiltinTemplate](items=[_builtin(t) for t in list_templates()])


@router.get(
    "/{name}",
    summary="Read a built-in template",
    response_model=BuiltinTemplate,
    responses={**PROBLEMS, 404: {"description": "no built-in template of this name"}},
)
def get_builtin_template(
    name: Annotated[str, Path(description="the template's name")], principal: Reader
) -> BuiltinTemplate:
    for template in list_templates():
        if template.name == name:
            return _builtin(template)
    raise not_found("template", name)
