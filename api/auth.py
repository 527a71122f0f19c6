"""Who is calling: JWT bearer tokens from the identity provider, or API keys; roles and scopes.

A bearer token starting with ``sa_`` is an API key (looked up by its prefix, compared by
SHA-256 hash); anything else is a JWT verified against the JWKS URL (RS256/ES256, the key by
``kid``; an unknown ``kid`` refetches the set once, so rotated keys work) or, only when
``api.jwt_hs256`` is set, HS256 with SMART_ALERTS_API_JWT_SECRET. The key set is cached for
``jwks_cache_seconds`` (a key the provider withdraws stops working by then), and an unknown
``kid`` refetches it at most once per ``jwks_refresh_cooldown_seconds``. The algorithm comes from
the key, never from the token alone: ``alg: none`` and an RS256 key used as an HMAC secret
are refused.

Roles: ``user`` (own resources only), ``analyst`` (reads every user's, contact details
masked), ``admin`` (everything). Scopes narrow what an API key may do; a JWT's scopes follow
from its role.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import jwt
from fastapi import Depends, Request
from jwt import PyJWKClient, PyJWKClientConnectionError, PyJWKClientError
from starlette.requests import HTTPConnection

from api.problems import Problem
from api.services import Services
from pipeline.config import Api

Role = Literal["user", "analyst", "admin"]
ROLES: tuple[Role, ...] = ("user", "analyst", "admin")

SCOPES = {
    "rules:read": "read rules, versions and templates",
    "rules:write": "create, change, enable/disable, delete rules; publish templates",
    "alerts:read": "read triggered alerts and notifications",
    "alerts:write": "acknowledge alerts and send feedback",
    "inbox": "read and mark the in-app feed, and follow it live",
    "profile:read": "read the notification profile",
    "profile:write": "change the profile and push device tokens",
    "webhooks": "manage webhook endpoints and their secrets",
    "keys": "manage API keys",
    "admin": "act on any user's resources",
}
READ_SCOPES = frozenset({"rules:read", "alerts:read", "profile:read"})
USER_SCOPES = frozenset(SCOPES) - {"admin"}
ROLE_SCOPES: dict[Role, frozenset[str]] = {
    "user": USER_SCOPES,
    "analyst": READ_SCOPES,
    "admin": frozenset(SCOPES),
}

API_KEY_PREFIX = "sa_"
HS256_SECRET_ENV = "SMART_ALERTS_API_JWT_SECRET"
ASYMMETRIC = ("RS256", "ES256")


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: Role
    scopes: frozenset[str]
    via: Literal["jwt", "api_key"]
    key_id: str | None = None

    def may_read(self, user_id: str | None) -> bool:
        return user_id == self.user_id or self.role in ("analyst", "admin")

    def may_write(self, user_id: str | None) -> bool:
        return user_id == self.user_id or self.role == "admin"

    @property
    def masks_contacts(self) -> bool:
        return self.role == "analyst"


def unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        detail,
        kind="not-authenticated",
        headers={"WWW-Authenticate": 'Bearer realm="smart-alerts"'},
    )


class TokenVerifier:
    """Verifies JWTs per the [api] settings; the JWKS is cached for ``jwks_cache_seconds``."""

    def __init__(self, config: Api) -> None:
        self.config = config
        self._jwks = (
            PyJWKClient(
                config.jwks_url,
                # No per-kid cache: it never expires, so a withdrawn key would be trusted
                # forever; the key set cache (lifespan) is enough.
                cache_keys=False,
                lifespan=config.jwks_cache_seconds,
                timeout=5,
                cooldown_duration=config.jwks_refresh_cooldown_seconds,
            )
            if config.jwks_url
            else None
        )
        secret = os.environ.get(HS256_SECRET_ENV, "")
        if config.jwt_hs256 and len(secret) < 32:
            raise ValueError(
                f"api.jwt_hs256 is set but {HS256_SECRET_ENV} is unset or shorter than 32 "
                "characters: set a long random secret in the environment"
            )
        self._hs256_secret = secret if config.jwt_hs256 else None

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"the bearer token is not a JWT: {exc}") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self._hs256_secret is not None:
            key, algorithms = self._hs256_secret, ["HS256"]
        elif alg in ASYMMETRIC and self._jwks is not None:
            try:
                signing_key = self._jwks.get_signing_key_from_jwt(token)
            except PyJWKClientConnectionError as exc:
                raise Problem(
                    503,
                    f"the identity provider's key set could not be fetched: {exc}",
                    kind="dependency-unavailable",
                ) from None
            except PyJWKClientError as exc:
                raise unauthorized(f"no key to verify the token: {exc}") from None
            except jwt.InvalidTokenError as exc:
                raise unauthorized(f"the token's key cannot be used: {exc}") from None
            if signing_key.algorithm_name != alg:
                raise unauthorized(
                    f"the token says alg {alg} but its key {header.get('kid')!r} is for "
                    f"{signing_key.algorithm_name}"
                )
            key, algorithms = signing_key.key, [alg]
        else:
            accepted = [*ASYMMETRIC] if self._jwks else []
            if self._hs256_secret is not None:
                accepted.append("HS256")
            listed = ", ".join(accepted) or "none: no identity provider is configured"
            raise unauthorized(f"token algorithm {alg!r} is not accepted (accepted: {listed})")
        required = ["exp", "sub"]
        if self.config.jwt_issuer:
            required.append("iss")
        if self.config.jwt_audience:
            required.append("aud")
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.config.jwt_audience,
                issuer=self.config.jwt_issuer,
                leeway=self.config.jwt_leeway_seconds,
                options={"require": required, "verify_aud": bool(self.config.jwt_audience)},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired: get a new one") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise unauthorized(
                f"the token is not for this API (aud must be {self.config.jwt_audience!r})"
            ) from None
        except jwt.InvalidIssuerError:
            raise unauthorized(
                f"the token is not from the configured issuer {self.config.jwt_issuer!r}"
            ) from None
        except jwt.InvalidSignatureError:
            raise unauthorized(
                f"the token's signature does not verify with key {header.get('kid')!r}: it was "
                "altered or signed by another key"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"the token is invalid: {exc}") from None

    def principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise unauthorized("the token's sub claim must be a non-empty string")
        roles = _roles(claims, self.config.roles_claim)
        role: Role = "admin" if "admin" in roles else "analyst" if "analyst" in roles else "user"
        return Principal(subject, role, ROLE_SCOPES[role], "jwt")


def _roles(claims: dict[str, Any], path: str) -> set[str]:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


# ---------------------------------------------------------------- API keys


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A new key and its lookup prefix: ``sa_<prefix>_<secret>``; only its hash is stored."""
    prefix = secrets.token_hex(4)
    return f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}", prefix


