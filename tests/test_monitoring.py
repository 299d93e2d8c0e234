"""The shipped monitoring (deploy/monitoring/): alert rules pass `promtool check rules`
and their unit tests (`promtool test rules`), and the Grafana dashboard's queries parse
and use only metrics the node exports (as docs/observability.md lists them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
DOC = ROOT / "docs" / "observability.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs the Debian package prometheus")
        pytest.skip("needs promtool (Debian package prometheus)")
    return found


def run(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def documented() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOC.read_text(), re.MULTILINE))


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:caxton|process)_[a-z0-9_]+)", expr))
    return {
        re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket",)) else n for n in names
    }


def test_alert_rules_are_valid() -> None:
    result = run("check", "rules", "caxton-alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_their_fixtures() -> None:
    result = run("test", "rules", "caxton-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_named_in_the_issue_is_shipped_and_tested() -> None:
    rules = yaml.safe_load((MONITORING / "caxton-alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts >= {
        "CaxtonNodeDown", "CaxtonClusterPartitioned", "CaxtonMinorityReadOnly",
        "CaxtonQueueGrowing", "CaxtonDeadLetters", "CaxtonFailover", "CaxtonBackupTooOld",
        "CaxtonCertificateExpiresSoon",
    }  # fmt: skip
    fixtures = yaml.safe_load((MONITORING / "caxton-alerts.test.yml").read_text())
    fired = {
        case["alertname"]
        for test in fixtures["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == alerts, f"alerts never seen firing in a fixture: {alerts - fired}"
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - documented()
            assert not unknown, f"{rule['alert']}: {unknown} not in docs/observability.md"


def test_dashboard_queries_parse_and_use_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads((MONITORING / "caxton-dashboard.json").read_text())
    exprs = [
        target["expr"].replace("$job", ".+")
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    assert len(exprs) >= 20
    for expr in exprs:
        unknown = metric_names(expr) - documented() - {"process_resident_memory_bytes"}
        assert not unknown, f"{expr}: {unknown} not in docs/observability.md"
    # promtool parses PromQL in rule files: each query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
