"""vpcd's socket protocol, and a card kept "inserted" in a vpcd slot by a background thread.

The card is a TCP client of vpcd (pcscd's virtual reader driver, which listens on its port).
Every message either way is a 2-byte big-endian length and a payload. A 1-byte payload from
vpcd is a control message — ``00`` power off, ``01`` power on, ``02`` reset, ``04`` get ATR —
and only ``04`` is answered (vpcd polls presence with it: it must always get the ATR). Longer
payloads are command APDUs, answered with the response APDU. Closing the connection is
pulling the card out.

Threads rather than asyncio: pyscard calls block, and a test or the load harness may call a
reader from the very thread whose event loop would otherwise have to answer as the card.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

import structlog

from cardsvc.terminal_sdk import cardprofile
from cardsvc.vcard.card import VirtualCard

log = structlog.get_logger("cardsvc.vcard")

DEFAULT_PORT = 35963
CONTROL_POWER_OFF = 0x00
CONTROL_POWER_ON = 0x01
CONTROL_RESET = 0x02
CONTROL_GET_ATR = 0x04
_RETRY_SECONDS = 0.1


def frame(payload: bytes) -> bytes:
    return struct.pack(">H", len(payload)) + payload


def _quickack(sock: socket.socket) -> None:
    # vpcd writes a message's length and payload separately: with Nagle on its side and
    # delayed ACKs on ours, every APDU would wait ~40 ms. Linux clears QUICKACK after use.
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        _quickack(sock)
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> bytes | None:
    """The next payload from vpcd, or None when the connection closed."""
    header = _recv_exactly(sock, 2)
    if header is None:
        return None
    (size,) = struct.unpack(">H", header)
    return _recv_exactly(sock, size) if size else b""


def handle(card: VirtualCard, payload: bytes) -> bytes | None:
    """The answer to one vpcd message, or None for a control message that takes none."""
    if len(payload) == 1:
        return _control(card, payload[0])
    if not payload:
        return None
    try:
        return card.process(payload)
    except Exception:  # the card must answer even its own bugs: never leave vpcd waiting
        log.exception("vcard internal error", ins=payload[1] if len(payload) > 1 else None)
        return cardprofile.SW_UNKNOWN.to_bytes(2, "big")


def _control(card: VirtualCard, code: int) -> bytes | None:
    if code == CONTROL_GET_ATR:
        return card.atr
    actions = {
        CONTROL_POWER_OFF: card.power_off,
        CONTROL_POWER_ON: card.power_on,
        CONTROL_RESET: card.reset,
    }
    action = actions.get(code)
    if action is not None:
        action()
    return None


def serve(sock: socket.socket, card: VirtualCard) -> None:
    """Answer vpcd until it (or ``remove``) closes the connection."""
    while (payload := read_frame(sock)) is not None:
        reply = handle(card, payload)
        if reply is not None:
            sock.sendall(frame(reply))


class CardSlot:
    """A virtual card in one vpcd slot, served from a background thread.

    ``insert`` connects to vpcd (retrying until it listens) and serves the card; after vpcd
    drops the connection (pcscd stopped) it connects again. ``remove`` closes the connection,
    which the reader sees as the card pulled out.
    """

    def __init__(
        self,
        card: VirtualCard,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.card, self.host, self.port = card, host, port
        self._on_connect = on_connect
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def inserted(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def insert(self) -> None:
        if self.inserted:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"vcard:{self.port}", daemon=True)
        self._thread.start()

    def remove(self) -> None:
        self._stop.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's recv
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            sock = self._connect()
            if sock is None:
                return
            try:
                serve(sock, self.card)
            except OSError as exc:
                log.info("vcard connection lost", port=self.port, error=str(exc))
            finally:
                with self._lock:
                    self._sock = None
                sock.close()
            self._stop.wait(_RETRY_SECONDS)

    def _connect(self) -> socket.socket | None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
            except OSError:
                self._stop.wait(_RETRY_SECONDS)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stop.is_set():  # removed while connecting
                    sock.close()
                    return None
                self._sock = sock
            log.info("vcard connected", host=self.host, port=self.port)
            if self._on_connect is not None:
                self._on_connect()
            return sock
        return None
