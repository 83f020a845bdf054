"""Prometheus metrics: the HTTP edge (labels use route templates, never raw paths) and the
settlement races that the optimistic write lost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "cardsvc_http_requests",
    "HTTP requests served",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "cardsvc_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)

SETTLEMENT_RACES_LOST = Counter(
    "cardsvc_settlement_races_lost",
    "Settlement writes that found the person's account changed since their read (retried)",
    registry=REGISTRY,
)
SETTLEMENT_LOCKED = Counter(
    "cardsvc_settlement_locked",
    "Settlements that took the person's lock after losing optimistic races",
    registry=REGISTRY,
)

AUDIT_ANCHORS = Counter(
    "cardsvc_audit_anchors",
    "Audit anchor turns by outcome: written, or why it was delayed (hsm_unavailable, ...)",
    ["outcome"],
    registry=REGISTRY,
)
AUDIT_LAST_ANCHOR_AGE = Gauge(
    "cardsvc_audit_last_anchor_age_seconds",
    "Seconds since the newest audit anchor the HSM verified, as of the last anchoring turn",
    registry=REGISTRY,
    multiprocess_mode="livemin",
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
