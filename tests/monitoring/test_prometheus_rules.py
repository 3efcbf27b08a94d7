"""docs/prometheus/: the fleet's scrape config and alerting rules.

promtool is not installable from the package registries, so the rules are checked the way
it would: YAML of the rule-file format, every expression parsed by a PromQL parser (the
Rust port of Prometheus' own, ``promql-parser``), durations and labels well formed, and
every label an annotation names kept by its expression. Then against a real daemon: every
metric the rules select, with every label and label value they match on, is in its
``/metrics``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import polars as pl
import promql_parser as promql
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SAMPLES, copy_state, drop, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "prometheus"
RULES = DOCS / "appliance.rules.yml"
SCRAPE = DOCS / "prometheus.yml"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
ANNOTATION_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
# Labels Prometheus gives every series of a target (the job, the target's address) and the
# ones the example targets file adds.
TARGET_LABELS = {"job", "instance", "box", "site"}
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
ANY = "__any_metric_label__"  # a selector keeps whatever labels its metric has


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def selectors(expr: Any) -> list[Any]:
    """Every vector selector in a parsed expression (a matrix selector's too)."""
    name = type(expr).__name__
    if name == "VectorSelector":
        return [expr]
    if name == "MatrixSelector":
        return [expr.vector_selector]
    found: list[Any] = []
    for child in ("lhs", "rhs", "expr", "param"):
        sub = getattr(expr, child, None)
        if sub is not None and not isinstance(sub, (str, int, float)):
            found += selectors(sub)
    for arg in getattr(expr, "args", None) or []:
        found += selectors(arg)
    return found


def scalar(expr: Any) -> bool:
    name = type(expr).__name__
    if name in ("ParenExpr", "UnaryExpr"):
        return scalar(expr.expr)
    if name == "BinaryExpr":
        return scalar(expr.lhs) and scalar(expr.rhs)
    return name == "NumberLiteral" or (name == "Call" and expr.func.name in ("time", "scalar"))


def kept_labels(expr: Any) -> set[str]:
    """The labels an expression's result carries (a superset where PromQL keeps whatever the
    selected metric has: ``__any_metric_label__``)."""
    name = type(expr).__name__
    if name in ("VectorSelector", "MatrixSelector"):
        return TARGET_LABELS | {ANY}
    if name == "AggregateExpr":
        inner = kept_labels(expr.expr)
        if expr.modifier is None:
            return set()
        labels = set(expr.modifier.labels)
        return labels if str(expr.modifier.type).endswith("By") else inner - labels
    if name == "BinaryExpr":   # a vector's labels (the left one's, of two vectors)
        return kept_labels(expr.rhs if scalar(expr.lhs) else expr.lhs)
    if name == "Call":
        if expr.func.name == "time":
            return set()
        vectors = [a for a in expr.args if type(a).__name__ not in ("NumberLiteral",
                                                                    "StringLiteral")]
        labels = kept_labels(vectors[0]) if vectors else set()
        return labels - {"le"} if expr.func.name == "histogram_quantile" else labels
    if name in ("ParenExpr", "UnaryExpr"):
        return kept_labels(expr.expr)
    return set()


def test_the_scrape_config_reads_the_rules_and_the_boxes_files():
    config = yaml.safe_load(SCRAPE.read_text())
    assert [(DOCS / f).is_file() for f in config["rule_files"]] == [True]
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    assert jobs == ["appliance"]
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"].endswith("read_token")
    assert DURATION.match(job["scrape_interval"]) and DURATION.match(job["scrape_timeout"])
    pattern = job["file_sd_configs"][0]["files"][0]
    assert pattern.endswith("boxes/*.yml")
    groups = [g for f in (DOCS / "boxes").glob("*.yml") for g in yaml.safe_load(f.read_text())]
    names = [g["labels"]["box"] for g in groups]
    assert groups and len(names) == len(set(names))
    for g in groups:
        assert set(g) == {"targets", "labels"}
        assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in g["targets"]), g
        assert set(g["labels"]) <= TARGET_LABELS