def _api_key_principal(services: Services, key: str) -> Principal:
    parts = key.split("_")
    if len(parts) < 3 or not parts[1]:
        raise unauthorized("malformed API key: expected sa_<prefix>_<secret>")
    prefix = parts[1]
    with services.transaction() as conn:
        row = conn.execute(
            "UPDATE api_keys SET last_used_at = now() "
            "WHERE prefix = %s AND revoked_at IS NULL "
            "RETURNING id, user_external_id, key_hash, scopes, expires_at",
            (prefix,),
        ).fetchone()
    if row is None or not hmac.compare_digest(row["key_hash"], hash_api_key(key)):
        raise unauthorized("unknown or revoked API key")
    if row["expires_at"] is not None and row["expires_at"] <= datetime.now(UTC):
        raise unauthorized("the API key has expired: create a new one")
    scopes = frozenset(row["scopes"])
    role: Role = "admin" if "admin" in scopes else "user"
    return Principal(row["user_external_id"], role, scopes, "api_key", str(row["id"]))


# ---------------------------------------------------------------- dependencies


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def authenticate_token(request_state: Any, token: str) -> Principal:
    """The principal of a bearer token (JWT or API key); a 401 problem if it is not valid."""
    svc: Services = request_state.services
    if token.startswith(API_KEY_PREFIX):
        return _api_key_principal(svc, token)
    verifier: TokenVerifier = request_state.verifier
    return verifier.principal(verifier.verify(token))


def bearer_token(request: HTTPConnection) -> str:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
        return token.strip()
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    raise unauthorized("no credentials: send 'Authorization: Bearer <token or API key>'")


def current_principal(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    # The rate limiter authenticated first (api/rate_limits.py); a refused token is refused
    # once, not verified (and its JWKS fetched) a second time.
    refused = getattr(request.state, "auth_problem", None)
    if refused is not None:
        raise refused
    principal = authenticate_token(request.app.state, bearer_token(request))
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(scope: str) -> Callable[[Principal], Principal]:
    """A dependency: the principal, if it holds ``scope`` (403 otherwise)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def check(principal: CurrentPrincipal) -> Principal:
        if scope not in principal.scopes:
            raise Problem(
                403,
                f"this needs the {scope!r} scope, which the {principal.via.replace('_', ' ')} "
                f"of {principal.role} {principal.user_id!r} does not have",
                kind="forbidden",
            )
        return principal

    return check


def for_user(principal: Principal, user_id: str | None, *, write: bool = False) -> str:
    """The user a request acts for: the principal's own unless another is named, which needs
    the analyst role (reads) or admin (writes); 403 otherwise."""
    if user_id is None or user_id == principal.user_id:
        return principal.user_id
    allowed = principal.may_write(user_id) if write else principal.may_read(user_id)
    if not allowed:
        raise Problem(403, f"{principal.user_id!r} may not act for user {user_id!r}")
    return user_id


def not_found(what: str, identifier: str) -> Problem:
    """The same answer for a missing resource and for someone else's: nothing leaks."""
    return Problem(404, f"no {what} {identifier!r}", kind="not-found")
