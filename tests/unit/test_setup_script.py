"""scripts/setup.sh installs Debian's python3-venv where `python3 -m venv` cannot work,
Node.js and npm where missing, the console's JavaScript dependencies when the lockfile
changed, and nothing when the machine has everything (run on a copy of the checkout,
apt-get and npm faked)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _machine(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """A copy of the checkout's set-up, and a PATH where every Debian package is installed
    and apt-get only writes down what it was asked (and fails an install, which ends the
    script there: nothing is downloaded)."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", checkout / "scripts")
    for name in ("pyproject.toml", "package.json", "package-lock.json"):
        shutil.copy(ROOT / name, checkout)
    fake = tmp_path / "bin"
    fake.mkdir()
    asked = tmp_path / "apt-get.log"
    scripts = {
        "dpkg-query": "#!/bin/sh\necho 'install ok installed'\n",
        "apt-get": f'#!/bin/sh\necho "$*" >> {asked}\n[ "$1" != install ]\n',
        "sudo": '#!/bin/sh\nexec "$@"\n',
        # npm only writes down what it was asked, and makes node_modules as `npm ci` would.
        "npm": f'#!/bin/sh\necho "$*" >> {tmp_path / "npm.log"}\nmkdir -p node_modules\n',
    }
    for name, text in scripts.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    return checkout, env, asked


def test_python3_venv_is_installed_where_ensurepip_is_missing(tmp_path: Path) -> None:
    checkout, env, asked = _machine(tmp_path)
    stripped = tmp_path / "stripped"  # Debian's python3 without python3-venv: no ensurepip
    stripped.mkdir()
    (stripped / "ensurepip.py").write_text("raise ImportError('ensurepip is not available')\n")
    env["PYTHONPATH"] = str(stripped)
    subprocess.run(
        ["bash", str(checkout / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # the fake apt-get refuses to install
    )
    said = asked.read_text() if asked.exists() else ""
    installs = [line for line in said.splitlines() if line.startswith("install")]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert installs and installs[0].split()[-1] in ("python3-venv", f"python{version}-venv")


def test_nothing_is_installed_when_nothing_lacks(tmp_path: Path) -> None:
    checkout, env, asked = _machine(tmp_path)
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    venv_python.chmod(0o755)
    digest = subprocess.run(
        ["sha256sum", str(checkout / "pyproject.toml")], capture_output=True, text=True, check=True
    ).stdout[:16]
    (checkout / ".venv" / f".installed-{digest}").touch()
    _fresh_node_modules(checkout)
    subprocess.run(
        ["bash", str(checkout / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert not asked.exists()
    assert not (tmp_path / "npm.log").exists()


def _fresh_node_modules(checkout: Path) -> None:
    digest = subprocess.run(
        ["sha256sum", str(checkout / "package-lock.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout[:16]
    (checkout / "node_modules").mkdir(exist_ok=True)
    (checkout / "node_modules" / f".installed-{digest}").touch()


def _ready_venv(checkout: Path) -> None:
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    venv_python.chmod(0o755)
    digest = subprocess.run(
        ["sha256sum", str(checkout / "pyproject.toml")], capture_output=True, text=True, check=True
    ).stdout[:16]
    (checkout / ".venv" / f".installed-{digest}").touch()


def test_the_console_dependencies_are_installed_once_per_lockfile(tmp_path: Path) -> None:
    checkout, env, asked = _machine(tmp_path)
    _ready_venv(checkout)
    run = ["bash", str(checkout / "scripts" / "setup.sh")]
    subprocess.run(run, env=env, capture_output=True, timeout=120, check=True)
    npm_log = tmp_path / "npm.log"
    assert npm_log.read_text().split()[0] == "ci"  # exactly the lockfile, nothing resolved anew
    subprocess.run(run, env=env, capture_output=True, timeout=120, check=True)
    assert len(npm_log.read_text().splitlines()) == 1  # fresh: not again
    lock = checkout / "package-lock.json"
    lock.write_text(lock.read_text().replace('"requires": true', '"requires": true '))
    subprocess.run(run, env=env, capture_output=True, timeout=120, check=True)
    assert len(npm_log.read_text().splitlines()) == 2  # the lockfile changed: again
    assert not asked.exists()


def test_nodejs_and_npm_are_installed_where_missing(tmp_path: Path) -> None:
    checkout, env, asked = _machine(tmp_path)
    _ready_venv(checkout)
    # A PATH with the fakes and the few tools the script uses, but no node or npm.
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("dirname", "sha256sum", "cut", "grep", "id", "rm", "touch", "mkdir", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (bare / tool).symlink_to(found)
    for fake in (tmp_path / "bin").iterdir():
        if fake.name != "npm":
            (bare / fake.name).symlink_to(fake)
    env["PATH"] = str(bare)
    subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(checkout / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,  # the fake apt-get refuses to install
    )
    installs = [line for line in asked.read_text().splitlines() if line.startswith("install")]
    assert installs and {"nodejs", "npm"} <= set(installs[0].split())
