"""docker-compose.yml and the Dockerfile, checked by reading them (Docker does not run here)
and by running what they run outside Docker: the one-shot credentials script, the health
checks."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsmlink.credentials import client_context, server_context

ROOT = Path(__file__).resolve().parents[2]
LONG_RUNNING = ("postgres", "hsm_stub", "cardsvc")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target → (volume, read-only)."""
    mounts = {}
    for spec in service.get("volumes", []):
        volume, target, *mode = spec.split(":")
        mounts[target] = (volume, mode == ["ro"])
    return mounts


def _dockerfile_dirs() -> dict[str, str]:
    """Folders the Dockerfile creates with ``install -d -o USER``: path → owner."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    owners = {}
    for owner, paths in re.findall(r"install -d -o (\S+) -g \S+ -m 0700 ((?:/\S+ ?)+)", text):
        for path in paths.split():
            owners[path] = owner
    return owners


def test_no_trust_and_a_password_from_env(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "trust" not in text
    postgres = _services(compose)["postgres"]["environment"]
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    cardsvc = _services(compose)["cardsvc"]["environment"]
    assert cardsvc["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "@" in cardsvc["DATABASE_URL"] and ":" not in cardsvc["DATABASE_URL"].split("@")[0][13:]


def test_only_cardsvc_is_published_and_on_loopback(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, service in services.items():
        if name != "cardsvc":
            assert "ports" not in service, name
    assert all(port.startswith("127.0.0.1:") for port in services["cardsvc"]["ports"])
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("postgres", "hsm_stub"):
        assert services[name]["networks"] == ["backend"], name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^EXPOSE (.*)$", dockerfile, re.M) == ["8080"]


def test_health_checks_and_restart_policies(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    depends = services["cardsvc"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["hsm_stub"]["condition"] == "service_healthy"


def test_each_service_mounts_only_its_own_credentials(compose: dict[str, Any]) -> None:
    services = _services(compose)
    one_shot = _mounts(services["hsm_credentials"])
    ca_volume = one_shot["/tls/ca"][0]
    for name in LONG_RUNNING:
        volumes = {volume for volume, _ in _mounts(services[name]).values()}
        assert ca_volume not in volumes, name
    hsm, cardsvc = _mounts(services["hsm_stub"]), _mounts(services["cardsvc"])
    assert hsm["/tls/hsm"] == (one_shot["/tls/hsm"][0], True)
    assert cardsvc["/tls/cardsvc"] == (one_shot["/tls/cardsvc"][0], True)
    assert not {volume for volume, _ in hsm.values()} & {volume for volume, _ in cardsvc.values()}
    assert "--credentials" in services["hsm_stub"]["command"]
    assert (
        services["hsm_stub"]["command"][services["hsm_stub"]["command"].index("--credentials") + 1]
        == "/tls/hsm"
    )
    env = services["cardsvc"]["environment"]
    assert {env[f"CARDSVC_HSM_{what}_FILE"] for what in ("CA", "CERT", "KEY")} == {
        "/tls/cardsvc/ca.pem",
        "/tls/cardsvc/client.pem",
        "/tls/cardsvc/client.key",
    }


def test_written_volumes_belong_to_the_user_that_writes_them(compose: dict[str, Any]) -> None:
    services = _services(compose)
    owners = _dockerfile_dirs()
    users = {"hsm_stub": "hsm", "cardsvc": "cardsvc"}
    for name, user in users.items():
        assert services[name].get("user", "cardsvc") == user, name
        for target in _mounts(services[name]):
            assert owners.get(target) == user, (name, target)
    assert owners["/tls/ca"] == "root" and services["hsm_credentials"]["user"] == "root"
    # The audit anchors are written to a volume of the service user's, not under /app.
    anchors = services["cardsvc"]["environment"]["CARDSVC_AUDIT_ANCHOR_DIR"]
    assert anchors in _mounts(services["cardsvc"]) and owners[anchors] == "cardsvc"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^USER (\S+)$", dockerfile, re.M) == ["cardsvc"]
    assert "useradd --uid 10001 --gid cardsvc" in dockerfile
    assert "useradd --uid 10002 --gid hsm" in dockerfile


def test_env_example_names_every_required_variable(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {"POSTGRES_PASSWORD", "CARDSVC_ADMIN_TOKEN", "CARDSVC_DATA_KEY", "HSM_LMK"}
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    # Secrets are left empty: compose refuses to start until they are filled in.
    assert {name for name, value in example.items() if not value} == required
    defaults = set(re.findall(r"\$\{(\w+):-", text))
    assert defaults <= set(example)
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


def test_credentials_script_gives_each_service_its_half(tmp_path: Path) -> None:
    me = str(os.getuid())
    dirs = {name: tmp_path / name for name in ("ca", "hsm", "cardsvc")}
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CA_DIR": str(dirs["ca"]),
        "HSM_TLS_DIR": str(dirs["hsm"]),
        "CARDSVC_TLS_DIR": str(dirs["cardsvc"]),
        "HSM_USER": me,
        "CARDSVC_USER": me,
        "HSM_HOST": "hsm_stub",
    }
    script = ROOT / "scripts" / "docker-credentials.sh"
    for _ in range(2):  # a second `docker compose up` keeps what the first made
        subprocess.run(["sh", str(script)], env=env, cwd=ROOT, check=True, capture_output=True)
    assert {path.name for path in dirs["hsm"].iterdir()} == {"hsm.pem", "hsm.key", "ca.pem"}
    assert {path.name for path in dirs["cardsvc"].iterdir()} == {
        "client.pem",
        "client.key",
        "ca.pem",
    }
    assert (dirs["ca"] / "ca.key").exists()
    for folder in (dirs["hsm"], dirs["cardsvc"]):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for key in folder.glob("*.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The halves make a working mutual-TLS link for the name cardsvc dials in compose.
    server = server_context(
        dirs["hsm"] / "hsm.pem", dirs["hsm"] / "hsm.key", dirs["hsm"] / "ca.pem"
    )
    client = client_context(
        dirs["cardsvc"] / "ca.pem", dirs["cardsvc"] / "client.pem", dirs["cardsvc"] / "client.key"
    )
    _handshake(server, client, "hsm_stub")


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(listener.getsockname()) as raw:
        with client.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"x")
    thread.join(5)
    listener.close()
    assert not errors


def _healthcheck(compose: dict[str, Any], service: str) -> list[str]:
    test: list[str] = _services(compose)[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    return [sys.executable, "-c", test[3]]


def test_hsm_stub_health_check_sees_a_listener_on_9510(compose: dict[str, Any]) -> None:
    probe = _healthcheck(compose, "hsm_stub")
    assert f":{9510:04X}'" in probe[2]
    with socket.create_server(("0.0.0.0", 0)) as listening:  # a free port stands in for 9510
        port = listening.getsockname()[1]
        probe[2] = probe[2].replace(f":{9510:04X}'", f":{port:04X}'")
        assert subprocess.run(probe, check=False).returncode == 0
    assert subprocess.run(probe, check=False).returncode == 1


def test_cardsvc_health_check_asks_healthz(compose: dict[str, Any]) -> None:
    probe = _healthcheck(compose, "cardsvc")
    assert "http://127.0.0.1:8080/healthz" in probe[2]
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with HTTPServer(("127.0.0.1", 0), Handler) as httpd:  # a free port stands in for 8080
        probe[2] = probe[2].replace(":8080/", f":{httpd.server_address[1]}/")
        thread = threading.Thread(target=httpd.handle_request)
        thread.start()
        assert subprocess.run(probe, check=False, capture_output=True).returncode == 0
        thread.join(5)
    assert seen == ["/healthz"]
    assert subprocess.run(probe, check=False, capture_output=True).returncode != 0


def test_secrets_and_local_state_stay_out_of_the_build() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", "var", ".venv", ".git"} <= set(ignored)


def test_the_image_has_the_console_chart_library_where_the_service_looks() -> None:
    """The Dockerfile installs ECharts from package-lock.json in a build stage and copies its
    one file to the path cardsvc/console/assets.py serves it from (WORKDIR /app is the
    checkout's root there)."""
    from cardsvc.console import assets

    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    assert re.search(r"COPY package\.json package-lock\.json \.npmrc", text)
    assert "npm ci" in text
    wanted = assets.ECHARTS_PATH.relative_to(ROOT).as_posix()
    copies = re.findall(r"COPY --from=\S+ (\S+) +(\S+)", text)
    assert any(target == wanted and source.endswith(wanted) for source, target in copies), copies
