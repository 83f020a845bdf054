"""What ships with the service is the service: the card reader's and the load harness's
libraries are extras, the image installs neither, and the service runs without them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXTRAS = {
    "terminal": {"pyscard"},
    "loadtest": {"hdrhistogram", "tqdm", "matplotlib"},
}
# The import names of the extras' distributions.
BLOCKED = ("smartcard", "hdrh", "tqdm", "matplotlib")
BLOCK = f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def _project() -> dict[str, object]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def test_the_extras_are_not_dependencies_of_the_service() -> None:
    project = _project()
    required = {_name(req) for req in project["dependencies"]}  # type: ignore[attr-defined]
    assert required.isdisjoint(set().union(*EXTRAS.values()))
    optional: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    for extra, names in EXTRAS.items():
        assert {_name(req) for req in optional[extra]} == names
        assert all(re.search(r">=\s*\d", req) for req in optional[extra]), optional[extra]


def test_the_image_installs_no_extra() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert installs and not any("[" in line for line in installs), installs
    # pyscard's build needs (swig, the PC/SC headers, a compiler) are not in the image either.
    assert not re.search(r"\b(swig|libpcsclite-dev|gcc)\b", dockerfile)


def test_setup_installs_what_tests_and_demo_need() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-e '.[test,terminal,loadtest]'" in setup


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("import cardsvc.app, cardsvc.__main__, hsm_stub.__main__", id="imports"),
        pytest.param(
            "import runpy\nsys.argv = ['cardsvc', '--help']\n"
            "runpy.run_module('cardsvc', run_name='__main__')",
            id="cardsvc --help",
        ),
        pytest.param(
            "import runpy\nsys.argv = ['hsm_stub', '--help']\n"
            "runpy.run_module('hsm_stub', run_name='__main__')",
            id="hsm_stub --help",
        ),
    ],
)
def test_the_service_runs_without_the_extras(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
