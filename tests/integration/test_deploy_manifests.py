"""The deployment files: docker-compose.yml against the compose-spec schema, the Kubernetes
manifests against the Kubernetes API schemas (kubernetes-validate, offline), and what each must
hold (health checks, start-up order, probes, security context, image tag, the StatefulSet's
entrypoint run for real, the one-shot set-up's `topics create` against the embedded broker).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from confluent_kafka.admin import ConfigResource

from connectors.embedded import StackUrls
from connectors.topics import admin_client
from pipeline.config import Topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported upstream when this was written
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"smart-alerts:{VERSION}"
JOB_USER = 10001
RECOVERY_PATH = "/var/lib/smart-alerts/recovery"


# ---------------------------------------------------------------- docker-compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    # The schema check-jsonschema vendors (its --builtin-schema vendor.compose-spec).
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    errors = sorted(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(compose),
        key=lambda e: list(e.path),
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_starts_in_order_and_checks_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("broker", "postgres", "redis", "mailpit", "alerts", "api", "prometheus"):
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
    assert "/readyz" in " ".join(services["alerts"]["healthcheck"]["test"])
    assert "9464" in " ".join(services["alerts"]["healthcheck"]["test"])
    assert "8080/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name, service in services.items():
        assert service.get("restart"), f"{name} has no restart policy"

    init = services["init"]
    assert init["command"] == ["smart-alerts topics create && smart-alerts migrate"]
    assert init["depends_on"] == {
        "broker": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    for name in ("alerts", "api"):
        depends = services[name]["depends_on"]
        assert depends["init"] == {"condition": "service_completed_successfully"}
        others = {k: v for k, v in depends.items() if k != "init"}
        assert others and all(v == {"condition": "service_healthy"} for v in others.values())
    assert services["api"]["command"] == ["api", "--host", "0.0.0.0"]


def test_compose_broker_is_reachable_from_the_host(compose: dict[str, Any]) -> None:
    broker = compose["services"]["broker"]
    command = broker["command"]
    assert "internal://broker:9092" in command and "external://localhost:19092" in command
    assert "external://0.0.0.0:19092" in command
    assert "19092:19092" in broker["ports"]
    assert compose["services"]["alerts"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "broker:9092"


def test_compose_recovery_volume_belongs_to_the_image_user(compose: dict[str, Any]) -> None:
    alerts = compose["services"]["alerts"]
    assert alerts["environment"]["SMART_ALERTS_RECOVERY__DIRECTORY"] == RECOVERY_PATH
    assert f"recovery:{RECOVERY_PATH}" in alerts["volumes"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    # The image makes the path and gives it to the job's user before USER switches to it, so a
    # named volume mounted there starts owned by that user.
    assert f"mkdir -p {RECOVERY_PATH}" in dockerfile
    assert f"chown -R {JOB_USER}:{JOB_USER} /var/lib/smart-alerts" in dockerfile
    assert f"\nUSER {JOB_USER}:{JOB_USER}\n" in dockerfile
    assert dockerfile.index("chown") < dockerfile.index(f"\nUSER {JOB_USER}")


def test_compose_mounts_the_monitoring_files_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["prometheus"]["volumes"] == ["./deploy/prometheus:/etc/prometheus:ro"]
    assert (ROOT / "deploy" / "prometheus" / "prometheus.yml").is_file()
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_at = mounts["./deploy/grafana/dashboards"]
    for source in mounts:
        assert (ROOT / source).is_dir(), source
    # The dashboards provider reads the path the dashboards are mounted at.
    providers = [
        yaml.safe_load(p.read_text())
        for p in (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards").glob("*.y*ml")
    ]
    paths = {p["options"]["path"] for doc in providers for p in doc.get("providers", [])}
    assert dashboards_at in paths


# ---------------------------------------------------------------- Kubernetes


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, "kustomization.yaml must list every manifest"
    return [
        doc
        for name in listed
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text())
        if doc is not None
    ]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    return doc


# The Prometheus Operator's CRD is not among kubernetes-validate's schemas: the fields used here.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_every_manifest_matches_its_schema() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_bad_manifest() -> None:
    statefulset = one("StatefulSet", "smart-alerts")
    broken = json.loads(json.dumps(statefulset))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("StatefulSet", "Deployment", "Job"):
        for doc in by_kind(kind):
            yield f"{kind}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
    for doc in by_kind("CronJob"):
        template = doc["spec"]["jobTemplate"]["spec"]["template"]
        yield f"CronJob/{doc['metadata']['name']}", template["spec"]


def test_pods_run_as_the_image_user_with_nothing_more() -> None:
    seen = 0
    for name, pod in pod_specs():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == context["runAsGroup"] == JOB_USER, name
        assert context["fsGroup"] == JOB_USER, name
        for container in pod.get("initContainers", []) + pod["containers"]:
            seen += 1
            where = f"{name} {container['name']}"
            assert container["image"] == IMAGE, where
            security = container["securityContext"]
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert container["resources"]["requests"] and container["resources"]["limits"], where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
    # the job, the API, the archiver, the set-up Job (init + main), the maintenance CronJob
    assert seen == 6


def test_probes_point_at_health_and_readiness() -> None:
    job = one("StatefulSet", "smart-alerts")["spec"]["template"]["spec"]["containers"][0]
    api = one("Deployment", "smart-alerts-api")["spec"]["template"]["spec"]["containers"][0]
    for container, port in ((job, 9464), (api, 8080)):
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        assert live["path"] == "/healthz" and ready["path"] == "/readyz"
        assert named[live["port"]] == named[ready["port"]] == port
    assert job["args"] == ["run"]
    assert api["args"][:3] == ["api", "--host", "0.0.0.0"]


def test_setup_job_creates_topics_and_migrates() -> None:
    pod = one("Job", "smart-alerts-setup")["spec"]["template"]["spec"]
    steps = [c["args"] for c in pod["initContainers"] + pod["containers"]]
    assert steps == [["topics", "create"], ["migrate"]]
    assert pod["restartPolicy"] == "OnFailure"


def test_maintenance_runs_daily_one_at_a_time() -> None:
    cron = one("CronJob", "smart-alerts-maintain")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["timeZone"] == "Etc/UTC"
    assert len(cron["schedule"].split()) == 5 and cron["schedule"].split()[2:] == ["*"] * 3
    (container,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["maintain"]
    assert {e["name"] for e in container["env"]} >= {"DATABASE_URL", "SMART_ALERTS_CONFIG"}


def test_disruption_budgets_and_service_monitor_select_the_pods() -> None:
    job = one("StatefulSet", "smart-alerts")
    api = one("Deployment", "smart-alerts-api")
    budgets = {d["metadata"]["name"]: d["spec"] for d in by_kind("PodDisruptionBudget")}
    for workload in (job, api):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        budget = budgets[workload["metadata"]["name"]]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
    (monitor,) = by_kind("ServiceMonitor")
    service = one("Service", job["spec"]["serviceName"])
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports[monitor["spec"]["endpoints"][0]["port"]] == 9464


# ---------------------------------------------------------------- the StatefulSet's entrypoint


def statefulset_env() -> dict[str, str]:
    container = one("StatefulSet", "smart-alerts")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_cluster_size_is_the_replica_count() -> None:
    statefulset = one("StatefulSet", "smart-alerts")
    env = statefulset_env()
    assert int(env["SMART_ALERTS_CLUSTER_SIZE"]) == statefulset["spec"]["replicas"]
    assert env["SMART_ALERTS_SERVICE"] == statefulset["spec"]["serviceName"]
    assert env["SMART_ALERTS_RECOVERY__DIRECTORY"] == RECOVERY_PATH


def run_entrypoint(
    tmp_path: Path, pod: str, size: int, recovery: Path
) -> subprocess.CompletedProcess[str]:
    """The StatefulSet's command under sh, with ``smart-alerts`` replaced by a script that
    prints the environment it was given and the arguments."""
    container = one("StatefulSet", "smart-alerts")["spec"]["template"]["spec"]["containers"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "smart-alerts"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n"
    )
    fake.chmod(0o755)
    # `python -m bytewax.recovery` is the venv's python, as it is the image's.
    venv_bin = Path(sys.executable).parent
    env = {
        "PATH": os.pathsep.join([str(bin_dir), str(venv_bin), os.environ["PATH"]]),
        "POD_NAME": pod,
        "SMART_ALERTS_CLUSTER_SIZE": str(size),
        "SMART_ALERTS_SERVICE": "smart-alerts",
        "SMART_ALERTS_RECOVERY__DIRECTORY": str(recovery),
    }
    return subprocess.run(
        [*container["command"], *container["args"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entrypoint_derives_the_cluster_from_the_pod_and_the_size(tmp_path: Path) -> None:
    recovery = tmp_path / "recovery"
    done = run_entrypoint(tmp_path, "smart-alerts-1", 3, recovery)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["argv"] == ["run"]
    env = got["env"]
    assert env["SMART_ALERTS_ENGINE__PROCESS_ID"] == "1"
    assert json.loads(env["SMART_ALERTS_ENGINE__ADDRESSES"]) == [
        f"smart-alerts-{i}.smart-alerts:2101" for i in range(3)
    ]
    assert env["SMART_ALERTS_RECOVERY__PARTITIONS"] == "3"
    # Only this pod's recovery partition: the cluster holds each one exactly once.
    assert sorted(p.name for p in recovery.iterdir()) == ["part-1.sqlite3"]
    before = (recovery / "part-1.sqlite3").stat().st_mtime_ns
    assert run_entrypoint(tmp_path, "smart-alerts-1", 3, recovery).returncode == 0
    assert sorted(p.name for p in recovery.iterdir()) == ["part-1.sqlite3"]
    assert (recovery / "part-1.sqlite3").stat().st_mtime_ns == before

    single = json.loads(run_entrypoint(tmp_path, "alerts-0", 1, tmp_path / "one").stdout)
    assert json.loads(single["env"]["SMART_ALERTS_ENGINE__ADDRESSES"]) == [
        "alerts-0.smart-alerts:2101"
    ]


def test_entrypoint_refuses_a_pod_outside_the_cluster_size(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, "smart-alerts-2", 2, tmp_path / "recovery")
    assert done.returncode == 2
    assert "outside SMART_ALERTS_CLUSTER_SIZE=2" in done.stderr
    assert not (tmp_path / "recovery").exists()


# ---------------------------------------------------------------- topics create (the set-up Job)


def test_topics_create_takes_replicas_and_retention_from_configuration(
    stack: StackUrls, tmp_path: Path
) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}"
    topics = Topics.prefixed(prefix)
    config = tmp_path / "config.toml"
    config.write_text(
        "[partitions]\nmarket = 2\nreplication_factor = 1\nmarket_retention_hours = 2.0\n"
        "reference_tombstone_hours = 0.5\n"
    )
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "DATABASE_URL": stack.database_url,
        "REDIS_URL": stack.redis_url,
        "SMART_ALERTS_CONFIG": str(config),
        "SMART_ALERTS_PARTITIONS__OUTPUTS_RETENTION_HOURS": "24",
        **{f"SMART_ALERTS_TOPICS__{name.upper()}": topic for name, topic in topics.items()},
    }
    cli = shutil.which("smart-alerts", path=str(Path(sys.executable).parent))
    assert cli
    done = subprocess.run(
        [cli, "topics", "create"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created") == 9

    admin = admin_client(stack.kafka_bootstrap)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics.values()]
    configs = {
        resource.name: {key: entry.value for key, entry in future.result(10).items()}
        for resource, future in admin.describe_configs(resources).items()
    }
    hour = 3_600_000
    for name in ("ticks", "options_flow"):
        assert configs[topics[name]]["retention.ms"] == str(2 * hour)
    for name in ("triggered", "notifications", "dlq"):
        assert configs[topics[name]]["retention.ms"] == str(24 * hour)
    assert configs[topics["feedback"]]["retention.ms"] == str(720 * hour)  # the default
    for name in ("rules", "positions", "profiles"):
        assert configs[topics[name]]["cleanup.policy"] == "compact"
        assert configs[topics[name]]["delete.retention.ms"] == str(hour // 2)
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[topics["ticks"]].partitions) == 2
    replicas = {
        len(p.replicas) for t in topics.values() for p in metadata.topics[t].partitions.values()
    }
    assert replicas == {1}
