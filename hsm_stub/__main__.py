"""``python -m hsm_stub``: start the HSM stand-in.

Prints exactly one line on stdout once listening (``hsm_stub listening on HOST:PORT``, with the
real port when ``--port 0``) so scripts and tests can wait for it; everything else is JSON log
lines on stderr. SIGTERM and SIGINT stop it cleanly. Exit status 2 means the keys could not be
loaded (e.g. a keystore created under another LMK), 1 that it could not listen or write its files.
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
import uvloop

from cardsvc.crypto import profile
from hsm_stub.keystore import Keystore, KeystoreError, LoadedLmk, is_admdvs, load_lmk
from hsm_stub.server import HsmServer


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hsm_stub", description="A payment HSM stand-in for cardsvc."
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
    return parser.parse_args(argv)


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
        keystore.ensure_region(admdvs)
    return lmk, keystore


async def serve(args: argparse.Namespace) -> None:
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger("hsm_stub")
    lmk, keystore = _open_keystore(args)
    if lmk.generated:
        log.warning("hsm.lmk_generated", source=lmk.source, note="back this file up")
    server = HsmServer(keystore)
    host, port = await server.start(args.host, args.port)
    log.info(
        "hsm.started",
        address=f"{host}:{port}",
        lmk_source=lmk.source,
        lmk_kcv=profile.key_check_value(lmk.key),
        regions=keystore.regions,
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger("hsm_stub")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args))
    except KeystoreError as exc:
        log.error("hsm.keystore_error", error=str(exc))
        return 2
    except OSError as exc:
        log.error("hsm.start_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
