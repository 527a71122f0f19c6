"""WebhookSender against a real HTTP receiver on 127.0.0.1 that verifies with standardwebhooks."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from pipeline.messages import Channel, Notification, Priority
from sinks.channels.base import Delivery, PermanentError, TransientError
from sinks.channels.webhook import WebhookSender
from tests.fakes.tls import self_signed
from tests.fakes.webhook_receiver import Reply, WebhookReceiver, new_secret

pytestmark = pytest.mark.integration

OLD = new_secret(b"old-secret-key-material")
NEW = new_secret(b"new-secret-key-material")
LOOPBACK = {"127.0.0.0/8"}


def notification() -> Notification:
    return Notification(
        notification_id="n-1",
        user_id="u-1",
        alert_ids=["a-1"],
        title="SPY above 500",
        message="SPY crossed 500.00\nvolume 2x",
        highest_priority=Priority.HIGH,
        channels=[Channel.WEBHOOK],
        window_start=datetime(2024, 5, 1, 14, 30, tzinfo=UTC),
        window_end=datetime(2024, 5, 1, 14, 31, tzinfo=UTC),
    )


def delivery(url: str, *, attempt: int = 1, ref: str | None = "HOOK_SECRET") -> Delivery:
    return Delivery(
        notification=notification(),
        channel=Channel.WEBHOOK,
        destination=url,
        attempt=attempt,
        idempotency_key="dl-42",
        secret_ref=ref,
    )


def sender(secrets: dict[str, str], **options: object) -> WebhookSender:
    options.setdefault("allow_private_networks", LOOPBACK)
    return WebhookSender(secret_resolver=secrets.get, **options)  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver([OLD, NEW]) as server:
        yield server


def test_signed_delivery_verifies_with_standardwebhooks(receiver: WebhookReceiver) -> None:
    before = int(time.time())
    result = sender({"HOOK_SECRET": OLD}).send(delivery(receiver.url + "/hook"))
    (got,) = receiver.received
    assert got.method == "POST" and got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert got.verified_by == (0,)  # the old secret verifies, the new one does not
    assert receiver.each_signature_verifies(got)
    assert got.headers["webhook-id"] == "msg_dl-42" == result.provider_message_id
    assert before <= int(got.headers["webhook-timestamp"]) <= int(time.time())
    assert json.loads(got.body) == json.loads(notification().to_json())
    # the library's own check, timestamp included (UTC datetimes where it needs them)
    payload = Webhook(OLD).verify(got.body, got.headers)
    assert payload["notification_id"] == "n-1"
    signed_at = datetime.fromtimestamp(int(got.headers["webhook-timestamp"]), tz=UTC)
    expected = Webhook(OLD).sign("msg_dl-42", signed_at, got.body.decode())
    assert got.headers["webhook-signature"] == expected


def test_secret_rotation_signs_with_every_active_secret() -> None:
    secrets = {"HOOK_SECRET": f"{OLD} {NEW}"}
    for known in ([OLD], [NEW]):  # a receiver that knows only one of the two verifies
        with WebhookReceiver(known) as receiver:
            sender(secrets).send(delivery(receiver.url))
            (got,) = receiver.received
            assert got.verified_by == (0,)
            assert len(got.headers["webhook-signature"].split()) == 2
    with WebhookReceiver([OLD, NEW]) as receiver:
        sender(secrets).send(delivery(receiver.url))
        (got,) = receiver.received
        assert got.verified_by == (0, 1)
        assert receiver.each_signature_verifies(got)


def test_webhook_id_is_stable_across_retries(receiver: WebhookReceiver) -> None:
    receiver.reply_with(Reply(status=503))
    hook = sender({"HOOK_SECRET": NEW})
    with pytest.raises(TransientError):
        hook.send(delivery(receiver.url, attempt=1))
    hook.send(delivery(receiver.url, attempt=2))
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_dl-42"
    assert first.verified_by == second.verified_by == (1,)


def test_410_disables_the_endpoint(receiver: WebhookReceiver) -> None:
    receiver.reply_with(Reply(status=410, body=b"gone"))
    with pytest.raises(PermanentError) as caught:
        sender({"HOOK_SECRET": OLD}).send(delivery(receiver.url))
    assert caught.value.disable_destination is True
    assert "410" in caught.value.reason


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_permanent_without_disabling(receiver: WebhookReceiver, status: int) -> None:
    receiver.reply_with(Reply(status=status))
    with pytest.raises(PermanentError) as caught:
        sender({"HOOK_SECRET": OLD}).send(delivery(receiver.url))
    assert caught.value.disable_destination is False


def test_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    with WebhookReceiver([OLD]) as target:
        receiver.reply_with(Reply(status=307, headers={"Location": target.url + "/elsewhere"}))
        with pytest.raises(PermanentError) as caught:
            sender({"HOOK_SECRET": OLD}).send(delivery(receiver.url))
        assert "307" in caught.value.reason and "redirect" in caught.value.reason
        assert len(receiver.received) == 1
        assert target.received == []


@pytest.mark.parametrize("status", [200, 500])
def test_huge_response_body_is_not_read(receiver: WebhookReceiver, status: int) -> None:
    receiver.reply_with(Reply(status=status, stream_bytes=2 * 1024**3))  # announces 2 GiB
    started = time.monotonic()
    hook = sender({"HOOK_SECRET": OLD})
    if status == 200:
        assert hook.send(delivery(receiver.url)).provider_message_id == "msg_dl-42"
    else:
        with pytest.raises(TransientError) as caught:
            hook.send(delivery(receiver.url))
        assert len(caught.value.reason) < 400
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert receiver.streamed_bytes < 64 * 1024**2  # the client hung up long before 2 GiB


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/hook",
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://192.168.1.10/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
    ],
)
def test_ssrf_guard_refuses_non_public_addresses(url: str) -> None:
    resolved: list[str] = []

    def no_connect(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not connect")

    def resolve(host: str, port: int, **kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        resolved.append(host)
        return socket.getaddrinfo(host, port, **kwargs)  # type: ignore[arg-type]

    hook = WebhookSender(secret_resolver={"HOOK_SECRET": OLD}.get, resolve=resolve)
    hook._session = no_connect  # type: ignore[assignment,method-assign]
    with pytest.raises(PermanentError) as caught:
        hook.send(delivery(url))
    assert "refused" in caught.value.reason
    assert resolved  # checked the resolved addresses, not the spelling


def test_ssrf_guard_checks_every_resolved_address() -> None:

    def resolve(host: str, port: int, **kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    hook = WebhookSender(secret_resolver={"HOOK_SECRET": OLD}.get, resolve=resolve)
    with pytest.raises(PermanentError, match="10.1.2.3"):
        hook.send(delivery("https://example.test/hook"))


def rebinding(*answers: str) -> Callable[..., list[tuple]]:  # type: ignore[type-arg]
    """A resolver whose answer changes at each lookup, as a hostile DNS server's would."""
    queue = list(answers)

    def resolve(host: str, port: int, **kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


def test_dns_rebinding_after_the_check_is_refused_at_connection(
    receiver: WebhookReceiver,
) -> None:
    hook = WebhookSender(
        secret_resolver={"HOOK_SECRET": OLD}.get, resolve=rebinding("93.184.216.34", "127.0.0.1")
    )
    with pytest.raises(PermanentError, match="non-public address 127.0.0.1"):
        hook.send(delivery(f"http://rebind.test:{receiver.port}/hook"))
    assert receiver.received == []  # the loopback receiver was never reached


def test_the_connection_goes_to_the_vetted_address_with_the_url_host(
    receiver: WebhookReceiver,
) -> None:
    hook = WebhookSender(
        secret_resolver={"HOOK_SECRET": OLD}.get,
        allow_private_networks={"127.0.0.0/8"},
        resolve=rebinding("127.0.0.1"),
    )
    hook.send(delivery(f"http://hooks.test:{receiver.port}/hook"))
    (received,) = receiver.received
    assert received.headers["host"] == f"hooks.test:{receiver.port}"


def test_https_verifies_the_url_host_on_the_vetted_connection(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "hooks.test")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with WebhookReceiver([OLD], tls=tls) as server:
        url = f"https://hooks.test:{server.port}/hook"
        options = {
            "secret_resolver": {"HOOK_SECRET": OLD}.get,
            "allow_private_networks": LOOPBACK,
            "resolve": rebinding("127.0.0.1"),
        }
        WebhookSender(ca_bundle=str(cert), **options).send(delivery(url))  # type: ignore[arg-type]
        assert [r.verified_by for r in server.received] == [(0,)]
        with pytest.raises(PermanentError, match="self.signed certificate"):  # not a public CA
            WebhookSender(**options).send(delivery(url))  # type: ignore[arg-type]
        other = f"https://other.test:{server.port}/hook"  # certificate for another name
        with pytest.raises(PermanentError, match="Hostname mismatch"):
            WebhookSender(ca_bundle=str(cert), **options).send(delivery(other))  # type: ignore[arg-type]
    assert len(server.received) == 1


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://a/"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(PermanentError, match="scheme"):
        sender({"HOOK_SECRET": OLD}).send(delivery(url))


def test_missing_secret_names_the_ref_not_a_value(receiver: WebhookReceiver) -> None:
    with pytest.raises(PermanentError) as caught:
        sender({"OTHER": OLD}).send(delivery(receiver.url))
    assert "HOOK_SECRET" in caught.value.reason
    with pytest.raises(PermanentError) as caught:
        sender({"HOOK_SECRET": "whsec_not base64!"}).send(delivery(receiver.url))
    assert "HOOK_SECRET" in caught.value.reason and "not base64" not in caught.value.reason
    with pytest.raises(PermanentError):
        sender({"HOOK_SECRET": OLD}).send(delivery(receiver.url, ref=None))
    assert receiver.received == []


def test_default_resolver_reads_the_environment(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VS9_TEST_HOOK_SECRET", f"{NEW} {OLD}")
    WebhookSender(allow_private_networks=LOOPBACK).send(
        delivery(receiver.url, ref="VS9_TEST_HOOK_SECRET")
    )
    assert receiver.received[0].verified_by == (0, 1)


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (Reply(status=500), None),
        (Reply(status=503, headers={"Retry-After": "7"}), 7.0),
        (Reply(status=429, headers={"Retry-After": "30"}), 30.0),
        (Reply(status=408), None),
        (Reply(hang=5.0), None),
        (Reply(drop=True), None),
    ],
    ids=["500", "503", "429", "408", "hang", "drop"],
)
def test_transient_failures(receiver: WebhookReceiver, reply: Reply, retry_after: float) -> None:
    receiver.reply_with(reply)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        sender({"HOOK_SECRET": OLD}, read_timeout=0.5).send(delivery(receiver.url))
    assert caught.value.retry_after == retry_after
    assert time.monotonic() - started < 3


def test_connection_refused_is_transient() -> None:
    with WebhookReceiver([OLD]) as closed:
        url = closed.url
    with pytest.raises(TransientError):
        sender({"HOOK_SECRET": OLD}, connect_timeout=1).send(delivery(url))
