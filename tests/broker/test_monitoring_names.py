"""The Grafana dashboard and the Prometheus alert rules in deploy/ use only metric names the
code exports: the broker's from a real app's /metrics, the agents' from their exporter.

The per-service request metrics (`broker_service_*`) come from the broker's services module
(long-running inference services). Until some module of the broker names them they are
allowed to be missing; once the code mentions them, they must be on /metrics like the rest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from agents.exporter import DcgmExporter
from broker.adapters.fake import FakeExecutor
from broker.app import create_app
from broker.db import migrate
from broker.services.bootstrap import ensure_admin_token
from broker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "compute-broker.json"
RULES = ROOT / "deploy" / "prometheus" / "compute-broker-alerts.yml"
SERVICE_METRICS = {"broker_service_requests_total", "broker_service_request_duration_seconds"}

_WORDS = {  # PromQL functions, aggregations, keywords and Grafana variables: not metric names
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "bool", "offset", "rate", "irate", "increase", "delta", "time",
    "histogram_quantile", "absent", "label_values", "clamp_min", "clamp_max", "abs", "vector", "scalar",
    "avg_over_time", "max_over_time", "min_over_time", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, grouping labels, strings, ranges,
    numbers and Grafana variables removed first)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "", e)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", "", e)
    # label_values(metric, label): the second argument is a label
    e = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", e)
    return {w for w in re.findall(r"[A-Za-z_:][\w:]*", e) if w.lower() not in _WORDS}


def dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            out.append(q["query"])
    return out


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def exported_names(text: str) -> set[str]:
    """Sample names a scrape can carry, from its # TYPE lines (histograms: _bucket/_sum/_count)."""
    names = set()
    for name, typ in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if typ == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif typ == "summary":
            names |= {name + "_sum", name + "_count"}
    return names


@pytest.fixture(scope="module")
def broker_metrics(tmp_path_factory) -> str:
    data = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'b.db'}")
    migrate(settings)
    app = create_app(settings, executor=FakeExecutor(), start_background=False)
    token = Path(ensure_admin_token(settings, app.state.services.engine)).read_text().strip()
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.get("/metrics")
        assert r.status_code == 200
        return r.text


def agent_names() -> set[str]:
    return {name for name, _typ, _doc, _rows in DcgmExporter("node").families()}


def mentioned_in_code(name: str) -> bool:
    return any(name in p.read_text() for p in (ROOT / "broker").rglob("*.py"))


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_is_exported(source, broker_metrics):
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    assert exprs, "no queries found"
    used = set().union(*(metric_names(e) for e in exprs))
    known = exported_names(broker_metrics) | agent_names()
    missing = used - known
    pending = {n for n in missing if any(n.startswith(s) for s in SERVICE_METRICS) and not mentioned_in_code(
        next(s for s in SERVICE_METRICS if n.startswith(s)))}
    assert missing - pending == set(), f"{source} uses metrics nothing exports: {sorted(missing - pending)}"


def test_the_dashboard_covers_what_operations_asked_for():
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for name in ("broker_pool_gpus", "broker_pool_gpus_allocated", "broker_pool_gpus_used",
                 "broker_jobs_pending_by_reason", "broker_scheduler_cycle_seconds_bucket",
                 "broker_admissions_total", "broker_preemptions_total", "broker_service_requests_total",
                 "DCGM_FI_DEV_GPU_UTIL"):
        assert name in used, name
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"BrokerNodeUnhealthy", "BrokerSchedulerCycleStalled", "BrokerAuditOutboxLag",
            "BrokerIdleAllocations"} <= alerts


NAME_CASES = [  # name, expression, metric names
    ("grouping labels are not names", "sum by (pool, le) (rate(a_total[5m]))", {"a_total"}),
    ("matchers and variables are not names", 'max(b{pool=~"$pool", x="y"}) / 3.6e6', {"b"}),
    ("binary operators with both sides", "time() - max(c) > 60 and d == 1", {"c", "d"}),
    ("label_values names its metric", "label_values(e, pool)", {"e"}),
]


@pytest.mark.parametrize("expr,names", [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES])
def test_metric_name_extraction(expr, names):
    assert metric_names(expr) == names


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")


@needs_promtool
def test_alert_rules_are_valid_and_their_unit_tests_pass():
    """Syntax and semantics: `promtool check rules`, then the rules' own unit tests (alerts
    fire when they should and not before: deploy/prometheus/compute-broker-alerts.test.yml)."""
    for args in (["check", "rules", RULES.name], ["test", "rules", "compute-broker-alerts.test.yml"]):
        r = subprocess.run([PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every dashboard query parses (Grafana's variables replaced by what Grafana would put there)."""
    rules = [{"record": f"dashboard:query{i}", "expr": re.sub(r"\$__rate_interval", "5m", e).replace("$pool", ".*")}
             for i, e in enumerate(dashboard_exprs()) if not e.startswith("label_values(")]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
