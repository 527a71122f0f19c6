"""The job's ops endpoints: /healthz, /readyz with the status of every dependency, 404 for the
rest, on the port given by --metrics-port (a real ``smart-alerts run`` on the embedded stack)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connectors.embedded import StackUrls, free_ports
from tests.conftest import job_settings, wait_for
from tests.integration.ops_job import ops_job

pytestmark = pytest.mark.integration


def test_healthz_and_readyz_answer_200_when_all_is_up_and_other_paths_404(
    stack: StackUrls, database_url: str
) -> None:
    settings = job_settings(stack, database_url, engine={"shard_count": 2, "user_shard_count": 1})
    with ops_job(settings) as job:
        wait_for(lambda: job.get("/readyz")[0] == 200, 60, "/readyz to answer 200")
        status, body = job.get_json("/readyz")
        assert status == 200
        assert body["status"] == "ready"
        assert body["checks"] == {
            name: {"status": "ok"} for name in ("kafka", "postgresql", "redis", "reference_topics")
        }
        status, health = job.get_json("/healthz")
        assert status == 200, health
        assert health["status"] == "ok"
        assert health["last_poll_seconds_ago"] < 30
        status, page = job.get("/metrics")
        assert status == 200
        assert "smart_alerts_build_info{" in page
        for path in ("/", "/health", "/ready", "/metrics/x", "/healthz/x"):
            status, body = job.get(path)
            assert status == 404, path
            assert "smart_alerts_" not in body  # no longer the metrics page on every path


def test_readyz_names_an_unreachable_redis_while_healthz_stays_200(
    stack: StackUrls, database_url: str
) -> None:
    (closed,) = free_ports(1)  # nothing listens there
    settings = job_settings(
        stack,
        database_url,
        engine={"shard_count": 2, "user_shard_count": 1},
        ops={"check_timeout_seconds": 1},
        dependencies={"connect_timeout_seconds": 1},
    )
    settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed}/0"})
    with ops_job(settings) as job:
        wait_for(lambda: job.get("/readyz")[0] == 503, 60, "/readyz to answer 503")
        status, body = job.get_json("/readyz")
        assert status == 503
        assert body["status"] == "not_ready"
        assert "redis" in body["failing"]
        assert body["checks"]["redis"]["status"] == "unavailable"
        assert "Connection" in body["checks"]["redis"]["reason"]
        assert body["checks"]["kafka"] == {"status": "ok"}
        assert body["checks"]["postgresql"] == {"status": "ok"}
        # Liveness is not readiness: the job waits for Redis at start-up ([dependencies]
        # startup_wait_seconds), well within [ops] stall_seconds, so no restart is asked for.
        status, health = job.get_json("/healthz")
        assert status == 200, health
        status, page = job.get("/metrics")
        assert "smart_alerts_ready 0.0" in page


def test_healthz_answers_503_while_the_dataflow_is_wedged_and_200_once_it_moves_again(
    stack: StackUrls, database_url: str, tmp_path: Path
) -> None:
    """A worker blocked on its input (tests/integration/wedge/sitecustomize.py blocks every
    partition read while a flag file exists) stops polling: /healthz says so once
    ``[ops] stall_seconds`` have passed, and recovers when the reads go on."""
    settings = job_settings(
        stack,
        database_url,
        engine={"shard_count": 2, "user_shard_count": 1},
        ops={"stall_seconds": 2},
    )
    flag = tmp_path / "wedged"
    wedge = str(Path(__file__).parent / "wedge")
    env = {"SMART_ALERTS_TEST_WEDGE": str(flag), "PYTHONPATH": f"{wedge}{os.pathsep}{os.getcwd()}"}
    with ops_job(settings, extra_env=env) as job:
        wait_for(lambda: job.get("/healthz")[0] == 200, 60, "/healthz to answer 200")
        flag.touch()
        wait_for(lambda: job.get("/healthz")[0] == 503, 30, "/healthz to answer 503")
        status, health = job.get_json("/healthz")
        assert status == 503, health
        assert health["status"] == "stalled"
        assert "has not polled its input" in health["reason"]
        flag.unlink()
        wait_for(lambda: job.get("/healthz")[0] == 200, 30, "/healthz to answer 200 again")
