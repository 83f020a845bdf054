"""What ships with the service is the service: the card reader's and the load harness's
libraries are extras, the image installs neither, and the service runs without them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXTRAS = {
    "terminal": {"pyscard"},
    "loadtest": {"hdrhistogram", "tqdm", "matplotlib", "py-spy"},
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


def _help(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *argv, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hsm_stub_help_names_its_offline_commands() -> None:
    text = _help("hsm_stub")
    assert "make-credentials" in text and "provision-region" in text
    assert "--out" in _help("hsm_stub", "make-credentials")
    assert "ADMDVS" in _help("hsm_stub", "provision-region")


def test_clearing_help_explains_its_options() -> None:
    text = " ".join(_help("cardsvc", "clearing").split())
    assert "--date YYYY-MM-DD" in text and "Asia/Shanghai that is over" in text
    assert "--out DIR" in text and "clearing file" in text


def test_a_built_wheel_finds_its_schema_and_ships_no_load_harness(tmp_path: Path) -> None:
    """A non-editable install, run outside the checkout, finds its migrations, policy files
    and API description (package data), the console's files are in the wheel, and the load
    harness is not."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "build", "*.egg-info", "tests", "node_modules", "artifacts"
        ),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("cardsvc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert not [name for name in names if name.startswith("loadtest/")]
    assert "cardsvc/schema/openapi.yaml" in names
    assert "cardsvc/schema/policy/2026.1.json" in names
    # The console's pages, scripts and translations (the chart library is not package data).
    for name in ("index.html", "public.html", "app.js", "styles.css", "i18n-zh.json"):
        assert f"cardsvc/console/static/{name}" in names

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    code = (
        "import cardsvc, sys\n"
        f"assert cardsvc.__file__.startswith({str(target)!r}), cardsvc.__file__\n"
        "from cardsvc import db\n"
        "from cardsvc.ops import apidocs\n"
        "from cardsvc.settlement import params\n"
        "names = [path.name for path in db.migration_files()]\n"
        "assert names and names[0] == '0001_foundation.sql', names\n"
        "params.load_params(params.CURRENT_POLICY_VERSION)\n"
        "assert apidocs.SPEC_PATH.read_bytes().startswith(b'openapi:')\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # The wheel first, then the shared environment's dependencies; not the checkout.
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([str(target), *site])}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not (target / "loadtest").exists()
