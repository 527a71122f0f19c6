"""Authentication against the real server: JWTs from a JWKS (RS256/ES256, rotation, caching),
every way a token can be wrong, HS256 only when configured, API keys, roles from a nested
claim. The module has an identity provider of its own: its rotations touch no other module."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import hash_api_key, new_api_key
from connectors.embedded import StackUrls
from tests.api.conftest import ApiServer, api_settings, running_api
from tests.fakes.identity import AUDIENCE, ISSUER, IdentityProvider

ROLES_CLAIM = "realm_access.roles"
COOLDOWN_S = 1.0
HS256_SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    with IdentityProvider() as own:
        yield own


@pytest.fixture(scope="module")
def server(stack: StackUrls, database_url: str, provider: IdentityProvider) -> Iterator[ApiServer]:
    settings = api_settings(
        stack,
        database_url,
        provider,
        roles_claim=ROLES_CLAIM,
        jwks_refresh_cooldown_seconds=COOLDOWN_S,
    )
    with running_api(settings, provider) as running:
        yield running


@pytest.fixture(scope="module")
def hs256_server(
    stack: StackUrls, database_url: str, provider: IdentityProvider
) -> Iterator[ApiServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMART_ALERTS_API_JWT_SECRET", HS256_SECRET)
        settings = api_settings(stack, database_url, provider, jwt_hs256=True)
        with running_api(settings, provider) as running:
            yield running


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **extra,
    }


def hmac_token(payload: dict[str, Any], key: bytes, header: dict[str, Any] | None = None) -> str:
    """HS256 by hand: PyJWT refuses a PEM as an HMAC key, an attacker does not."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **(header or {})}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def me(server: ApiServer, token: str | None) -> httpx.Response:
    with server.client(token) as client:
        return client.get("/v1/me")


def refused(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert detail in response.json()["detail"], response.json()["detail"]


def test_rs256_and_es256_tokens_name_the_user_and_role_from_the_nested_claim(
    server: ApiServer, provider: IdentityProvider
) -> None:
    rs = provider.token("ursula", realm_access={"roles": ["offline_access", "analyst"]})
    body = me(server, rs).json()
    assert body == {
        "user_id": "ursula",
        "role": "analyst",
        "via": "jwt",
        "key_id": None,
        "scopes": ["alerts:read", "profile:read", "rules:read"],
    }
    es = provider.token("edgar", alg="ES256", realm_access={"roles": ["user"]})
    body = me(server, es).json()
    assert (body["user_id"], body["role"]) == ("edgar", "user")
    assert "rules:write" in body["scopes"] and "admin" not in body["scopes"]


def test_the_top_level_roles_claim_is_ignored_when_another_is_configured(
    server: ApiServer, provider: IdentityProvider
) -> None:
    token = provider.token("mallory", ["admin"])  # "roles": ["admin"], no realm_access
    assert me(server, token).json()["role"] == "user"


def test_missing_or_malformed_credentials(server: ApiServer) -> None:
    refused(me(server, None), "no credentials")
    with server.client(headers={"Authorization": "Basic dXNlcjpwdw=="}) as client:
        refused(client.get("/v1/me"), "must be 'Bearer <token>'")
    refused(me(server, "not-a-jwt"), "not a JWT")


def test_alg_none_is_refused(server: ApiServer) -> None:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{head}.{b64(json.dumps(claims('eve')).encode())}."
    refused(me(server, token), "algorithm 'none' is not accepted")


def test_hs256_is_refused_unless_configured(server: ApiServer, provider: IdentityProvider) -> None:
    token = hmac_token(claims("eve"), HS256_SECRET.encode())
    refused(me(server, token), "algorithm 'HS256' is not accepted")


def test_algorithm_confusion_with_the_public_key_as_hmac_secret(
    server: ApiServer, hs256_server: ApiServer, provider: IdentityProvider
) -> None:
    pem = provider.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps(provider.jwks()["keys"][0]).encode()
    for key in (pem, jwk):
        token = hmac_token(claims("eve"), key, {"kid": provider.rsa_kid})
        refused(me(server, token), "not accepted")
        refused(me(hs256_server, token), "signature does not verify")
    # An RS256 key named by an ES256 header is refused too.
    forged = jwt.encode(
        claims("eve"), provider.ec_key, algorithm="ES256", headers={"kid": provider.rsa_kid}
    )
    refused(me(server, forged), "is for RS256")


def test_hs256_works_when_configured(hs256_server: ApiServer) -> None:
    token = jwt.encode(claims("hana", roles=["user"]), HS256_SECRET, algorithm="HS256")
    assert me(hs256_server, token).json()["user_id"] == "hana"


def test_hs256_needs_a_long_secret(
    stack: StackUrls,
    database_url: str,
    provider: IdentityProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from api.auth import TokenVerifier

    monkeypatch.setenv("SMART_ALERTS_API_JWT_SECRET", "short")
    settings = api_settings(stack, database_url, provider, jwt_hs256=True)
    with pytest.raises(ValueError, match="shorter than 32"):
        TokenVerifier(settings.api)


def test_tampered_payload_and_foreign_key_with_a_known_kid(
    server: ApiServer, provider: IdentityProvider
) -> None:
    token = provider.token("tom", realm_access={"roles": ["user"]})
    head, _, signature = token.split(".")
    raised = b64(json.dumps(claims("tom", realm_access={"roles": ["admin"]})).encode())
    refused(me(server, f"{head}.{raised}.{signature}"), "signature does not verify")
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        claims("tom"), impostor, algorithm="RS256", headers={"kid": provider.rsa_kid}
    )
    refused(me(server, forged), f"signature does not verify with key {provider.rsa_kid!r}")


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"exp": -120}, "has expired"),
        ({"nbf": 300}, "not valid yet"),
        ({"aud": "another-api"}, f"aud must be {AUDIENCE!r}"),
        ({"iss": "https://evil.example"}, f"configured issuer {ISSUER!r}"),
        ({"exp": None}, "no 'exp' claim"),
        ({"aud": None}, "no 'aud' claim"),
    ],
)
def test_claims_are_checked(
    server: ApiServer, provider: IdentityProvider, changes: dict[str, Any], detail: str
) -> None:
    now = int(time.time())
    values = {
        k: (now + v if k in ("exp", "nbf") and v is not None else v) for k, v in changes.items()
    }
    payload = {k: v for k, v in {**claims("carl"), **values}.items() if v is not None}
    token = jwt.encode(
        payload, provider.rsa_key, algorithm="RS256", headers={"kid": provider.rsa_kid}
    )
    refused(me(server, token), detail)


