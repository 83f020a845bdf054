"""Prometheus metrics: the HTTP edge (labels use route templates, never raw paths), errors by
code, settlements by outcome, the HSM calls, the database pool, the event loop and the
dependencies' health.

With several worker processes (``CARDSVC_WORKERS``) the supervisor gives every worker the same
private ``PROMETHEUS_MULTIPROC_DIR`` before anything is imported (see ``cardsvc/server.py``):
each worker then writes its values to memory-mapped files there, and a scrape of any worker
adds up the files of all of them (``exposition``). Gauges say how they combine: pool use adds
up over the live workers, the event loop's lag is the worst live worker's, a dependency is up
only if every live worker reaches it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
ERRORS = Counter(
    "cardsvc_http_errors",
    "Refused or failed requests (4xx and 5xx) by status and error code",
    ["status", "code"],
    registry=REGISTRY,
)

SETTLEMENTS = Counter(
    "cardsvc_settlements",
    "POST /v1/settlements answers: outcome 'settled' (with an idempotent retry's answer), or"
    " 'refused' with the refusal's error code",
    ["outcome", "code"],
    registry=REGISTRY,
)
GATEWAY_MESSAGES = Counter(
    "cardsvc_gateway_messages",
    "National gateway messages answered, by infno and outcome: 'ok', 'refused' (infcode -1,"
    " with the error code), 'replayed' (the stored answer of a msgid sent again) or"
    " 'unavailable' (not stored: the HIS retries)",
    ["infno", "outcome", "code"],
    registry=REGISTRY,
)
GATEWAY_CERTNO_LOOKUPS = Counter(
    "cardsvc_gateway_certno_lookups",
    "National gateway lookups of a person by identity number (mdtrt_cert_type 02), by"
    " outcome: 'found', 'not_found' (counted against the client's daily limit) or 'refused'"
    " (CERTNO_LOOKUP_LIMIT: the client's misses today reached the limit)",
    ["outcome"],
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

BATCH_SIZE = Histogram(
    "cardsvc_batch_size",
    "Jobs per batch of a group-commit batcher (settlement, admission, ...): one database"
    " round trip and commit each",
    ["batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
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

HSM_CALLS = Counter(
    "cardsvc_hsm_calls",
    "HSM commands by command and result: the HSM's status by name (ok, verification_failed,"
    " key_error, unknown_region, ...) or unavailable (no answer in time, no connection)",
    ["command", "result"],
    registry=REGISTRY,
)
HSM_LATENCY = Histogram(
    "cardsvc_hsm_call_seconds",
    "HSM command latency (answered calls)",
    ["command"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)

DB_POOL_IN_USE = Gauge(
    "cardsvc_db_pool_connections_in_use",
    "Database connections handed out by the pools (all live workers)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "cardsvc_db_pool_connections",
    "Database connections open in the pools (all live workers)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "cardsvc_db_pool_waiting",
    "Requests waiting for a pooled database connection (all live workers)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
EVENT_LOOP_LAG = Gauge(
    "cardsvc_event_loop_lag_seconds",
    "How late the event loop ran a timer at the last check (worst live worker)",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
GC_PAUSE = Histogram(
    "cardsvc_gc_pause_seconds",
    "Python garbage collections by generation and how long each stopped the worker",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    registry=REGISTRY,
)
DEPENDENCY_UP = Gauge(
    "cardsvc_dependency_up",
    "1 if the dependency answered at the last check, else 0 (worst live worker)",
    ["dependency"],
    registry=REGISTRY,
    multiprocess_mode="livemin",
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def observe_error(status: int, code: str) -> None:
    ERRORS.labels(str(status), code).inc()


def observe_gateway_message(infno: str, outcome: str, code: str) -> None:
    GATEWAY_MESSAGES.labels(infno, outcome, code).inc()


def observe_hsm_call(command: str, result: str, seconds: float | None) -> None:
    HSM_CALLS.labels(command, result).inc()
    if seconds is not None:
        HSM_LATENCY.labels(command).observe(seconds)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> bytes:
    """The text exposition: every worker's values when several share a multiprocess folder,
    else this process's."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
