"""monitoring/: the Prometheus alert rules (promtool check + promtool's unit tests), the
example Prometheus config, and the Grafana dashboard. Every metric name an expression uses
must be one the balancer exports (onion.metric_names) or Prometheus's own `up`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from onion import metric_names as mn

REPO = Path(__file__).resolve().parent.parent
MON = REPO / "monitoring"
RULES = MON / "onionstack.rules.yml"
DASHBOARD = MON / "grafana-dashboard.json"
# Names that are not the balancer's own: Prometheus's scrape health, prometheus_client's
# process collector.
OTHER_NAMES = {"up", "process_resident_memory_bytes", "process_cpu_seconds_total"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "offset", "bool", "inf", "nan"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool missing: bash scripts/setup installs Debian's prometheus"
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (in {...}, by (...), on (...)) or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)              # strings
    text = re.sub(r"\{[^}]*\}", "", text)                          # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                         # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word) or (m.start() > 0 and text[m.start() - 1].isdigit()):
            continue  # a duration or the exponent of a number
        names.add(word)
    return names


def unknown_names(expr: str) -> set[str]:
    known = {m.name for m in mn.ALL} | OTHER_NAMES
    return metric_names(expr) - known


def rule_exprs() -> dict[str, str]:
    data = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in data["groups"] for r in g["rules"]}


def dashboard_exprs(data: dict) -> list[str]:
    out = []
    for panel in data["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
    for var in data.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict) and "label_values(" in q.get("query", ""):
            out.append(re.sub(r"label_values\((\w+).*", r"\1", q["query"]))
    return out


def test_rules_pass_promtool_check():
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


def test_rules_pass_their_unit_tests_and_every_alert_is_tested():
    proc = promtool("test", "rules", str(MON / "tests" / "rules_test.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = yaml.safe_load((MON / "tests" / "rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(rule_exprs()), "every alert has a test in which it fires"
    wanted = {"OnionFrontendUnreachable", "OnionNoConfirmedUpload", "OnionHSDirsNotServing",
              "OnionInstancesDown", "OnionWorkerTorDown", "OnionRejectedDescriptors", "OnionBalancerDown"}
    assert set(rule_exprs()) == wanted


def test_the_unit_tests_catch_a_broken_rule(tmp_path):
    """A rule that never fires (threshold flipped) fails promtool's unit tests."""
    broken = RULES.read_text().replace("expr: onion_service_reachable == 0", "expr: onion_service_reachable == 2")
    assert broken != RULES.read_text()
    (tmp_path / "onionstack.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    shutil.copy(MON / "tests" / "rules_test.yml", tmp_path / "tests" / "rules_test.yml")
    proc = subprocess.run(["promtool", "test", "rules", str(tmp_path / "tests" / "rules_test.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "OnionFrontendUnreachable" in proc.stdout + proc.stderr


def test_example_prometheus_config_is_valid():
    proc = promtool("check", "config", str(MON / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("alert", sorted(rule_exprs()))
def test_rules_use_only_metrics_that_exist(alert):
    expr = rule_exprs()[alert]
    assert metric_names(expr), expr
    assert unknown_names(expr) == set()


def test_dashboard_is_valid_json_using_only_metrics_that_exist():
    data = json.loads(DASHBOARD.read_text())
    assert data["title"] and data["panels"] and data["uid"]
    exprs = dashboard_exprs(data)
    assert len(exprs) >= len(data["panels"])
    used = set()
    for expr in exprs:
        assert unknown_names(expr) == set(), expr
        used |= metric_names(expr)
    # the dashboard shows every metric the balancer exports
    assert {m.name for m in mn.ALL} <= used
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))


def test_the_name_check_catches_a_misspelled_metric():
    assert unknown_names('sum by (name) (onion_balancer_instance_upp{name=~"$site"})') == {"onion_balancer_instance_upp"}
    assert unknown_names('increase(onion_balancer_rejected_descriptors_total[10m]) > 0 and on (address) up') == set()
    assert metric_names('x{a="by(b)"} * 1e3 + rate(y[5m] offset 1h)') == {"x", "y"}
