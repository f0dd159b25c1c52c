"""deploy/: the Grafana dashboard, Grafana's provisioning and the Prometheus config.

Every metric a dashboard query names must be in a real gateway's GET /metrics, with the labels
the query groups, filters and labels its legend by. promtool checks the Prometheus config, the
shipped alert rules and every query.
"""

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from surgeflow.alerts import prometheus_rules
from surgeflow.config import (
    AlertSettings,
    EndpointSettings,
    ModelCacheSettings,
    ModelSettings,
    SemanticSettings,
    SimulatedSettings,
)
from surgeflow.server import running_gateway
from tests.gateway.conftest import API_KEY, make_service
from tests.tools import require_program

DEPLOY = Path(__file__).parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "surgeflow-dashboard.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARDS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "surgeflow.yml"

TARGET_LABELS = {"job", "instance"}  # Prometheus adds these to every series it scrapes
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["Traffic", "Latency", "Model endpoints", "Cache", "Queue & runs", "Alerts"]
# Grafana's variables, as a query might see them, so that promtool can parse the queries.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
}

METRIC = re.compile(r"\bsurgeflow_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(surgeflow_[a-z0-9_]+)(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every PromQL query: panel targets and query variables."""
    found = [
        (f"panel {panel['id']} {target['refId']}", target["expr"], target.get("legendFormat", ""))
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            expr = query["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']}", expr, ""))
    return found


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """promtool's answer (Debian: apt-get install prometheus; CI installs it)."""
    binary = require_program("promtool", "apt-get install prometheus")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


def test_the_dashboard_is_well_formed(tmp_path: Path) -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "surgeflow"
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["includeAll"]
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert [p["title"] for p in panels if p["type"] == "row"] == ROWS
    cells: dict[tuple[int, int], int] = {}  # no two panels overlap on the 24-column grid
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["id"]
        assert grid["x"] + grid["w"] <= 24, panel["id"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells[x, y]} and {panel['id']} overlap"
                cells[x, y] = panel["id"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        where = f"panel {panel['id']} ({panel['title']})"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["fieldConfig"]["defaults"].get("unit"), where
        assert panel["targets"], where
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert target["expr"].strip(), where
    for where, expr, _ in queries(dashboard):
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), f"{where}: {expr}"
        if where.startswith("panel"):  # the $job and $instance pickers apply to every metric
            for match in SELECTOR.finditer(expr):
                matchers = match.group(2) or ""
                assert 'job=~"$job"' in matchers, f"{where}: {match.group(0)}"
                assert 'instance=~"$instance"' in matchers, f"{where}: {match.group(0)}"
    # promtool parses each query, as a recording rule, with Grafana's variables filled in.
    rules = []
    for index, (_, expr, _) in enumerate(queries(dashboard)):
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        if not expr.startswith("label_values("):  # Grafana's function, not PromQL
            rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def scrape_after_some_traffic(tmp_path: Path) -> str:
    """GET /metrics of a real gateway after a chat completion and a durable run."""
    model = ModelSettings(  # the default model, with the semantic cache on for its metrics
        name="sim-small",
        endpoints=[
            EndpointSettings(name="sim-a", simulated=SimulatedSettings(seed=1)),
            EndpointSettings(name="sim-b", simulated=SimulatedSettings(seed=2)),
        ],
        cache=ModelCacheSettings(semantic=SemanticSettings(enabled=True)),
    )
    chat = {
        "model": "sim-small",
        "temperature": 0,
        "messages": [{"role": "user", "content": "How do refunds work?"}],
    }
    async with make_service(tmp_path, models=[model]) as service, running_gateway(service) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            async with http.post("/v1/chat/completions", json=chat) as response:
                assert response.status == 200
            run = {"input": {"name": "ops"}}
            async with http.post("/v1/workflows/greet/runs", json=run) as response:
                run_id = (await response.json())["id"]
            for _ in range(400):
                async with http.get(f"/v1/runs/{run_id}") as response:
                    status = (await response.json())["status"]
                if status in ("succeeded", "failed", "cancelled", "dead"):
                    break
                await asyncio.sleep(0.01)
            assert status == "succeeded"
            async with http.get("/metrics") as response:
                assert response.status == 200
                return await response.text()


async def test_every_metric_the_dashboard_queries_is_exported(tmp_path: Path) -> None:
    exposition = await scrape_after_some_traffic(tmp_path)
    families = list(text_string_to_metric_families(exposition))
    # Series names as PromQL sees them (x_total, x_bucket …), and the labels each carries.
    labels: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    used: set[str] = set()
    for where, expr, legend in queries(load_dashboard()):
        metrics = set(METRIC.findall(expr))
        used |= metrics
        missing = metrics - labels.keys()
        assert not missing, f"{where} queries {missing}, which GET /metrics does not have"
        if not metrics:
            continue  # ALERTS: Prometheus's own series
        known = set().union(*(labels[m] for m in metrics)) | TARGET_LABELS
        referenced = {
            label.strip() for group in GROUPING.findall(expr) for label in group.split(",")
        } - {""}
        for matchers in MATCHERS.findall(expr):
            referenced |= set(MATCHER_LABEL.findall(matchers))
        referenced |= set(LEGEND_LABEL.findall(legend))
        assert referenced <= known, f"{where}: no label {referenced - known} on {metrics}"
    # What each row is there to show is on the dashboard (a dropped panel shows up here).
    for name in (
        "surgeflow_http_requests_total",
        "surgeflow_http_request_duration_seconds_bucket",
        "surgeflow_http_admission_rejections_total",
        "surgeflow_endpoint_ejected",
        "surgeflow_endpoint_latency_ewma_seconds",
        "surgeflow_model_cost_estimated_total",
        "surgeflow_cache_requests_total",
        "surgeflow_cache_coalesced_total",
        "surgeflow_queue_oldest_ready_age_seconds",
        "surgeflow_queue_lease_expiries_total",
        "surgeflow_run_queue_wait_seconds_bucket",
        "surgeflow_step_duration_seconds_bucket",
        "surgeflow_alerts_firing",
    ):
        assert name in used, f"the dashboard does not show {name}"


def test_prometheus_scrapes_the_gateways_and_loads_the_exported_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["surgeflow-rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway = jobs["surgeflow-gateway"]
    assert gateway["metrics_path"] == "/metrics"
    assert gateway["scrape_interval"] == "5s"
    targets = [t for group in gateway["static_configs"] for t in group["targets"]]
    assert targets
    assert all(re.fullmatch(r"[\w.-]+:\d+", target) for target in targets), targets
    # The shipped rules file is what `surgeflow alerts export` writes for the default rules.
    exported_rules = PROMETHEUS.parent / "surgeflow-rules.yml"
    assert exported_rules.read_text() == prometheus_rules(AlertSettings()), (
        "deploy/prometheus/surgeflow-rules.yml is stale: run"
        " `surgeflow alerts export -o deploy/prometheus/surgeflow-rules.yml`"
    )
    shutil.copy(PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copy(exported_rules, tmp_path / "surgeflow-rules.yml")
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())
    assert datasources["apiVersion"] == 1
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["isDefault"]  # what the dashboard's datasource variable starts on
    assert prometheus["url"].startswith("http")
    assert prometheus["jsonData"]["timeInterval"] == "5s"  # the scrape interval
    providers = yaml.safe_load(DASHBOARDS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert not provider["allowUiUpdates"]