def test_a_small_leeway_on_exp_and_nbf(server: ApiServer, provider: IdentityProvider) -> None:
    now = int(time.time())
    for changes in ({"exp": now - 10}, {"nbf": now + 10}):
        token = jwt.encode(
            {**claims("lee"), **changes},
            provider.rsa_key,
            algorithm="RS256",
            headers={"kid": provider.rsa_kid},
        )
        assert me(server, token).status_code == 200


def test_unknown_kid_refetches_at_most_once_per_cooldown_then_rotation_works(
    server: ApiServer, provider: IdentityProvider
) -> None:
    assert me(server, provider.token("rita")).status_code == 200
    cached = provider.fetches
    for _ in range(3):  # known kid: the cached key set
        assert me(server, provider.token("rita")).status_code == 200
    assert provider.fetches == cached
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(5):
        unknown = jwt.encode(
            claims("rita"),
            stranger,
            algorithm="RS256",
            headers={"kid": f"rsa-{uuid.uuid4().hex[:8]}"},
        )
        refused(me(server, unknown), "no key to verify the token")
    assert provider.fetches - cached <= 1, "made-up kids must not each fetch the key set"

    old_token = provider.token("rita")
    provider.rotate()
    time.sleep(COOLDOWN_S + 0.2)
    before = provider.fetches
    new_token = provider.token("rita")
    assert me(server, new_token).status_code == 200
    assert provider.fetches == before + 1
    assert me(server, old_token).status_code == 200  # the old key is still published
    for _ in range(3):
        assert me(server, provider.token("rita")).status_code == 200
    assert provider.fetches == before + 1


def insert_api_key(
    database_url: str, user: str, scopes: list[str], *, revoked: bool = False
) -> tuple[str, str]:
    key, prefix = new_api_key()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO api_keys (user_external_id, name, prefix, key_hash, scopes, revoked_at)"
            " VALUES (%s, 'test', %s, %s, %s, CASE WHEN %s THEN now() END) RETURNING id",
            (user, prefix, hash_api_key(key), scopes, revoked),
        ).fetchone()
    assert row is not None
    return key, str(row[0])


def test_api_keys_by_bearer_or_x_api_key(server: ApiServer, database_url: str) -> None:
    key, key_id = insert_api_key(database_url, "kim", ["rules:read"])
    body = me(server, key).json()
    assert body == {
        "user_id": "kim",
        "role": "user",
        "scopes": ["rules:read"],
        "via": "api_key",
        "key_id": key_id,
    }
    with server.client(headers={"X-API-Key": key}) as client:
        assert client.get("/v1/me").json()["key_id"] == key_id
    refused(me(server, key[:-2] + "xx"), "unknown or revoked API key")
    revoked, _ = insert_api_key(database_url, "kim", ["rules:read"], revoked=True)
    refused(me(server, revoked), "unknown or revoked API key")
    refused(me(server, "sa_"), "malformed API key")


def test_an_unreachable_identity_provider_is_503_not_401(
    stack: StackUrls, database_url: str, provider: IdentityProvider
) -> None:
    from tests.api.conftest import _free_port

    nowhere = f"http://127.0.0.1:{_free_port()}/.well-known/jwks.json"
    settings = api_settings(stack, database_url, provider, jwks_url=nowhere)
    with running_api(settings, provider) as down:
        response = me(down, provider.token("ursula"))
    assert response.status_code == 503
    assert "key set could not be fetched" in response.json()["detail"]