def test_every_rule_parses_and_names_only_labels_its_expression_keeps():
    doc = yaml.safe_load(RULES.read_text())
    assert len({g["name"] for g in doc["groups"]}) == len(doc["groups"])
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"[A-Z][A-Za-z]+", n)
                                                  for n in names)
    covered = " ".join(names)
    for topic in ("Down", "Drift", "Errors", "Latency", "Disk"):   # what the issue asks
        assert topic in covered, topic
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations",
                             "keep_firing_for"}, rule["alert"]
        expr = promql.parse(rule["expr"])                          # raises on bad PromQL
        assert type(expr).__name__ == "BinaryExpr", f"{rule['alert']}: no threshold"
        assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        keeps = kept_labels(expr)
        metric_labels = {m.name for s in selectors(expr) for m in s.matchers.matchers}
        for text in rule["annotations"].values():
            for label in ANNOTATION_LABEL.findall(text):
                assert label in keeps or (ANY in keeps and (
                    label in TARGET_LABELS or label in metric_labels or label == "pipeline")), \
                    f"{rule['alert']}: the annotation names `{label}`, which its " \
                    f"expression drops (it keeps {sorted(keeps)})"


def test_the_label_check_catches_an_aggregation_that_drops_the_label():
    expr = promql.parse("sum by (instance) (rate(appliance_requests_total[5m])) > 1")
    assert kept_labels(expr) == {"instance"}
    expr = promql.parse("sum without (pipeline) (appliance_drift_detected) > 0")
    assert "pipeline" not in kept_labels(expr) and "box" in kept_labels(expr)


@pytest.fixture
def exported(trained_template, state_root, start_daemon) -> dict[str, dict[str, set[str]]]:
    """What a real daemon exports after a prediction, a refused request, a drift check and a
    refused file: {sample name: {label: values}}."""
    copy_state(trained_template, state_root.parent / "prom")
    root = state_root.parent / "prom"
    daemon = start_daemon(root)
    daemon.wait_ready_model("machines", 1)
    row = pl.read_csv(SAMPLES / "machines_01.csv", n_rows=1).drop("failed_within_24h")
    assert daemon.post("/v1/pipelines/machines/predict", json={"rows": row.to_dicts()}
                       ).status_code == 200
    assert daemon.post("/v1/pipelines/machines/predict", json={"rows": [{"x": "?"}]}
                       ).status_code == 422
    drop(root, "machines", SAMPLES / "machines_02.csv")
    wait_for(lambda: daemon.get("/v1/pipelines/machines/drift").json()["latest"],
             timeout=90, what="the drift check of the dropped file")

    def sampled() -> str | None:
        text = daemon.get("/metrics").text
        return text if "appliance_state_disk_size_bytes" in text else None

    text = wait_for(sampled, timeout=30, what="a resource sample")
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = out.setdefault(s.name, {})
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return out


def test_every_metric_and_label_the_rules_use_is_exported_by_a_running_daemon(exported):
    job = yaml.safe_load(SCRAPE.read_text())["scrape_configs"][0]["job_name"]
    for rule in rules():
        for s in selectors(promql.parse(rule["expr"])):
            where = f"{rule['alert']}: {s.name}"
            if s.name in PROMETHEUS_OWN:
                assert {(m.name, m.value) for m in s.matchers.matchers} <= {("job", job)}, where
                continue
            assert s.name in exported, f"{where} is not in the daemon's /metrics"
            for m in s.matchers.matchers:
                assert m.name in exported[s.name], f"{where} has no label `{m.name}`"
                if str(m.op).endswith("Equal") and not str(m.op).endswith("NotEqual"):
                    assert m.value in exported[s.name][m.name], \
                        f"{where}: no series with {m.name}=\"{m.value}\" " \
                        f"(exported: {sorted(exported[s.name][m.name])})"
            if "pipeline" in rule["annotations"]["summary"]:
                assert "pipeline" in exported[s.name], where
    # increase() can't see a series' first sample: a counter born at 1 would never alert.
    assert exported["appliance_jobs_total"]["status"] >= {"succeeded", "failed", "cancelled"}
    assert exported["appliance_ingestions_total"]["status"] >= {"accepted", "rejected",
                                                                "duplicate"}
