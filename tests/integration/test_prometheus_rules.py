"""The operator alerts (deploy/prometheus) and dashboards (deploy/grafana), checked with promtool.

promtool checks and unit-tests the alert rules; every PromQL expression of the dashboards goes
through promtool's parser as a recording rule; every metric the rules and dashboards use must
be one the job defines (pipeline/metrics.py), and every metric the job defines must be on a
dashboard; every alert's runbook link must lead to a heading of docs/operations.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
OPERATIONS = ROOT / "docs" / "operations.md"
# The Grafana release the dashboards are written for (schemaVersion 41: Grafana 11.6 / 12).
SCHEMA_VERSION = 41
# Grafana's own variables, replaced by a duration before an expression goes to the parser.
GRAFANA_DURATIONS = ("$__rate_interval", "$__interval", "$__range")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        if os.geteuid() == 0:
            pytest.fail("promtool is missing: `make test` installs Debian's prometheus package")
        pytest.skip(
            "promtool is missing (Debian package prometheus; `make test` as root installs it)"
        )
    return found


def run_promtool(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) for every query of every dashboard."""
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus would receive it."""
    for variable in GRAFANA_DURATIONS:
        expr = expr.replace(variable, "5m")
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", "x", expr)


def metric_names(promql: str) -> set[str]:
    # Only the job's metrics and `up` are used; label names never start with the prefix.
    names = set(re.findall(r"\bsmart_alerts_\w+", promql))
    if re.search(r"\bup\{", promql):
        names.add("up")
    return names


@pytest.fixture(scope="module")
def job_series() -> set[str]:
    """Every series name the job can expose: the metric families of pipeline/metrics.py."""
    import prometheus_client

    from pipeline import metrics

    # The snapshot age is only exported with recovery on.
    saved = metrics.STATUS.recovery_on
    metrics.STATUS.recovery_on = True
    try:
        families = [
            f for f in prometheus_client.REGISTRY.collect() if f.name.startswith("smart_alerts_")
        ]
    finally:
        metrics.STATUS.recovery_on = saved
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "info": ("_info",),
    }
    return {"up"} | {
        family.name + suffix for family in families for suffix in suffixes.get(family.type, ("",))
    }


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", str(PROMETHEUS / "alerts_test.yml"))


def test_prometheus_config_loads_the_rules(promtool: str) -> None:
    output = run_promtool(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "1 rule files found" in output


def test_every_alert_is_complete_and_unit_tested() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {
        alert["exp_labels"].get("alertname", case["alertname"])
        for test in tests
        for case in test.get("alert_rule_test", [])
        for alert in case.get("exp_alerts", [])
    }
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules) == 9
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name} has no `for:`"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert "$value" in annotations["description"], f"{name}'s description omits the value"
        assert annotations["runbook_url"].startswith("docs/operations.md#"), name
        assert name in fired, f"no unit test in alerts_test.yml makes {name} fire"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6}\s+(.*)", line)):
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_runbook_url_leads_to_a_runbook_heading() -> None:
    text = OPERATIONS.read_text()
    anchors = github_anchors(text)
    assert "runbook" in anchors, "docs/operations.md has no Runbook section"
    runbook = text[text.index("\n## Runbook") :]
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no heading #{anchor}"
        assert f"### {rule['alert']}" in runbook, f"{rule['alert']} is not under ## Runbook"


def test_dashboard_expressions_parse(promtool: str, tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, _, expr) in enumerate(expressions)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    output = run_promtool(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_dashboards_and_rules_use_only_the_jobs_metrics(job_series: set[str]) -> None:
    used = [(f"{name}: {title}", expr) for name, title, expr in dashboard_expressions()]
    used += [(f"alerts.yml: {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            used.append((f"{path.name}: ${variable['name']}", variable["definition"]))
    unknown = {
        (where, name)
        for where, expr in used
        for name in metric_names(expr)
        if name not in job_series
    }
    assert not unknown, f"metrics pipeline/metrics.py does not define: {sorted(unknown)}"


def test_every_job_metric_is_on_a_dashboard(job_series: set[str]) -> None:
    shown = set().union(*(metric_names(expr) for _, _, expr in dashboard_expressions()))
    # One series of each family is enough (a histogram's _bucket stands for _sum and _count).
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in job_series - {"up"}}
    missing = {
        f
        for f in families
        if not any(re.sub(r"_(total|bucket|sum|count)$", "", s) == f for s in shown)
    }
    assert not missing, f"metrics on no dashboard: {sorted(missing)}"


def test_dashboards_are_provisioned_against_the_datasource() -> None:
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "smart-alerts.yml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"
    assert len(DASHBOARDS) == 4
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["schemaVersion"] == SCHEMA_VERSION, path.name
        uids.add(dashboard["uid"])
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']} is too wide"
            if panel["type"] == "row":
                continue
            refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
            assert all(ref == {"type": "prometheus", "uid": source["uid"]} for ref in refs), (
                f"{path.name}: {panel['title']} does not use the provisioned datasource"
            )
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"]["uid"] == source["uid"], path.name
    assert len(uids) == len(DASHBOARDS)


def host_file(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a docker-compose service sees at ``container_path``, through its bind
    mounts (short or long syntax), or None."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.partition(":")[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        if not source.startswith("./"):
            continue  # a named volume
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (ROOT / source / container_path[len(target) :].lstrip("/")).resolve()
    return None


def test_docker_compose_mounts_the_rules_and_dashboards() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        seen = host_file(services["prometheus"], f"/etc/prometheus/{rule_file}")
        assert seen == PROMETHEUS / rule_file, f"the prometheus service does not mount {rule_file}"
    assert "grafana" in services, "docker-compose.yml has no grafana service"
    grafana = services["grafana"]
    for kind in ("datasources/prometheus.yml", "dashboards/smart-alerts.yml"):
        seen = host_file(grafana, f"/etc/grafana/provisioning/{kind}")
        assert seen == GRAFANA / "provisioning" / kind, f"grafana does not mount {kind}"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "smart-alerts.yml").read_text()
    )
    folder = provider["providers"][0]["options"]["path"]
    for path in DASHBOARDS:
        assert host_file(grafana, f"{folder}/{path.name}") == path, (
            f"grafana does not see {path.name}"
        )
