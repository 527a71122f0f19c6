"""Webhook signing secrets at rest: made here, shown once, stored only encrypted.

A secret is ``whsec_`` + base64 of 32 random bytes (Standard Webhooks). Before it reaches
PostgreSQL it is encrypted with Fernet (AES-128-CBC and HMAC-SHA256) under the key in the
environment variable SMART_ALERTS_SECRET_KEY, never in a settings file; the job decrypts it
with the same key (sinks.channels.webhook.secret_box). The variable may hold several keys,
space-separated, while the key is changed: the first encrypts, any of them decrypts.
"""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import MultiFernet

from api.problems import Problem
from sinks.channels.webhook import NEW_KEY_COMMAND, SECRET_KEY_ENV, SECRET_PREFIX, secret_box

SECRET_BYTES = 32


def cipher() -> MultiFernet:
    """The cipher of stored secrets (a route dependency), read from the environment on each
    request so that setting the key needs no other change; a 503 problem without a usable key."""
    try:
        box = secret_box()
    except ValueError as exc:
        raise Problem(503, str(exc), kind="secret-key-invalid") from None
    if box is None:
        raise Problem(
            503,
            f"webhook secrets are stored encrypted and {SECRET_KEY_ENV} is not set: set it in "
            f"the API's and the job's environment to a Fernet key (make one with "
            f"{NEW_KEY_COMMAND})",
            kind="secret-key-missing",
        )
    return box


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def seal(box: MultiFernet, secret: str) -> str:
    """The stored form of a secret."""
    return box.encrypt(secret.encode()).decode()
