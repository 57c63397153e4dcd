"""Prometheus configuration, alert rules and the Grafana dashboard.

promtool checks and unit-tests the rules when it is on PATH (Debian: `apt-get install
prometheus`); the structural tests run everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.promql import CONTRACT, metric_names, problems

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "docker" / "prometheus"
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vigil.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (Debian: apt-get install prometheus)"
)

# Grafana's variables, replaced by what Grafana would send so that promtool can parse.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in dashboard_panels() for t in panel["targets"]]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# -- alert rules -------------------------------------------------------------------------


def test_every_alert_rule_is_complete() -> None:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names))
    alerts = [rule["alert"] for rule in alert_rules()]
    assert len(alerts) == len(set(alerts)), "duplicate alert names"
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["alert"].startswith("Vigil"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_alert_expressions_use_only_contract_metrics() -> None:
    for rule in alert_rules():
        assert problems(rule["expr"]) == [], rule["alert"]


def test_the_issue_alerts_exist_on_the_right_metrics() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "vigil_anomalies_flagged_total" in metric_names(rules["VigilAnomalyRateSpike"])
    assert "by (series)" in rules["VigilAnomalyRateSpike"]
    assert metric_names(rules["VigilSeriesNoData"]) == {"vigil_last_point_timestamp_seconds"}
    assert 'status="failed"' in rules["VigilTrainingJobsFailed"]
    assert metric_names(rules["VigilJobQueueBacklog"]) == {"vigil_job_queue_depth"}
    latency = rules["VigilScoreLatencyHigh"]
    assert 'route="/v1/score"' in latency and "histogram_quantile(0.99" in latency


def test_every_alert_has_a_unit_test() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]  # a case that expects the alert to fire
    }
    assert tested == {rule["alert"] for rule in alert_rules()}


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Prometheus configuration ------------------------------------------------------------


def test_prometheus_scrapes_the_api_and_every_worker() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["vigil-api"]["static_configs"] == [{"targets": ["api:8000"]}]
    # Scaled workers: DNS discovery of the compose service, one target per replica.
    worker = jobs["vigil-worker"]
    assert "static_configs" not in worker
    (discovery,) = worker["dns_sd_configs"]
    assert discovery["type"] == "A"
    assert discovery["names"] == ["worker"]
    assert discovery["port"] == 9101


@needs_promtool
def test_promtool_checks_the_config(tmp_path: Path) -> None:
    result = promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Grafana -------------------------------------------------------------------------------


def test_datasource_and_dashboard_provisioning() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "vigil.yml")["providers"]
    assert provider["type"] == "file"
    compose = load_yaml(ROOT / "docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "vigil-overview"
    panels = dashboard_panels()
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "series"
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
    assert match is not None
    metric, label = match.groups()
    assert label in CONTRACT[metric].labels


def test_dashboard_queries_use_only_contract_metrics() -> None:
    for expr in dashboard_exprs():
        assert problems(expr) == [], expr


def test_dashboard_covers_what_the_issue_asks() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert {
        "vigil_adjusted_score_bucket",  # scores per series
        "vigil_anomalies_flagged_total",  # anomaly rate per series
        "vigil_labels_total",  # feedback labels by class
        "vigil_feedback_total",
        "vigil_http_request_duration_seconds_bucket",  # latency p50/p99
        "vigil_jobs_total",  # training jobs by status
        "vigil_job_queue_depth",
        "vigil_active_model_version",
        "vigil_model_age_seconds",
    } <= used
    exprs = "\n".join(dashboard_exprs())
    assert "histogram_quantile(0.99" in exprs and "histogram_quantile(0.5" in exprs
    assert "sum by (label)" in exprs and "sum by (status)" in exprs


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = []
    for number, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append(
            {"record": f"vigil:dashboard_query_{number}", "expr": expr.replace('"$series"', '".*"')}
        )
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the checker itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ("vigil_windows_scored{series='a'}", "vigil_windows_scored is not a contract metric"),
        ("sum(vigil_labels_total{kind='x'})", "vigil_labels_total has no label 'kind'"),
        ("sum by (pump) (vigil_jobs_total)", "grouping by unknown label 'pump'"),
        ("rate(vigil_job_queue_depth[5m])", "rate/increase of the gauge vigil_job_queue_depth"),
        ("histogram_quantile(0.9, vigil_adjusted_score)", "histogram_quantile without a _bucket"),
        ("vigil_job_queue_depth_bucket", "vigil_job_queue_depth_bucket is not a contract metric"),
        ("time() - 5", "selects no metric"),
    ],
)
def test_checker_catches_contract_mistakes(expr: str, complaint: str) -> None:
    assert any(found.startswith(complaint) for found in problems(expr)), problems(expr)


def test_checker_reads_names_past_strings_ranges_and_grouping() -> None:
    expr = (
        'sum by (route, le) (rate(vigil_http_request_duration_seconds_bucket{route="/v1/series'
        '/{series_id}/points"}[5m] offset 1h)) / on (route) group_left '
        "sum by (route) (rate(vigil_http_requests_total[$__rate_interval])) > bool 1e3"
    )
    assert metric_names(expr) == {
        "vigil_http_request_duration_seconds_bucket",
        "vigil_http_requests_total",
    }
    assert problems(expr) == []
