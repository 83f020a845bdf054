"""vpcd's socket protocol over a socket pair: control messages, APDUs, and the end."""

from __future__ import annotations

import socket
import struct
import threading

from cardsvc.terminal_sdk import cardprofile as cp
from cardsvc.vcard.card import ATR, VirtualCard
from cardsvc.vcard.link import frame, handle, read_frame, serve
from cardsvc.vcard.state import blank


def test_control_messages():
    card = VirtualCard(blank())
    assert handle(card, b"\x04") == ATR
    card.process(cp.select_ssse())
    for control in (b"\x00", b"\x01", b"\x02", b"\x7f"):
        assert handle(card, control) is None
    # The power events reset the session: the application is no longer selected.
    assert handle(card, cp.get_lifecycle()) == bytes.fromhex("6985")
    assert handle(card, b"") is None


def test_frames_carry_a_big_endian_length():
    assert frame(b"\x90\x00") == b"\x00\x02\x90\x00"
    left, right = socket.socketpair()
    with left, right:
        left.sendall(frame(b"") + frame(b"\x04") + b"\x00")
        left.shutdown(socket.SHUT_WR)
        assert read_frame(right) == b""
        assert read_frame(right) == b"\x04"
        assert read_frame(right) is None  # a connection that ends mid-frame is the end


def test_serve_answers_until_the_connection_closes():
    vpcd, card_side = socket.socketpair()
    worker = threading.Thread(target=serve, args=(card_side, VirtualCard(blank())))
    worker.start()
    with vpcd:
        vpcd.sendall(frame(b"\x01") + frame(b"\x04") + frame(cp.select_ssse()))
        replies = [_read(vpcd), _read(vpcd)]
        vpcd.shutdown(socket.SHUT_WR)
        worker.join(timeout=5)
    card_side.close()
    assert replies == [ATR, bytes.fromhex("9000")]
    assert not worker.is_alive()


def _read(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">H", sock.recv(2, socket.MSG_WAITALL))
    return sock.recv(size, socket.MSG_WAITALL)


def test_a_bug_in_the_card_is_answered_6f00_not_left_hanging():
    class BrokenCard(VirtualCard):
        def process(self, raw: bytes) -> bytes:
            raise RuntimeError("bug")

    assert handle(BrokenCard(blank()), cp.select_ssse()) == bytes.fromhex("6F00")
