"""``python -m hsm_stub``: start the HSM stand-in; and its two offline commands.

    python -m hsm_stub --credentials DIR [--keystore DIR] [--regions A,B] ...   serve
    python -m hsm_stub make-credentials --out DIR [--host H ...]   the link's CA and certificates
    python -m hsm_stub provision-region ADMDVS [...] --keystore DIR   a region's issuer keys

Serving prints exactly one line on stdout once listening (``hsm_stub listening on HOST:PORT``,
with the real port when ``--port 0``) so scripts and tests can wait for it; everything else is
JSON log lines on stderr. It serves mutual TLS only: without a server certificate, key and
client CA (``--credentials DIR`` for ``DIR/hsm.pem``, ``DIR/hsm.key``, ``DIR/ca.pem``, or
``--cert``/``--key``/``--client-ca``) it does not start. SIGTERM and SIGINT stop it cleanly.
Exit status 2 means the keys could not be loaded (e.g. a keystore created under another LMK),
3 that the TLS credentials are missing or unusable, 1 that it could not listen or write its
files.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import structlog

from cardcrypto import profile
from hsm_stub.keystore import Keystore, KeystoreError, LoadedLmk, is_admdvs, load_lmk
from hsm_stub.server import HsmServer, Limits
from hsmlink.credentials import (
    DEFAULT_HOSTS,
    CredentialPaths,
    CredentialsError,
    make_credentials,
    server_context,
)

OFFLINE_OPERATOR = "(offline: local operator)"


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def _regions(text: str) -> list[str]:
    regions = [region.strip() for region in text.split(",") if region.strip()]
    bad = [region for region in regions if not is_admdvs(region)]
    if bad:
        raise argparse.ArgumentTypeError(f"regions must be 6-digit admdvs codes, got {bad}")
    return regions


# The offline commands are dispatched before the server's arguments are parsed (main);
# the server's --help names them here.
COMMANDS_HELP = """offline commands (each has its own --help):
  make-credentials --out DIR [--host H ...]
                        make the HSM link's CA, hsm_stub's server certificate and
                        cardsvc's client certificate
  provision-region ADMDVS [ADMDVS ...] [--keystore DIR]
                        create regions' issuer master keys in the keystore"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hsm_stub",
        description="A payment HSM stand-in for cardsvc. Without a command it serves.",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=os.environ.get("HSM_HOST", "127.0.0.1"))
    # argparse applies ``type`` to string defaults too, so a bad HSM_PORT is reported clearly.
    parser.add_argument("--port", type=_port, default=os.environ.get("HSM_PORT", "9510"))
    parser.add_argument(
        "--keystore", type=Path, default=Path(os.environ.get("HSM_KEYSTORE", "./var/hsm"))
    )
    parser.add_argument("--lmk-file", type=Path, help="file with the LMK as 32 hex characters")
    parser.add_argument(
        "--regions", type=_regions, default=[], help="admdvs codes whose keys to create now"
    )
    _add_tls_arguments(parser)
    return parser.parse_args(argv)


def _optional_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number: {text!r}")
    return int(text)


def _add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("mutual TLS (required) and limits")
    tls.add_argument(
        "--credentials",
        type=Path,
        default=_optional_path("HSM_CREDENTIALS"),
        help="folder made by make-credentials: hsm.pem, hsm.key, ca.pem",
    )
    tls.add_argument("--cert", type=Path, default=_optional_path("HSM_TLS_CERT"))
    tls.add_argument("--key", type=Path, default=_optional_path("HSM_TLS_KEY"))
    tls.add_argument(
        "--client-ca",
        type=Path,
        default=_optional_path("HSM_TLS_CLIENT_CA"),
        help="CA whose client certificates are served (cardsvc's)",
    )
    defaults = Limits()
    env = os.environ.get
    tls.add_argument(
        "--max-connections",
        type=_positive_int,
        default=env("HSM_MAX_CONNECTIONS", str(defaults.max_connections)),
    )
    tls.add_argument(
        "--max-handshakes",
        type=_positive_int,
        default=env("HSM_MAX_HANDSHAKES", str(defaults.max_handshakes)),
    )
    tls.add_argument(
        "--max-handshakes-per-address",
        type=_positive_int,
        default=env("HSM_MAX_HANDSHAKES_PER_ADDRESS", str(defaults.max_handshakes_per_address)),
    )
    tls.add_argument(
        "--idle-timeout",
        type=_positive,
        default=env("HSM_IDLE_TIMEOUT", str(defaults.idle_timeout)),
    )
    tls.add_argument(
        "--handshake-timeout",
        type=_positive,
        default=env("HSM_HANDSHAKE_TIMEOUT", str(defaults.handshake_timeout)),
    )


