"""Every gateway transaction by ``infno``: each module registers its handlers here.

A handler gets the call (who, for which facility, under which message) and its ``input``
nodes still as raw JSON, so that each decodes its own nodes into typed structs
(``cardsvc.national.units`` holds the exact decimal types): a JSON number is never read as
a binary float. It returns the ``output`` object, or a ``FileAnswer`` for a transaction
whose answer is a stored file (9102): its stored answer is the file's number, and sending
the message again reads the file again (``replay_file``) while it is kept. A refusal is a
``CardsvcError`` like everywhere in cardsvc: the envelope answers ``infcode -1`` with
``[CODE] message``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from cardsvc.errors import InvalidRequest
from cardsvc.web.caller import Caller

if TYPE_CHECKING:
    from cardsvc.db import Connection, Pool
    from cardsvc.services import Services


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated gateway message."""

    services: Services
    pool: Pool
    caller: Caller  # kind "gateway", fixmedins_code = the client's facility
    paasid: str
    fixmedins_code: str
    msgid: str
    infno: str
    opter: str  # recorded in the audit log with opter_name
    opter_name: str
    opter_type: str
    mdtrtarea_admvs: str
    insuplc_admdvs: str
    sign_no: str | None
    now: dt.datetime  # when the message arrived (UTC)
    # Stores the success answer in the handler's own transaction (set by the dispatcher).
    store_answer: AnswerHook | None = None

    async def answered(self, conn: Connection, output: Output) -> None:
        """A handler whose work is one transaction calls this last in it, with the output it
        will return: the answer is then stored by the work's own commit (one commit, not
        two), and a rollback of the work takes it too. A handler that does not call it has
        its answer stored after it returns."""
        if self.store_answer is not None:
            await self.store_answer(conn, output)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FileAnswer:
    """A file as the answer (sent as the HTTP body): its bytes, and its number, which is
    all the stored answer keeps."""

    file_qury_no: str
    content: bytes


Output = dict[str, Any] | FileAnswer
AnswerHook = Callable[["Connection", Output], Awaitable[None]]
Handler = Callable[[Call, dict[str, msgspec.Raw]], Awaitable[Output]]
# The bytes of the file ``file_qury_no`` an earlier try of the message answered with, read
# again (refused once the file has expired or is gone).
FileReplay = Callable[[Call, str], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Transaction:
    infno: str
    handler: Handler
    needs_sign_no: bool  # every transaction but 9001
    replay_file: FileReplay | None = None  # a transaction answering with a FileAnswer


TRANSACTIONS: dict[str, Transaction] = {}


def transaction(
    infno: str, *, needs_sign_no: bool = True, replay_file: FileReplay | None = None
) -> Callable[[Handler], Handler]:
    """Registers ``handler`` for ``infno`` (one handler per infno)."""

    def register(handler: Handler) -> Handler:
        if infno in TRANSACTIONS:
            raise RuntimeError(f"infno {infno} registered twice")
        TRANSACTIONS[infno] = Transaction(infno, handler, needs_sign_no, replay_file)
        return handler

    return register


def node(inputs: dict[str, msgspec.Raw], name: str, type_: type[T]) -> T:
    """The input node ``name`` decoded as ``type_``; a missing or malformed node is refused
    with a message naming the node and the field."""
    raw = inputs.get(name)
    if raw is None:
        raise InvalidRequest(f"input.{name} is required", code="INPUT_INVALID")
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"input.{name}: {exc}", code="INPUT_INVALID") from None
    except msgspec.DecodeError:
        raise InvalidRequest(f"input.{name} is not valid JSON", code="INPUT_INVALID") from None
