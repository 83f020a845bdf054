"""Session-wide real services: a PostgreSQL cluster, hsm_stub over mutual TLS, and cardsvc itself
listening on a loopback port. Tests create their own data (unique identity numbers,
facility codes) so they share one database without interfering."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from cardsvc import db
from cardsvc.app import create_app
from cardsvc.config import Settings, load_settings
from cardsvc.devenv.pgcluster import LocalCluster
from cardsvc.logging import configure_logging
from tests.support.api import REGION, Service
from tests.support.hsm import HsmProcess
from tests.support.operators import create_operator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    # Not under pytest's tmp folder: that one is private to root, and the cluster may run
    # as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="cardsvc-pg-"))
    base.chmod(0o755)
    cluster = LocalCluster(base / "data", free_port(), durable=False)
    cluster.ensure()
    cluster.start()
    yield cluster
    cluster.stop("immediate")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_cluster: LocalCluster) -> str:
    pg_cluster.create_database("cardsvc_test")
    url = pg_cluster.url("cardsvc_test")
    asyncio.run(db.migrate_url(url))
    return url


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmProcess]:
    # Issuer keys exist only for provisioned regions: the one every test person lives in.
    process = HsmProcess(keystore_dir=tmp_path_factory.mktemp("hsm"), regions=[REGION])
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def audit_anchor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-anchors")


@pytest.fixture(scope="session")
def settings(database_url: str, hsm: HsmProcess, audit_anchor_dir: Path) -> Settings:
    configure_logging("json", os.environ.get("CARDSVC_TEST_LOG_LEVEL", "warning"))
    return load_settings(
        {
            "DATABASE_URL": database_url,
            "CARDSVC_ADMIN_TOKEN": secrets.token_hex(16),
            "CARDSVC_DATA_KEY": secrets.token_hex(32),
            **hsm.cardsvc_env(),
            "CARDSVC_HSM_TIMEOUT": "1.0",
            "CARDSVC_CLEARING_WAIT": "1.0",
            "CARDSVC_PORT": str(free_port()),
            # Every test terminal signs in from 127.0.0.1.
            "CARDSVC_SIGN_IN_ADDRESS_BURST": "100000",
            # Tests anchor when they mean to: a background anchor taken while a test has
            # the log rewritten would pin the rewrite.
            "CARDSVC_AUDIT_ANCHOR_DIR": str(audit_anchor_dir),
            "CARDSVC_AUDIT_ANCHOR_INTERVAL": "0",
        }
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service(settings: Settings) -> AsyncIterator[Service]:
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    # The operator every test acts as where it once used the administrator token.
    everyone = await create_operator(settings.database_url)
    async with aiohttp.ClientSession() as http:
        yield Service(
            base_url=f"http://{settings.host}:{settings.port}",
            admin_token=everyone.token,
            http=http,
            database_url=settings.database_url,
            bootstrap_token=settings.admin_token,
        )
    await runner.cleanup()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def live_service(service: Service) -> Service:
    """The running service, for the independent interop terminal (tests/interop)."""
    return service
