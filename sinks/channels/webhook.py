"""Webhook channel: the notification JSON POSTed to the user's URL, signed per Standard Webhooks.

Headers (https://www.standardwebhooks.com): ``webhook-id`` ("msg_" + the delivery's idempotency
key, so the same on every retry and the receiver can deduplicate), ``webhook-timestamp`` (unix
seconds at send time) and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, one per active secret (several while a secret is being rotated).

Secrets come from ``delivery.secret_ref`` through a resolver (default: the environment variable
named by the ref, holding one or more space-separated ``whsec_<base64>`` secrets); a secret is
never part of an error reason or a log line, only its ref is. An ``endpoint:<uuid>`` ref names
an endpoint made through the HTTP API (``EndpointSecrets``): its secrets are stored in
``webhook_endpoints`` encrypted with Fernet under SMART_ALERTS_SECRET_KEY (one key, or several
space-separated while it is changed: the first encrypts, any decrypts), and after a rotation
the previous secret signs beside the current one until its grace period ends. Such a secret
signs only for its owner and its own URL: a profile naming someone else's endpoint, or the
endpoint with another URL, gets no signature (the delivery fails), so nobody can have another
user's secret sign what they choose.

One attempt per call (sinks/channels/base.py): redirects are not followed (a 3xx is permanent),
the response body is read up to 64 KiB at most, connect and read timeouts apply. 2xx succeeds;
410 Gone is permanent and disables the endpoint; other 4xx except 408/429 are permanent;
408/429/5xx, timeouts and connection errors are transient (Retry-After honoured); a TLS
certificate that does not verify (``ca_bundle`` adds a private CA) is permanent.

SSRF guard: only http/https, and every address the host resolves to must be public unless it
lies in ``allow_private_networks`` (CIDRs). The check runs before the request (a clear error)
and again inside the connection itself, which connects only to the addresses it has just
vetted: a DNS answer that changes between the two (DNS rebinding) meets the same check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
import requests
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from psycopg.rows import tuple_row
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from pipeline.messages import Channel
from sinks.channels.base import Delivery, PermanentError, SendResult, TransientError
from sinks.channels.email import parse_retry_after

MAX_RESPONSE_BYTES = 64 * 1024
SECRET_PREFIX = "whsec_"
USER_AGENT = "VS9-Smart-Alerts-Webhook/1"

SecretResolver = Callable[[str], str | None]
# (secret ref, the notification's user, the URL) -> the endpoint's secrets, None if not theirs
EndpointLookup = Callable[[str, str, str], str | None]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


SECRET_KEY_ENV = "SMART_ALERTS_SECRET_KEY"
ENDPOINT_REF_PREFIX = "endpoint:"
NEW_KEY_COMMAND = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


def env_secret_resolver(secret_ref: str) -> str | None:
    """The default resolver: the environment variable named by the ref."""
    return os.environ.get(secret_ref)


def secret_box(environ: Mapping[str, str] | None = None) -> MultiFernet | None:
    """The cipher of stored signing secrets from SMART_ALERTS_SECRET_KEY, None when it is unset;
    a ValueError naming the variable (never its value) when a key is not a Fernet key."""
    env = os.environ if environ is None else environ
    keys = env.get(SECRET_KEY_ENV, "").split()
    if not keys:
        return None
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, binascii.Error):
        raise ValueError(
            f"{SECRET_KEY_ENV} is not a Fernet key (32 bytes, URL-safe base64; make one with "
            f"{NEW_KEY_COMMAND})"
        ) from None


def endpoint_secrets(
    conn: psycopg.Connection[Any], secret_ref: str, box: MultiFernet, *, user_id: str, url: str
) -> str | None:
    """The signing secrets of an ``endpoint:<uuid>`` ref: the current one, then the previous
    one while its grace lasts (the database's clock decides), space-separated; None unless the
    endpoint exists, belongs to ``user_id`` and has this ``url``."""
    try:
        endpoint_id = uuid.UUID(secret_ref.removeprefix(ENDPOINT_REF_PREFIX))
    except ValueError:
        return None
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT secret_encrypted, CASE WHEN previous_expires_at > now() "
            "THEN previous_secret_encrypted END FROM webhook_endpoints "
            "WHERE id = %s AND user_external_id = %s AND url = %s",
            (endpoint_id, user_id, url),
        ).fetchone()
    if row is None:
        return None
    try:
        return " ".join(box.decrypt(token.encode()).decode() for token in row if token)
    except InvalidToken:
        raise PermanentError(
            f"webhook secret {secret_ref!r} does not decrypt with {SECRET_KEY_ENV}: it was "
            "stored under another key (keep the old key after the new one while changing it)"
        ) from None


class EndpointSecrets:
    """The job's lookup of ``endpoint:<uuid>`` refs in ``webhook_endpoints``.

    Each lookup opens a connection of its own: senders run on several threads, a lookup is one
    per webhook attempt (which the delivery core rate-limits), and a rotation is seen at once."""

    def __init__(
        self, database_url: str, box: MultiFernet | None, connect_timeout: float = 5.0
    ) -> None:
        self._database_url = database_url
        self._box = box
        self._connect_timeout = max(1, int(connect_timeout))

    def __call__(self, secret_ref: str, user_id: str, url: str) -> str | None:
        if self._box is None:
            raise PermanentError(
                f"webhook secret {secret_ref!r} is stored encrypted but {SECRET_KEY_ENV} is not "
                "set in the job's environment: set the key the API uses"
            )
        with psycopg.connect(
            self._database_url, autocommit=True, connect_timeout=self._connect_timeout
        ) as conn:
            return endpoint_secrets(conn, secret_ref, self._box, user_id=user_id, url=url)


def decode_secrets(value: str, secret_ref: str) -> list[bytes]:
    """The keys of a "whsec_<base64> [whsec_<base64> ...]" value; errors name the ref only."""
    keys = []
    for token in value.split():
        encoded = token.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise PermanentError(f"webhook secret {secret_ref!r} is not whsec_<base64>") from None
        if not key:
            raise PermanentError(f"webhook secret {secret_ref!r} is empty")
        keys.append(key)
    if not keys:
        raise PermanentError(f"webhook secret {secret_ref!r} is empty")
    return keys


def sign(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header value: one "v1,<base64>" per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A receiver's answer: its status, the start of its body (read only when not 2xx) and
    its Retry-After in seconds."""

    status: int
    snippet: bytes
    retry_after: float | None


class WebhookSender:
    channel = Channel.WEBHOOK
    provider = "webhook"

    def __init__(
        self,
        *,
        secret_resolver: SecretResolver = env_secret_resolver,
        endpoint_secrets: EndpointLookup | None = None,
        allow_private_networks: set[str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        ca_bundle: str | None = None,
        clock: Callable[[], float] = time.time,
        resolve: Callable[..., list[tuple]] = socket.getaddrinfo,  # type: ignore[type-arg]
    ) -> None:
        self.secret_resolver = secret_resolver
        self.endpoint_secrets = endpoint_secrets
        self.allowed_networks: list[IpNetwork] = [
            ipaddress.ip_network(cidr, strict=False) for cidr in (allow_private_networks or ())
        ]
        self.timeout = (connect_timeout, read_timeout)
        self.max_response_bytes = max_response_bytes
        self.verify: str | bool = ca_bundle or True  # a private CA's bundle, else the public ones
        self.clock = clock
        self._resolve = resolve
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # ------------------------------------------------------------ one attempt

    def send(self, delivery: Delivery) -> SendResult:
        msg_id = f"msg_{delivery.idempotency_key}"
        note = delivery.notification
        answer = self.post(
            delivery.destination, delivery.secret_ref, msg_id, note.to_json(), user_id=note.user_id
        )
        status = answer.status
        if 200 <= status < 300:
            return SendResult(provider_message_id=msg_id)
        reason = f"webhook: HTTP {status}"
        text = answer.snippet[:200].decode("utf-8", "replace").strip()
        if text:
            reason += f": {' '.join(text.split())}"
        if status == 410:
            raise PermanentError(reason + " (endpoint gone)", disable_destination=True)
        if 300 <= status < 400:
            raise PermanentError(reason + " (redirects are not followed)")
        if status in (408, 429) or status >= 500:
            raise TransientError(reason, retry_after=answer.retry_after)
        raise PermanentError(reason)

    def post(
        self, url: str, secret_ref: str | None, msg_id: str, body: bytes, *, user_id: str
    ) -> Answer:
        """One signed POST of ``body`` for ``user_id``, and what the receiver answered,
        whatever its status; PermanentError or TransientError when it could not be sent or got
        no answer."""
        self.check_url(url)
        keys = self._keys(secret_ref, user_id, url)
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(keys, msg_id, timestamp, body),
        }
        try:
            response = self._session().post(
                url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
            try:
                status = response.status_code
                snippet = self._read_capped(response) if status >= 300 else b""
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            finally:
                response.close()
        except RefusedAddress as exc:
            raise PermanentError(str(exc)) from None
        except requests.exceptions.SSLError as exc:
            verification = _certificate_error(exc)
            if verification is not None:  # a receiver's set-up, not a passing network fault
                raise PermanentError(
                    f"webhook: TLS certificate not accepted: {verification}"
                ) from None
            raise TransientError("webhook: TLS error (SSLError)") from None
        except requests.Timeout as exc:
            raise TransientError(f"webhook: timeout ({type(exc).__name__})") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(f"webhook: connection error ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise PermanentError(f"webhook: request failed ({type(exc).__name__})") from None
        return Answer(status, snippet, retry_after)

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # ------------------------------------------------------------ pieces

    def check_url(self, url: str) -> None:
        """Refuse anything but http(s) to public addresses (or the allowed networks)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise PermanentError("webhook URL is not valid") from None
        if parts.scheme not in ("http", "https"):
            raise PermanentError(f"webhook URL scheme {parts.scheme!r} is not http or https")
        host = parts.hostname
        if not host:
            raise PermanentError("webhook URL has no host")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        try:
            if not self.vetted_addresses(host, port):
                raise TransientError(f"webhook host {host!r} does not resolve")
        except RefusedAddress as exc:
            raise PermanentError(str(exc)) from None
        except OSError as exc:
            raise TransientError(str(exc)) from None

    def _allowed(self, address: IpAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address.version == net.version and address in net for net in self.allowed_networks):
            return True
        return address.is_global and not (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        )

    def _keys(self, secret_ref: str | None, user_id: str, url: str) -> list[bytes]:
        if not secret_ref:
            raise PermanentError("webhook destination has no secret_ref")
        endpoint = secret_ref.startswith(ENDPOINT_REF_PREFIX)
        lookup = self.endpoint_secrets if endpoint else None
        if endpoint and lookup is None:
            raise PermanentError(
                f"webhook secret {secret_ref!r} names an API endpoint, and this sender has no "
                "database to read it from"
            )
        try:
            if lookup is not None:
                value = lookup(secret_ref, user_id, url)
            else:
                value = self.secret_resolver(secret_ref)
        except PermanentError:
            raise
        except Exception as exc:  # a vault hiccup: the ref is fine, try again later
            raise TransientError(
                f"webhook secret {secret_ref!r} could not be resolved ({type(exc).__name__})"
            ) from None
        if not value and endpoint:
            raise PermanentError(
                f"webhook secret {secret_ref!r}: no such endpoint of user {user_id!r} to this "
                "URL (deleted, or the profile names another user's endpoint or another URL)"
            )
        if not value:
            raise PermanentError(f"webhook secret {secret_ref!r} is not set")
        return decode_secrets(value, secret_ref)

    def _read_capped(self, response: requests.Response) -> bytes:
        data = bytearray()
        for chunk in response.iter_content(chunk_size=8192):
            data += chunk
            if len(data) >= self.max_response_bytes:
                break
        return bytes(data[: self.max_response_bytes])

    def vetted_addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        """The (address, port) pairs to connect to: all of the host's, each one allowed."""
        try:
            infos = self._resolve(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise OSError(f"webhook host {host!r} does not resolve: {exc}") from exc
        pairs = []
        for info in infos:
            text = str(info[4][0])
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not self._allowed(address):
                raise RefusedAddress(
                    f"webhook host {host!r} resolves to non-public address {address} (refused)"
                )
            pairs.append((text, int(info[4][1])))
        return pairs

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies or .netrc credentials from the environment
            session.verify = self.verify
            guarded = _VettingAdapter(self.vetted_addresses)
            session.mount("http://", guarded)
            session.mount("https://", guarded)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session


def _certificate_error(exc: BaseException) -> str | None:
    """The certificate verification failure behind ``exc``, if that is what it is."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or str(current)
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
    return None


class RefusedAddress(Exception):
    """A webhook host resolved to an address the SSRF guard refuses, at connection time.

    Not an OSError, so that urllib3 and requests let it through as it is (it is no network
    failure to retry)."""


Vet = Callable[[str, int], list[tuple[str, int]]]


def _vetted_connection(conn: HTTPConnection, vet: Vet) -> socket.socket:
    """urllib3's ``_new_conn``, connecting only to addresses ``vet`` allowed for the host."""
    error: OSError | None = None
    for address, port in vet(conn._dns_host, conn.port):  # type: ignore[attr-defined]
        try:
            return create_connection(
                (address, port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            error = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}")


class _VettingAdapter(HTTPAdapter):
    """requests' adapter whose connections vet the addresses they connect to."""

    def __init__(self, vet: Vet) -> None:
        self._vet = vet
        super().__init__()

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        vet = self._vet

        class Http(HTTPConnection):
            def _new_conn(self) -> socket.socket:
                return _vetted_connection(self, vet)

        class Https(HTTPSConnection):
            def _new_conn(self) -> socket.socket:
                return _vetted_connection(self, vet)

        class HttpPool(HTTPConnectionPool):
            ConnectionCls = Http

        class HttpsPool(HTTPSConnectionPool):
            ConnectionCls = Https

        self.poolmanager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}
