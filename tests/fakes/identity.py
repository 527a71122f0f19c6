"""A test identity provider: RSA and EC signing keys, their JWKS served on 127.0.0.1, and
tokens signed with them. ``rotate()`` replaces the RSA key (a new kid), as a provider does."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://id.test.vs9"
AUDIENCE = "smart-alerts-api"


class IdentityProvider:
    def __init__(self) -> None:
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_kid = f"rsa-{uuid.uuid4().hex[:8]}"
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.ec_kid = f"ec-{uuid.uuid4().hex[:8]}"
        self.retired: list[tuple[str, Any]] = []  # still published, as during a rotation
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                provider.fetches += 1
                body = json.dumps(provider.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> IdentityProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in [(self.rsa_kid, self.rsa_key), *self.retired]:
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        jwk = json.loads(ECAlgorithm.to_jwk(self.ec_key.public_key()))
        keys.append({**jwk, "kid": self.ec_kid, "alg": "ES256", "use": "sig"})
        return {"keys": keys}

    def rotate(self, keep_old: bool = True) -> None:
        if keep_old:
            self.retired.append((self.rsa_kid, self.rsa_key))
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_kid = f"rsa-{uuid.uuid4().hex[:8]}"

    def token(
        self,
        sub: str,
        roles: list[str] | None = None,
        *,
        alg: str = "RS256",
        lifetime_s: float = 600,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime_s),
            "roles": roles if roles is not None else ["user"],
        }
        payload.update(claims)
        payload = {key: value for key, value in payload.items() if value is not None}
        if alg == "ES256":
            return jwt.encode(payload, self.ec_key, algorithm="ES256", headers={"kid": self.ec_kid})
        return jwt.encode(payload, self.rsa_key, algorithm="RS256", headers={"kid": self.rsa_kid})
