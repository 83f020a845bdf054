"""docs/architecture.md, docs/operations.md and docs/console.md name real things: every
source file, every ``python -m cardsvc`` and ``python -m hsm_stub`` command, every
``CARDSVC_*`` setting and every ``cardsvc_*`` metric they mention exists in the code, so a
rename that forgets the docs fails here; and the operations guide describes every metric the
service registers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "docs" / "architecture.md",
    ROOT / "docs" / "operations.md",
    ROOT / "README.md",
    ROOT / "docs" / "console.md",
]
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_SOURCE_PATH = re.compile(
    r"^[A-Za-z0-9_./*<>-]+\.(?:py|sql|yaml|json|sh|md)$"
    r"|^(?:cardsvc|hsm_stub|schema|loadtest|scripts|tests|docs)/[a-z_/]*$"
)
_COMMAND = re.compile(r"python -m cardsvc ([a-z][a-z-]+)")
_SETTING = re.compile(r"CARDSVC_[A-Z0-9_]*[A-Z0-9]")


def _code_spans(doc: Path) -> list[str]:
    return _CODE_SPAN.findall(doc.read_text())


def _exists(name: str) -> bool:
    """A path as the docs write it: from the repository root, or under cardsvc/ (the
    architecture page names modules by area: ``settlement/policy.py``)."""
    pattern = re.sub(r"<[^>]+>", "*", name)
    return any(any(base.glob(pattern)) for base in (ROOT, ROOT / "cardsvc"))


@pytest.mark.parametrize("doc", DOCS[:2], ids=lambda d: d.name)
def test_every_source_path_named_exists(doc: Path) -> None:
    named = {
        token
        for span in _code_spans(doc)
        for token in span.split()
        if _SOURCE_PATH.match(token) and "/" in token and not token.startswith("/")
    }
    assert named, "the page names no source file"
    missing = sorted(name for name in named if not _exists(name))
    assert missing == [], f"{doc.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_cardsvc_command_named_exists(doc: Path) -> None:
    main = (ROOT / "cardsvc" / "__main__.py").read_text()
    commands = set(re.findall(r'add_parser\(\s*"([a-z-]+)"', main))
    named = set(_COMMAND.findall(doc.read_text()))
    assert named - commands == set(), f"{doc.name}: no such python -m cardsvc command"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_setting_named_is_read_by_the_code(doc: Path) -> None:
    readers = [*(ROOT / "cardsvc").rglob("*.py"), ROOT / "docker-compose.yml"]
    source = "\n".join(p.read_text() for p in readers)
    compose = (ROOT / "docker-compose.yml").read_text()  # reads ${NAME} or ${NAME:-default}
    unknown = set()
    for name in set(_SETTING.findall(doc.read_text())):
        base = name.removesuffix("_FILE")
        # Groups are written as a prefix (`CARDSVC_SIGN_IN_*`, `CARDSVC_DB_POOL_MIN`/`MAX`).
        if f'"{base}' not in source and f'"{base}_' not in source and f"${{{base}" not in compose:
            unknown.add(name)
    assert unknown == set(), f"{doc.name} names settings the code does not read: {unknown}"


# Metrics: the names as a scrape shows them. prometheus-client adds `_total` to a counter's
# name and exposes a histogram as `_bucket`, `_sum` and `_count`; a doc may write either form.
_METRIC = re.compile(r"\bcardsvc_[a-z0-9_]*[a-z0-9]\b")
_REGISTERED = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"(cardsvc_[a-z0-9_]+)\"", re.MULTILINE)
_SUFFIXES = {
    "Counter": ("", "_total"),
    "Gauge": ("",),
    "Histogram": ("", "_bucket", "_sum", "_count"),
}


def _registered_metrics() -> dict[str, str]:
    """Every name in cardsvc/ops/metrics.py as registered, with its kind."""
    source = (ROOT / "cardsvc" / "ops" / "metrics.py").read_text()
    return {name: kind for kind, name in _REGISTERED.findall(source)}


def _exposed_names() -> set[str]:
    return {
        name + suffix for name, kind in _registered_metrics().items() for suffix in _SUFFIXES[kind]
    }


# Names that look like metrics and are something else (the restore example's database,
# the operators' session cookie).
_NOT_METRICS = {"cardsvc_restored", "cardsvc_session"}


def _metrics_named(text: str) -> set[str]:
    return set(_METRIC.findall(text)) - _NOT_METRICS


def test_the_metrics_module_registers_metrics() -> None:
    assert len(_registered_metrics()) >= 10


@pytest.mark.parametrize(
    "doc",
    [*DOCS, ROOT / "docs" / "security.md", ROOT / "docs" / "design-notes.md"],
    ids=lambda d: d.name,
)
def test_every_metric_named_is_registered(doc: Path) -> None:
    unknown = _metrics_named(doc.read_text()) - _exposed_names()
    assert unknown == set(), (
        f"{doc.name} names metrics cardsvc/ops/metrics.py does not register: {unknown}"
    )


def test_every_registered_metric_is_in_the_operations_guide() -> None:
    named = _metrics_named((ROOT / "docs" / "operations.md").read_text())
    missing = sorted(
        name
        for name, kind in _registered_metrics().items()
        if not any(name + suffix in named for suffix in _SUFFIXES[kind])
    )
    assert missing == [], f"docs/operations.md does not describe these metrics: {missing}"


_HSM_STUB_COMMAND = re.compile(r"python -m hsm_stub ([a-z][a-z-]+)")


@pytest.mark.parametrize(
    "doc",
    [*DOCS, ROOT / "docs" / "security.md", ROOT / "docs" / "design-notes.md"],
    ids=lambda d: d.name,
)
def test_every_hsm_stub_command_named_exists(doc: Path) -> None:
    main = (ROOT / "hsm_stub" / "__main__.py").read_text()
    commands = set(re.findall(r'^\s+"([a-z][a-z-]+)": [a-z_]+_main,$', main, re.MULTILINE))
    assert commands, "hsm_stub/__main__.py names no subcommand"
    named = set(_HSM_STUB_COMMAND.findall(doc.read_text()))
    assert named - commands == set(), f"{doc.name}: no such python -m hsm_stub command"
