"""The metric contract and a small PromQL scanner, for checking rules and dashboards.

The names and labels below are the service contract's metrics: alert rules and dashboards
may select these and Prometheus' own `up`, nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    kind: str  # counter | gauge | histogram
    labels: frozenset[str]


def _metric(kind: str, *labels: str) -> Metric:
    return Metric(kind, frozenset(labels))


CONTRACT: dict[str, Metric] = {
    "vigil_http_requests_total": _metric("counter", "method", "route", "status"),
    "vigil_http_request_duration_seconds": _metric("histogram", "method", "route"),
    "vigil_windows_scored_total": _metric("counter", "series"),
    "vigil_anomalies_flagged_total": _metric("counter", "series"),
    "vigil_adjusted_score": _metric("histogram", "series"),
    "vigil_score_batch_size": _metric("histogram"),
    "vigil_labels_total": _metric("counter", "series", "label"),
    "vigil_feedback_total": _metric("counter", "series", "model_version", "kind"),
    "vigil_points_ingested_total": _metric("counter", "series"),
    "vigil_jobs_total": _metric("counter", "status"),
    "vigil_training_duration_seconds": _metric("histogram"),
    "vigil_job_queue_depth": _metric("gauge"),
    "vigil_active_model_version": _metric("gauge", "series"),
    "vigil_model_age_seconds": _metric("gauge", "series"),
    "vigil_last_point_timestamp_seconds": _metric("gauge", "series"),
    "vigil_detect_windows_total": _metric("counter", "series", "result"),
    "vigil_detect_flagged_windows_total": _metric("counter", "series"),
    "vigil_alarms_opened_total": _metric("counter", "series", "kind"),
    "vigil_alarms_closed_total": _metric("counter", "series", "kind"),
    "vigil_detect_lag_seconds": _metric("histogram"),
    "vigil_open_alarms": _metric("gauge", "series"),
}
BUILTIN: dict[str, Metric] = {"up": _metric("gauge")}
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan", "atan2"}
)
_NAME = r"(?<![\w.$])[a-zA-Z_:][\w:]*"
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(rf"({_NAME})\s*\{{([^}}]*)\}}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_RATE_ARG = re.compile(rf"\b(?:rate|irate|increase)\s*\(\s*({_NAME})")


def resolve(name: str) -> tuple[str, Metric] | None:
    """The contract metric a series name belongs to (histograms: via their suffixes)."""
    known = {**CONTRACT, **BUILTIN}
    if name in known:
        return name, known[name]
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in CONTRACT and CONTRACT[base].kind == "histogram":
            return base, CONTRACT[base]
    return None


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects (not functions, keywords or labels)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = _GROUPING.sub(" ", text)  # by (...), on (...) label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(_NAME, text):
        token = match.group(0)
        if token.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(token)
    return names


def problems(expr: str) -> list[str]:
    """What in an expression breaks the contract (empty when it is fine)."""
    found: list[str] = []
    names = metric_names(expr)
    if not names:
        found.append("selects no metric")
    for name in sorted(names):
        if resolve(name) is None:
            found.append(f"{name} is not a contract metric")
    text = _STRING.sub(lambda m: m.group(0).replace("{", "(").replace("}", ")"), expr)
    for match in _SELECTOR.finditer(text):
        resolved = resolve(match.group(1))
        if resolved is None:
            continue
        base, metric = resolved
        allowed = metric.labels | TARGET_LABELS
        if match.group(1).endswith("_bucket"):
            allowed |= {"le"}
        for label in _MATCHER.findall(match.group(2)):
            if label not in allowed:
                found.append(f"{base} has no label {label!r}")
    every_label = frozenset().union(*(m.labels for m in CONTRACT.values()))
    for _, labels in _GROUPING.findall(text):
        for label in (part.strip() for part in labels.split(",") if part.strip()):
            if label not in every_label | TARGET_LABELS | {"le"}:
                found.append(f"grouping by unknown label {label!r}")
    for name in _RATE_ARG.findall(text):
        resolved = resolve(name)
        if resolved is not None and resolved[1].kind == "gauge":
            found.append(f"rate/increase of the gauge {name}")
    if "histogram_quantile" in text and "_bucket" not in text:
        found.append("histogram_quantile without a _bucket series")
    return found
