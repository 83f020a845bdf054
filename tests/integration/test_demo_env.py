"""The README's "Running pieces by hand" beside the demo: ``python -m cardsvc.devenv.env``
prints the demo's settings (secrets as file paths), and cardsvc's and hsm_stub's commands run
with them from another shell.

The demo runs for real (``--no-wait``: start, load demo data, stop) on the test cluster, free
ports and a state folder of its own, without pcscd; then hsm_stub is started by hand from the
demo's keystore, LMK and credentials, and cardsvc's commands are run by hand with nothing but
``eval "$(python -m cardsvc.devenv.env --var VAR)"``.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardsvc.devenv.pgcluster import LocalCluster

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo(pg_cluster: LocalCluster) -> Iterator[tuple[Path, dict[str, str]]]:
    """A demo run once (state folder, the environment it was started with)."""
    base = Path(tempfile.mkdtemp(prefix="cardsvc-demo-env-"))
    pg_cluster.create_database("cardsvc_demo_env")
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CARDSVC_", "HSM_"))},
        "PYTHONPATH": python_path,
        "DATABASE_URL": pg_cluster.url("cardsvc_demo_env"),
        "CARDSVC_PORT": str(_free_port()),
        "CARDSVC_HSM_PORT": str(_free_port()),
        "CARDSVC_VPCD_PORT": str(_free_port()),
        "CARDSVC_PCSCD": "/nonexistent/pcscd",
        "CARDSVC_AUDIT_ANCHOR_DIR": str(base / "anchors"),
    }
    var = base / "var"
    run = subprocess.run(
        [sys.executable, "-m", "cardsvc.devenv.demo", "--var", str(var), "--no-wait"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (base / "banner.txt").write_text(run.stdout)
    yield var, env
    subprocess.run(["rm", "-rf", str(base)], check=False)


def _shell(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_printed_settings_give_files_not_secrets(demo: tuple[Path, dict[str, str]]) -> None:
    var, env = demo
    out = _shell(f"{shlex.quote(sys.executable)} -m cardsvc.devenv.env --var {var}", env)
    assert out.returncode == 0, out.stderr
    token = (var / "secrets" / "admin_token").read_text().strip()
    data_key = (var / "secrets" / "data_key").read_text().strip()
    assert token not in out.stdout and data_key not in out.stdout
    assert f"export CARDSVC_ADMIN_TOKEN_FILE={var}/secrets/admin_token" in out.stdout


def test_the_demo_has_one_operator_per_role(demo: tuple[Path, dict[str, str]]) -> None:
    """Each role's login is printed with the console's address; each password is in a file
    of mode 0600 and printed nowhere."""
    var, _ = demo
    banner = (var.parent / "banner.txt").read_text()
    assert "/console/" in banner
    for login, role in [
        ("demo.admin", "administrator"),
        ("demo.clerk", "clerk"),
        ("demo.reviewer", "reviewer"),
        ("demo.auditor", "auditor"),
    ]:
        assert f"{login} ({role})" in banner
        password = var / "secrets" / "operators" / login
        assert password.stat().st_mode & 0o777 == 0o600
        assert password.read_text().strip() not in banner
    for token in ("operator_token", "clerk_token"):
        path = var / "secrets" / token
        assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() not in banner


def test_commands_by_hand_run_beside_the_demo(demo: tuple[Path, dict[str, str]]) -> None:
    """Without the exports the command fails as the issue says; with them, hsm_stub starts
    from the demo's keystore and LMK, and the audit, ledger and migrate commands pass."""
    var, env = demo
    py = shlex.quote(sys.executable)
    bare = _shell(f"{py} -m cardsvc prove-ledger", env)
    assert bare.returncode != 0 and "CARDSVC_ADMIN_TOKEN" in bare.stderr
    script = f"""
        set -e
        eval "$({py} -m cardsvc.devenv.env --var {var})"
        {py} -m hsm_stub --lmk-file {var}/secrets/hsm_lmk > {var}/log/hsm-by-hand.log 2>&1 &
        hsm=$!
        trap 'kill $hsm' EXIT
        for i in $(seq 100); do
            grep -q listening {var}/log/hsm-by-hand.log && break; sleep 0.1
        done
        {py} -m cardsvc migrate
        {py} -m cardsvc prove-ledger > /dev/null
        {py} -m cardsvc anchor-audit > /dev/null
        {py} -m cardsvc verify-audit > /dev/null
        echo all-passed
    """
    out = _shell(script, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all-passed" in out.stdout


def test_without_a_demo_it_says_so_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cardsvc.devenv.env", "--var", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and "run scripts/demo.sh" in out.stderr
