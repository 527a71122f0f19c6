"""``smart-alerts demo --serve``: the demo, then the live job and the API over the same stack
until Ctrl-C.

The demo runs as an operator runs it, a subprocess with an embedded stack of its own (the
servers named in the environment are not used: the demo writes the default topics and the
demo users' feeds, which other tests must not see). The live part is the story a new user
tries: a CRITICAL rule made through the API, two ticks published with the printed commands,
the notification on the inbox WebSocket.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from pipeline.cli.commands import read_topic
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

URL_LINE = re.compile(r"^inbox of u-alice: (http://127\.0\.0\.1:(\d+))/inbox#token=(\S+)$")
JOB_LINE = re.compile(r"^job: running live on the same topics \(pid (\d+)\), its log in (\S+)$")
SERVERS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")
# The live job reads the whole sample again before the new ticks (and starts on a loaded
# machine); a CRITICAL alert itself is never held.
LIVE_TIMEOUT = 60


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the embedded servers, the mail catcher's none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Lines:
    """The subprocess's stdout, read by a thread (a full pipe would block the demo)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line.rstrip("\n"))

    def match(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        return next((m for line in list(self.lines) if (m := pattern.match(line))), None)


def _printed_command(lines: list[str], start: str) -> str:
    found = [line.strip() for line in lines if line.strip().startswith(start)]
    assert len(found) == 1, f"one line starting {start!r} expected in {lines}"
    return found[0]


def _publish_tick(exports: str, publish: str, price: int, cwd: Path, env: dict[str, str]) -> None:
    """Run the printed commands, as a user pastes them into a shell, with another price."""
    priced = publish.replace('"price":201', f'"price":{price}')
    assert priced != publish or price == 201
    script = f"{exports}\n{priced}"
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replayed 1 messages from tick.jsonl to market.ticks" in done.stdout
    tick = json.loads((cwd / "tick.jsonl").read_text())
    assert tick["price"] == price
    assert abs(datetime.fromisoformat(tick["ts"]) - datetime.now(UTC)) < timedelta(minutes=1)


def _live_notifications(ws: ClientConnection, until: float) -> Iterator[dict[str, Any]]:
    """The notifications the inbox WebSocket sends until the monotonic time ``until``."""
    while (left := until - time.monotonic()) > 0:
        try:
            message = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            return
        if message["type"] == "notification":
            yield message


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process holds: the demo is told to use it and must pick another."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_demo_serve_runs_the_job_live_and_serves_the_api_until_sigint(
    tmp_path: Path, held_port: int
) -> None:
    unset = (*SERVERS, "SMART_ALERTS_API_JWT_SECRET")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env["SMART_ALERTS_API__PORT"] = str(held_port)
    state = tmp_path / "state"
    stderr = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "demo", "--serve", "--state-dir",
         str(state)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    output = Lines(proc)
    try:
        wait_for(
            lambda: output.match(URL_LINE) is not None or proc.poll() is not None,
            90,
            "the inbox URL on the demo's stdout",
        )
        found = output.match(URL_LINE)
        assert found is not None, f"the demo exited with {proc.returncode}: {output.lines[-5:]}"
        url, port, token = found.group(1), int(found.group(2)), found.group(3)
        assert port != held_port
        assert f'  curl -H "Authorization: Bearer $TOKEN" {url}/v1/inbox' in output.lines
        assert f"  export TOKEN={token}" in output.lines
        assert "Ctrl-C to stop" in output.lines
        job_line = output.match(JOB_LINE)
        assert job_line is not None, output.lines[-12:]
        job_pid, job_log = int(job_line.group(1)), Path(job_line.group(2))
        assert job_log == state / "job.log"
        children = _children(proc.pid)
        assert job_pid in children, "the live job should be the demo's child"
        assert len(children) > 1, "the embedded servers should be the demo's children"
        exports = _printed_command(output.lines, "export KAFKA_BOOTSTRAP_SERVERS=")
        assert all(f"{name}=" in exports for name in SERVERS)
        publish = _printed_command(output.lines, "echo '{")
        assert publish.endswith(" replay tick.jsonl --topic ticks")
        mails_before = len(list((state / "mail").glob("*.eml")))
        auth = {"Authorization": f"Bearer {token}"}

        with httpx.Client(base_url=url, timeout=30) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
            feed = client.get("/v1/inbox", headers=auth)
            assert feed.status_code == 200, feed.text
            items = feed.json()["items"]
            assert items, "the demo puts notifications in u-alice's feed"
            assert {item["notification"]["user_id"] for item in items} == {"u-alice"}
            sample_ids = {item["notification"]["notification_id"] for item in items}
            forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            refused = client.get("/v1/inbox", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401
            page = client.get("/inbox")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]

            ws_url = url.replace("http://", "ws://") + f"/v1/inbox/ws?access_token={token}"
            with connect(ws_url) as ws:
                assert json.loads(ws.recv(timeout=30))["type"] == "ready"
                rule = client.post(
                    "/v1/rules/from-text",
                    headers=auth,
                    json={"text": "AAPL price crosses above 200 priority critical"},
                )
                assert rule.status_code == 201, rule.text
                assert rule.json()["priority"] == "CRITICAL"
                ticked_at = datetime.now(UTC)
                tick_env = {name: value for name, value in env.items() if name not in SERVERS}
                _publish_tick(exports, publish, 199, tmp_path, tick_env)
                time.sleep(1.1)  # the next tick's ts (whole seconds) is a later one
                _publish_tick(exports, publish, 201, tmp_path, tick_env)
                live: list[dict[str, Any]] = []
                for message in _live_notifications(ws, time.monotonic() + LIVE_TIMEOUT):
                    live.append(message["notification"])
                    if message["notification"]["highest_priority"] == "CRITICAL":
                        break
            critical = [n for n in live if n["highest_priority"] == "CRITICAL"]
            assert critical, f"no CRITICAL notification within {LIVE_TIMEOUT} s: {live}"
            assert critical[0]["user_id"] == "u-alice"
            assert rule.json()["name"] in critical[0]["title"]
            assert datetime.fromisoformat(critical[0]["window_end"]) >= ticked_at - timedelta(
                seconds=5
            )
            # The job read the sample again before the ticks: nothing of it reached the feed
            # twice, live or in the inbox, and no e-mail of it went out again.
            assert not {n["notification_id"] for n in live} & sample_ids
            after = client.get("/v1/inbox", headers=auth).json()["items"]
            after_ids = [item["notification"]["notification_id"] for item in after]
            assert len(after_ids) == len(set(after_ids))
            assert sample_ids < set(after_ids)
            assert critical[0]["notification_id"] in after_ids
            assert len(list((state / "mail").glob("*.eml"))) == mails_before
        # It resumed where the bounded run stopped: no alert of the sample published twice.
        bootstrap = re.search(r"KAFKA_BOOTSTRAP_SERVERS=(\S+)", exports)
        assert bootstrap is not None
        alerts = [
            json.loads(record.value)["alert_id"]
            for record in read_topic(bootstrap.group(1), "alerts.triggered")
            if record.value is not None
        ]
        assert set(critical[0]["alert_ids"]) < set(alerts)
        assert len(alerts) == len(set(alerts))

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, (tmp_path / "stderr.log").read_text()[-2000:]
        assert "stopping the job, the API and the stack ..." in output.lines
        assert not any("the job" in line and "exited with" in line for line in output.lines)
        assert "stopped on SIGTERM: input closed, state kept" in job_log.read_text()
        wait_for(lambda: not any(_alive(pid) for pid in children), 15, "the children to exit")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stderr.close()
