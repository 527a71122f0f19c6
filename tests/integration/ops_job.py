"""A live ``smart-alerts run`` with its ops endpoints on a free port, for the ops tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from connectors.embedded import free_ports
from pipeline.config import Settings


@dataclass
class OpsJob:
    process: subprocess.Popen[str]
    port: int

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=15) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:  # not listening yet
            return 0, ""

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = self.get(path)
        return status, json.loads(body) if body else {}


@contextmanager
def ops_job(settings: Settings, extra_env: dict[str, str] | None = None) -> Iterator[OpsJob]:
    """The job as an operator runs it, ``run --metrics-port P``; stopped with SIGTERM."""
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "run", "--metrics-port", str(port)],
        env={
            **os.environ,
            "PYTHONPATH": os.getcwd(),
            **settings.as_environment(),
            **(extra_env or {}),
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield OpsJob(process, port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
