"""pcscd in the foreground with vsmartcard's vpcd driver, for tests and the demo.

    daemon = PcscDaemon(workdir, port=35963)
    daemon.start()      # refuses if binaries are missing or another pcscd runs; waits for readers
    daemon.reader_names # ["Virtual PCD 00 00", "Virtual PCD 00 01"]; slot n listens on port + n
    daemon.stop()       # SIGTERM, then SIGKILL; pcscd removes its socket on the way out

``pcscd -f -c DIR`` reads only ``DIR``'s reader.conf files, so our own ``DIR/vpcd`` gives
vpcd the port we choose. Clients always reach pcscd through the system socket
(``/run/pcscd/pcscd.comm``), so only one pcscd can run on a machine: a second one would take
over the first's clients. ``start`` therefore refuses while another answers on that socket,
and never stops a pcscd it did not start. pcscd needs root (it creates ``/run/pcscd``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from cardsvc.terminal_sdk import reader

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
PCSCD_PIDFILE = Path("/run/pcscd/pcscd.pid")
READER_PREFIX = "Virtual PCD"
SLOTS = 2
_STOP_TIMEOUT = 5.0


class PcscError(RuntimeError):
    """pcscd could not be started; the message says why and what to do."""


class PcscMissing(PcscError):
    """A binary is not installed; the message names the Debian package."""


class PcscBusy(PcscError):
    """Another pcscd already serves this machine's PC/SC socket."""


def find_pcscd() -> Path | None:
    """``CARDSVC_PCSCD`` if set, else pcscd on PATH or in the sbin folders."""
    if configured := os.environ.get("CARDSVC_PCSCD"):
        return Path(configured)
    found = shutil.which("pcscd") or shutil.which("pcscd", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def vpcd_driver() -> Path:
    return Path(os.environ.get("CARDSVC_VPCD_DRIVER", str(VPCD_DRIVER)))


def preflight(pcscd: Path | None, driver: Path) -> Path:
    """The pcscd binary to run, or ``PcscMissing`` naming the package that provides what lacks."""
    if pcscd is None or not pcscd.exists():
        raise PcscMissing(
            "pcscd is not installed: install the Debian package `pcscd` (apt-get install pcscd)"
        )
    if not driver.exists():
        raise PcscMissing(
            f"the vpcd reader driver ({driver}) is not installed: install the Debian package "
            "`vsmartcard-vpcd` (apt-get install vsmartcard-vpcd)"
        )
    return pcscd


def running_pcscd() -> str | None:
    """A description of the pcscd that answers on the system socket, if one does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(PCSCD_SOCKET))
        except OSError:
            return None
    pid = ""
    with contextlib.suppress(OSError):
        pid = PCSCD_PIDFILE.read_text().strip()
    return f"pid {pid}" if pid else "unknown pid"


def vpcd_reader_conf(port: int, driver: Path = VPCD_DRIVER) -> str:
    return f'FRIENDLYNAME "{READER_PREFIX}"\nDEVICENAME /dev/null:{port}\nLIBPATH {driver}\n'


def list_readers() -> list[str]:
    """Reader names pcscd reports now ([] when none or no pcscd yet)."""
    try:
        return reader.list_readers()
    except reader.ReaderUnavailable:
        return []


class PcscDaemon:
    def __init__(
        self,
        workdir: Path,
        port: int = 35963,
        *,
        pcscd: Path | None = None,
        driver: Path | None = None,
    ) -> None:
        self.workdir, self.port = workdir, port
        self._pcscd = pcscd if pcscd is not None else find_pcscd()
        self._driver = driver if driver is not None else vpcd_driver()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def reader_names(self) -> list[str]:
        return [f"{READER_PREFIX} 00 {slot:02d}" for slot in range(SLOTS)]

    @property
    def log_path(self) -> Path:
        return self.workdir / "pcscd.log"

    def card_port(self, slot: int) -> int:
        """vpcd listens on ``port + slot`` for the card of that reader slot."""
        return self.port + slot

    def start(self, timeout: float = 10.0) -> None:
        binary = preflight(self._pcscd, self._driver)
        other = running_pcscd()
        if other is not None:
            raise PcscBusy(
                f"another pcscd is running ({other}) on {PCSCD_SOCKET}; stop it first "
                "(systemctl stop pcscd.socket pcscd.service, or end that process)"
            )
        conf = self.workdir / "reader.conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "vpcd").write_text(vpcd_reader_conf(self.port, self._driver))
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [str(binary), "--foreground", "--config", str(conf)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_for_readers(timeout)

    def _wait_for_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                self._fail(f"pcscd exited with status {self._process.returncode}")
            if set(self.reader_names) <= set(list_readers()):
                return
            time.sleep(0.05)
        self._fail(f"pcscd did not list the vpcd readers within {timeout:.0f} s")

    def _fail(self, reason: str) -> None:
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        hint = "" if os.geteuid() == 0 else " (pcscd needs root to create /run/pcscd)"
        raise PcscError(f"{reason}{hint}; its log ({self.log_path}):\n{tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PcscDaemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port_pair(host: str = "") -> int:
    """A port p with p and p + 1 both free (vpcd binds every address: check all)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
        return port
    raise PcscError("no pair of free TCP ports found")
