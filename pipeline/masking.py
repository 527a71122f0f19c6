"""Contact details and secrets shown so that a person can tell them apart but not use them:
in the log (pipeline/logs.py) and in what analysts read through the API."""

from __future__ import annotations

from urllib.parse import urlsplit


def mask_email(email: str) -> str:
    """``a***@example.com``: which domain, not whose address."""
    local, at, domain = email.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(phone: str) -> str:
    """``+1******4567``: the country code and the last four digits."""
    return phone[:2] + "*" * max(len(phone) - 6, 3) + phone[-4:]


def mask_token(token: str) -> str:
    """A push token or a key: its last four characters tell two apart."""
    return "***" + token[-4:]


def mask_url(url: str) -> str:
    """A URL without what may authenticate: the password and the query, and for http(s) (a
    webhook's URL often holds a token in its path) everything after the host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    if not parts.scheme:
        return "***"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if parts.username or parts.password is not None:
        password = ":***" if parts.password is not None else ""
        netloc = f"{parts.username or ''}{password}@{netloc}"
    if parts.scheme in ("http", "https", "ws", "wss"):
        rest = "/…" if parts.path.strip("/") or parts.query else ""
        return f"{parts.scheme}://{netloc}{rest}"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def mask_destination(channel: str, destination: str) -> str:
    """A delivery's destination as the log shows it (the in-app feed's key is no contact)."""
    if channel == "email":
        return mask_email(destination)
    if channel in ("sms", "voice"):
        return mask_phone(destination)
    if channel == "push":
        return mask_token(destination)
    if channel == "webhook":
        return mask_url(destination)
    return destination
