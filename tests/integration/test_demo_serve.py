"""``smart-alerts demo --serve``: the demo, then the API over the same stack until Ctrl-C.

The demo runs as an operator runs it, a subprocess with an embedded stack of its own (the
servers named in the environment are not used: the demo writes the default topics and the
demo users' feeds, which other tests must not see).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration

URL_LINE = re.compile(r"^inbox of u-alice: (http://127\.0\.0\.1:(\d+))/inbox#token=(\S+)$")


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


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process holds: the demo is told to use it and must pick another."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_demo_serve_serves_the_api_to_the_demo_user_until_sigint(
    tmp_path: Path, held_port: int
) -> None:
    unset = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL", "SMART_ALERTS_API_JWT_SECRET")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env["SMART_ALERTS_API__PORT"] = str(held_port)
    stderr = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "demo", "--serve", "--state-dir",
         str(tmp_path / "state")],
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
            75,
            "the inbox URL on the demo's stdout",
        )
        found = output.match(URL_LINE)
        assert found is not None, f"the demo exited with {proc.returncode}: {output.lines[-5:]}"
        url, port, token = found.group(1), int(found.group(2)), found.group(3)
        assert port != held_port
        assert f'  curl -H "Authorization: Bearer $TOKEN" {url}/v1/inbox' in output.lines
        assert f"  export TOKEN={token}" in output.lines
        assert "Ctrl-C to stop" in output.lines
        servers = _children(proc.pid)
        assert servers, "the embedded servers should be the demo's children"

        with httpx.Client(base_url=url, timeout=30) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
            feed = client.get("/v1/inbox", headers={"Authorization": f"Bearer {token}"})
            assert feed.status_code == 200, feed.text
            items = feed.json()["items"]
            assert items, "the demo puts notifications in u-alice's feed"
            assert {item["notification"]["user_id"] for item in items} == {"u-alice"}
            forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            refused = client.get("/v1/inbox", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401
            page = client.get("/inbox")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.log").read_text()[-2000:]
        assert "stopping the API and the stack ..." in output.lines
        wait_for(lambda: not any(_alive(pid) for pid in servers), 15, "the servers to exit")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stderr.close()
