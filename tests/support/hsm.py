"""Run the real hsm_stub as a subprocess, for tests and scripts.

    hsm = HsmProcess(tmp_path / "hsm", regions=["320200"])
    hsm.start()            # a free port unless one is given; waits for the "listening" line
    ... HsmClient(hsm.host, hsm.port, tls=hsm.client_tls()) ...
    hsm.restart()          # same port, same keystore and LMK: keys survive
    hsm.stop()             # SIGTERM, then SIGKILL if it does not exit
    hsm.pause(); hsm.resume()  # SIGSTOP / SIGCONT: a hung HSM
    hsm.kill()             # SIGKILL: a crashed HSM

The LMK is passed in ``HSM_LMK`` (random per instance unless given); hsm_stub's JSON log goes
to ``<keystore_dir>/hsm_stub.log``, whose tail is quoted when start-up fails. The link is mutual
TLS, as always: the credentials are made (once, ``make-credentials``) in ``<keystore_dir>/tls``
unless another folder is given; ``cardsvc_env()`` gives cardsvc's variables for them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from cardsvc.config import Settings
from hsmlink.credentials import CredentialPaths, client_context, make_credentials

REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(rb"hsm_stub listening on (\S+):(\d+)\n")
_STOP_TIMEOUT = 5.0


class HsmStartError(RuntimeError):
    """hsm_stub did not come up; the message quotes its log."""


class HsmProcess:
    def __init__(
        self,
        keystore_dir: Path,
        *,
        lmk_hex: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        regions: Sequence[str] = (),
        startup_timeout: float = 15.0,
        credentials_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.keystore_dir = keystore_dir
        self.credentials = CredentialPaths(credentials_dir or keystore_dir / "tls")
        self._extra_args = list(extra_args)
        self.lmk_hex = lmk_hex or secrets.token_hex(16)
        self.host = host
        self._port = port
        self._regions = list(regions)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("hsm_stub has not been started yet")
        return self._port

    def client_tls(self) -> ssl.SSLContext:
        """cardsvc's side of the link: its client certificate, the link's CA."""
        paths = self.credentials
        return client_context(paths.ca_cert, paths.client_cert, paths.client_key)

    def cardsvc_env(self) -> dict[str, str]:
        """The ``CARDSVC_HSM_*`` settings that point cardsvc at this hsm_stub."""
        return {
            "CARDSVC_HSM_HOST": self.host,
            "CARDSVC_HSM_PORT": str(self.port),
            "CARDSVC_HSM_CA_FILE": str(self.credentials.ca_cert),
            "CARDSVC_HSM_CERT_FILE": str(self.credentials.client_cert),
            "CARDSVC_HSM_KEY_FILE": str(self.credentials.client_key),
        }

    @property
    def log_path(self) -> Path:
        return self.keystore_dir / "hsm_stub.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("hsm_stub is already running")
        self.keystore_dir.mkdir(parents=True, exist_ok=True)
        make_credentials(self.credentials.directory)  # keeps existing ones
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self._command(),
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            cwd=REPO_ROOT,
            env=self._environment(),
        )
        try:
            self._port = self._wait_until_listening(self._process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after a grace period); returns the exit status."""
        return self._end(graceful=True)

    def kill(self) -> int | None:
        """SIGKILL, like a crash: no clean shutdown, the kernel drops the connections."""
        return self._end(graceful=False)

    def restart(self) -> None:
        """Stop and start again on the same port with the same keystore and LMK."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def __enter__(self) -> HsmProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "hsm_stub", "--host", self.host]
        command += ["--port", str(self._port), "--keystore", str(self.keystore_dir)]
        command += ["--credentials", str(self.credentials.directory)]
        if self._regions:
            command += ["--regions", ",".join(self._regions)]
        return command + self._extra_args

    def _environment(self) -> dict[str, str]:
        python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "HSM_LMK": self.lmk_hex, "PYTHONPATH": python_path}

    def _wait_until_listening(self, process: subprocess.Popen[bytes]) -> int:
        assert process.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        output = b""
        while b"\n" not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waited = f"no listening line within {self._startup_timeout} s"
                raise HsmStartError(self._failure(waited))
            readable, _, _ = select.select([process.stdout], [], [], remaining)
            if readable:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    raise HsmStartError(self._failure(f"exited with status {process.wait()}"))
                output += chunk
        match = _LISTENING.match(output)
        if match is None:
            raise HsmStartError(self._failure(f"unexpected output {output!r}"))
        return int(match.group(2))

    def _failure(self, what: str) -> str:
        log_tail = self.log_path.read_text(errors="replace")[-2000:]
        return f"hsm_stub failed to start ({what}); log {self.log_path}:\n{log_tail}"

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            raise RuntimeError("hsm_stub is not running")
        self._process.send_signal(signum)

    def _end(self, *, graceful: bool) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            if graceful:
                process.terminate()
                process.send_signal(signal.SIGCONT)  # a paused process acts on SIGTERM once resumed
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(_STOP_TIMEOUT)
            if process.poll() is None:
                process.kill()
            process.wait()
        self._close_files(process)
        return process.returncode

    def _close_files(self, process: subprocess.Popen[bytes]) -> None:
        if process.stdout is not None:
            process.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def hsm_env(settings: Settings) -> dict[str, str]:
    """The ``CARDSVC_HSM_*`` variables of ``settings``, for a ``python -m cardsvc`` child."""
    return {
        "CARDSVC_HSM_HOST": settings.hsm_host,
        "CARDSVC_HSM_PORT": str(settings.hsm_port),
        "CARDSVC_HSM_CA_FILE": settings.hsm_ca_file,
        "CARDSVC_HSM_CERT_FILE": settings.hsm_cert_file,
        "CARDSVC_HSM_KEY_FILE": settings.hsm_key_file,
    }