def tls_files(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Server certificate, key and client CA; ``CredentialsError`` if not all are given."""
    folder = CredentialPaths(args.credentials) if args.credentials else None
    cert = args.cert or (folder.server_cert if folder else None)
    key = args.key or (folder.server_key if folder else None)
    client_ca = args.client_ca or (folder.ca_cert if folder else None)
    if cert is None or key is None or client_ca is None:
        raise CredentialsError(
            "hsm_stub serves mutual TLS only: give --credentials DIR (made by"
            " 'python -m hsm_stub make-credentials --out DIR') or --cert, --key and --client-ca"
        )
    return cert, key, client_ca


def configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Plain traceback text: structlog's dict tracebacks would include local variables.
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _open_keystore(args: argparse.Namespace) -> tuple[LoadedLmk, Keystore]:
    lmk = load_lmk(args.keystore, lmk_file=args.lmk_file, env_hex=os.environ.get("HSM_LMK"))
    keystore = Keystore.open(args.keystore, lmk.key)
    for admdvs in args.regions:
        provision(keystore, admdvs)
    return lmk, keystore


def provision(keystore: Keystore, admdvs: str) -> bool:
    """Create a region's issuer keys unless it has them; one key-management log line."""
    created = keystore.ensure_region(admdvs)
    kcv_auth, kcv_txn = keystore.region_kcvs(admdvs)
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger("hsm_stub")
    log.info(
        "hsm.key_management",
        command="provision-region",
        status="00",
        region=admdvs,
        created=created,
        kcv_auth=kcv_auth,
        kcv_txn=kcv_txn,
        peer_subject=OFFLINE_OPERATOR,
    )
    return created


async def serve(args: argparse.Namespace) -> None:
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger("hsm_stub")
    tls = server_context(*tls_files(args))
    lmk, keystore = _open_keystore(args)
    if lmk.generated:
        log.warning("hsm.lmk_generated", source=lmk.source, note="back this file up")
    limits = Limits(
        max_connections=args.max_connections,
        max_handshakes=args.max_handshakes,
        max_handshakes_per_address=args.max_handshakes_per_address,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
    )
    server = HsmServer(keystore, tls, limits)
    host, port = await server.start(args.host, args.port)
    log.info(
        "hsm.started",
        address=f"{host}:{port}",
        lmk_source=lmk.source,
        lmk_kcv=profile.key_check_value(lmk.key),
        regions=keystore.regions,
        tls="mutual, TLS 1.3",
        max_connections=limits.max_connections,
        max_handshakes=limits.max_handshakes,
        max_handshakes_per_address=limits.max_handshakes_per_address,
        idle_timeout=limits.idle_timeout,
        handshake_timeout=limits.handshake_timeout,
    )
    print(f"hsm_stub listening on {host}:{port}", flush=True)
    await _wait_for_stop_signal()
    await server.stop()
    log.info("hsm.stopped")


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def make_credentials_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hsm_stub make-credentials",
        description="Make the HSM link's private CA, hsm_stub's server certificate and"
        " cardsvc's client certificate; files that exist are kept (but with --host, a server"
        " certificate that does not name every host is issued again).",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the files (0700)")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help="address or name cardsvc dials (repeatable); default 127.0.0.1 and localhost",
    )
    args = parser.parse_args(argv)
    try:
        paths, written = make_credentials(
            args.out, hosts=args.hosts or DEFAULT_HOSTS, renew_misnamed=bool(args.hosts)
        )
    except (CredentialsError, OSError, ValueError) as exc:
        print(f"hsm_stub make-credentials: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"credentials in {paths.directory} ({len(written)} new files)")
    return 0


def provision_region_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hsm_stub provision-region",
        description="Create regions' issuer master keys in the keystore (a running hsm_stub"
        " serves them without a restart). A region that has keys keeps them.",
    )
    parser.add_argument("regions", nargs="+", type=_regions, metavar="ADMDVS")
    parser.add_argument(
        "--keystore", type=Path, default=Path(os.environ.get("HSM_KEYSTORE", "./var/hsm"))
    )
    parser.add_argument("--lmk-file", type=Path, help="file with the LMK as 32 hex characters")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        lmk = load_lmk(args.keystore, lmk_file=args.lmk_file, env_hex=os.environ.get("HSM_LMK"))
        keystore = Keystore.open(args.keystore, lmk.key)
        for admdvs in (region for group in args.regions for region in group):
            created = provision(keystore, admdvs)
            print(f"region {admdvs} {'provisioned' if created else 'already provisioned'}")
    except KeystoreError as exc:
        print(f"hsm_stub provision-region: {exc}", file=sys.stderr)
        return 2
    return 0


SUBCOMMANDS = {
    "make-credentials": make_credentials_main,
    "provision-region": provision_region_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = parse_args(argv)
    configure_logging()
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger("hsm_stub")
    try:
        # asyncio's own loop, not uvloop: the server upgrades each accepted connection with
        # StreamWriter.start_tls (so the connection cap counts handshakes in progress too),
        # and under uvloop 0.23 that handshake never completes.
        with asyncio.Runner() as runner:
            runner.run(serve(args))
    except CredentialsError as exc:
        log.error("hsm.tls_config_error", error=str(exc))
        return 3
    except KeystoreError as exc:
        log.error("hsm.keystore_error", error=str(exc))
        return 2
    except OSError as exc:
        log.error("hsm.start_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
