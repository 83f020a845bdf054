"""The national interface's reconciliation files, pure: what a facility uploads (9101) for the
detail reconciliation (3202), the comparison with cardsvc's settlements, and the result file
it downloads (9102).

An upload is a zip holding exactly one tab-separated UTF-8 text file, one settlement a line:
``UPLOAD_COLUMNS``. The result is a zip holding ``result.txt``, one line per settlement in
either side's list: ``RESULT_COLUMNS``. Amounts are yuan with 2 decimals, exactly (integer
fen inside). Everything that can make reading a file expensive is bounded before it is
read: the zip's size, its members (one, a plain relative name, not encrypted), the text's
uncompressed size (read no further than the bound, whatever the zip's header claims: a zip
bomb is refused, never inflated) and its number of lines.

Refusals (each ``InvalidRequest`` with its stable code): ``FILE_INVALID`` (not a zip, not
exactly one safe member, not the columns), ``FILE_TOO_LARGE`` (a bound), ``AMOUNT_INVALID``
(an amount that is not yuan with at most 2 decimals). Messages name the line and column.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from cardsvc.errors import InvalidRequest
from cardsvc.national.units import yuan

UPLOAD_COLUMNS = (
    "setl_id",
    "mdtrt_id",
    "psn_no",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "refd_setl_flag",
)
RESULT_COLUMNS = (
    "psn_no",
    "mdtrt_id",
    "setl_id",
    "msgid",
    "stmt_rslt",
    "refd_setl_flag",
    "memo",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
)
RESULT_MEMBER = "result.txt"

# The zip as uploaded: 200 000 settlements zipped with room to spare. A 9101 message carries
# it as base64 (4/3 of its size) or as an array of numbers (up to 4 bytes of JSON a byte),
# within the gateway's body limit (CARDSVC_GATEWAY_MAX_BODY_BYTES, 8 MB by default).
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_TEXT_BYTES = 32 * 1024 * 1024  # its text, uncompressed
MAX_ROWS = 200_000  # settlements in one file
MAX_FILENAME = 100
MAX_ID = 64  # setl_id, mdtrt_id, psn_no in a file

_AMOUNT = re.compile(r"-?[0-9]{1,13}(?:\.[0-9]{1,2})?")
_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID}}}")  # printable ASCII, no space
_ENCRYPTED = 0x1  # general purpose flag bit of a zip entry


class FileInvalid(InvalidRequest):
    default_code = "FILE_INVALID"


class FileTooLarge(InvalidRequest):
    default_code = "FILE_TOO_LARGE"


@dataclass(frozen=True, slots=True)
class FileRow:
    """One settlement as the facility lists it (amounts in fen)."""

    setl_id: str
    mdtrt_id: str
    psn_no: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    refd_setl_flag: str  # "1" refunded/reversed, "0" not


@dataclass(frozen=True, slots=True)
class Settled:
    """One of cardsvc's settlements of the facility (amounts in fen)."""

    setl_id: str
    mdtrt_id: str
    psn_no: str
    msgid: str  # the 2207/2304 message that made it; "" for a settlement of the native API
    setl_date: dt.date
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    psn_cash_pay: int
    reversed: bool

    @property
    def refd_setl_flag(self) -> str:
        return "1" if self.reversed else "0"


@dataclass(frozen=True, slots=True)
class ResultLine:
    psn_no: str
    mdtrt_id: str
    setl_id: str
    msgid: str
    stmt_rslt: str  # "0" both sides agree, "1" they do not
    refd_setl_flag: str
    memo: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int


def gateway_msgid(idempotency_key: str) -> str:
    """The message id of a settlement made through the gateway (its idempotency key is
    ``"gw:" + msgid``); "" for one made through the native API."""
    return idempotency_key[3:] if idempotency_key.startswith("gw:") else ""


def check_filename(name: str) -> str:
    """A file's name as the facility gives it: letters, digits, ``.``, ``-``, ``_``, at most
    ``MAX_FILENAME`` characters (no path, nothing a download header must escape)."""
    if not 1 <= len(name) <= MAX_FILENAME or name.startswith("."):
        raise FileInvalid(f"filename must be 1 to {MAX_FILENAME} characters, not starting with .")
    if not all(c.isalnum() or c in "._-" for c in name):
        raise FileInvalid("filename may hold only letters, digits, '.', '-' and '_'")
    return name


# -- upload ------------------------------------------------------------------------------


def read_upload(data: bytes) -> list[FileRow]:
    """The settlements of an uploaded zip, checked (the whole file is refused at its first
    fault)."""
    return parse_rows(unzip_one(data))


def unzip_one(data: bytes) -> bytes:
    """The one member of the zip ``data``, uncompressed, within the bounds."""
    if len(data) > MAX_FILE_BYTES:
        raise FileTooLarge(f"the file is over {MAX_FILE_BYTES // (1024 * 1024)} MB")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) != 1:
                raise FileInvalid(
                    f"the zip must hold exactly one text file; it holds {len(members)} entries"
                )
            member = members[0]
            _check_member(member)
            with archive.open(member) as text:
                content = text.read(MAX_TEXT_BYTES + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise FileInvalid(f"the file is not a readable zip ({exc})") from None
    except NotImplementedError:
        raise FileInvalid("the zip uses a compression method other than deflate") from None
    if len(content) > MAX_TEXT_BYTES:
        raise FileTooLarge(f"the text file is over {MAX_TEXT_BYTES // (1024 * 1024)} MB")
    return content


def _check_member(member: zipfile.ZipInfo) -> None:
    name = member.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if (
        member.is_dir()
        or not parts
        or name.startswith(("/", "\\"))
        or ".." in parts
        or ":" in name
        or any(ord(c) < 0x20 for c in name)
    ):
        raise FileInvalid("the zip's entry must be a plain file name, without a path")
    if member.flag_bits & _ENCRYPTED:
        raise FileInvalid("the zip's entry is encrypted")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FileInvalid("the zip uses a compression method other than deflate")
    if member.file_size > MAX_TEXT_BYTES:
        raise FileTooLarge(f"the text file is over {MAX_TEXT_BYTES // (1024 * 1024)} MB")


def parse_rows(content: bytes) -> list[FileRow]:
    """Tab-separated lines of ``UPLOAD_COLUMNS`` (an optional first line naming them is
    skipped; empty lines are ignored; ``\\r\\n`` or ``\\n``)."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FileInvalid("the text file is not UTF-8") from None
    rows: list[FileRow] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if not rows and not first_line and _is_header(fields):
            continue
        if len(rows) == MAX_ROWS:
            raise FileTooLarge(f"the file lists more than {MAX_ROWS} settlements")
        row = _row(number, fields)
        if row.setl_id in first_line:
            raise FileInvalid(
                f"line {number}: setl_id {row.setl_id} is listed already"
                f" (line {first_line[row.setl_id]})"
            )
        first_line[row.setl_id] = number
        rows.append(row)
    return rows


def _is_header(fields: list[str]) -> bool:
    return tuple(f.lower() for f in fields) == UPLOAD_COLUMNS


def _row(number: int, fields: list[str]) -> FileRow:
    if len(fields) != len(UPLOAD_COLUMNS):
        raise FileInvalid(
            f"line {number}: {len(fields)} tab-separated columns, expected"
            f" {len(UPLOAD_COLUMNS)} ({', '.join(UPLOAD_COLUMNS)})"
        )
    setl_id, mdtrt_id, psn_no, medfee, fund, acct, refd = fields
    for column, value in (("setl_id", setl_id), ("mdtrt_id", mdtrt_id), ("psn_no", psn_no)):
        if _ID.fullmatch(value) is None:
            raise FileInvalid(
                f"line {number}: {column} must be 1 to {MAX_ID} printable characters without spaces"
            )
    if refd not in ("0", "1"):
        raise FileInvalid(f"line {number}: refd_setl_flag must be 0 or 1")
    return FileRow(
        setl_id=setl_id,
        mdtrt_id=mdtrt_id,
        psn_no=psn_no,
        medfee_sumamt=_fen(number, "medfee_sumamt", medfee),
        fund_pay_sumamt=_fen(number, "fund_pay_sumamt", fund),
        acct_pay=_fen(number, "acct_pay", acct),
        refd_setl_flag=refd,
    )


def _fen(number: int, column: str, text: str) -> int:
    if _AMOUNT.fullmatch(text) is None:
        raise InvalidRequest(
            f"line {number}: {column} {text[:20]!r} is not yuan with at most 2 decimals",
            code="AMOUNT_INVALID",
        )
    whole, _, part = text.partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * 100 + int(part.ljust(2, "0")))


def upload_zip(rows: Iterable[FileRow], member: str = "stmt.txt") -> bytes:
    """A zip of ``rows`` as a facility uploads it (for tests and tools)."""
    text = "".join(
        "\t".join(
            (
                r.setl_id,
                r.mdtrt_id,
                r.psn_no,
                _yuan_text(r.medfee_sumamt),
                _yuan_text(r.fund_pay_sumamt),
                _yuan_text(r.acct_pay),
                r.refd_setl_flag,
            )
        )
        + "\n"
        for r in rows
    )
    return _zip(member, text.encode())


# -- comparison --------------------------------------------------------------------------


def compare(
    rows: list[FileRow], in_period: list[Settled], elsewhere: dict[str, Settled]
) -> list[ResultLine]:
    """One line per settlement in either list, by setl_id. ``in_period``: cardsvc's
    settlements of the facility in the period (reversed ones too); ``elsewhere``: those the
    file lists whose date is outside the period."""
    listed = {r.setl_id: r for r in rows}
    ours = {s.setl_id: s for s in in_period}
    lines = []
    for setl_id in sorted(listed.keys() | ours.keys()):
        row, settled = listed.get(setl_id), ours.get(setl_id)
        if row is not None and settled is not None:
            lines.append(_both(row, settled))
        elif settled is not None:
            lines.append(_only_ours(settled))
        elif row is not None:
            lines.append(_only_listed(row, elsewhere.get(setl_id)))
    return lines


def _both(row: FileRow, settled: Settled) -> ResultLine:
    differences = [
        f"{name}: facility {theirs}, cardsvc {ours}"
        for name, theirs, ours in (
            ("mdtrt_id", row.mdtrt_id, settled.mdtrt_id),
            ("psn_no", row.psn_no, settled.psn_no),
            (
                "medfee_sumamt",
                _yuan_text(row.medfee_sumamt),
                _yuan_text(settled.medfee_sumamt),
            ),
            (
                "fund_pay_sumamt",
                _yuan_text(row.fund_pay_sumamt),
                _yuan_text(settled.fund_pay_sumamt),
            ),
            ("acct_pay", _yuan_text(row.acct_pay), _yuan_text(settled.acct_pay)),
            ("refd_setl_flag", row.refd_setl_flag, settled.refd_setl_flag),
        )
        if theirs != ours
    ]
    return _line(settled, "1" if differences else "0", "; ".join(differences))


def _only_ours(settled: Settled) -> ResultLine:
    # A reversed settlement too: the facility's list names it, flagged (refd_setl_flag 1).
    memo = "not in the facility's file"
    return _line(settled, "1", memo + " (reversed at cardsvc)" if settled.reversed else memo)


def _only_listed(row: FileRow, settled: Settled | None) -> ResultLine:
    if settled is not None:
        memo = f"settled at cardsvc on {settled.setl_date.isoformat()}, outside the period"
    else:
        memo = "unknown to cardsvc (no settlement of this facility has this setl_id)"
    return ResultLine(
        psn_no=row.psn_no,
        mdtrt_id=row.mdtrt_id,
        setl_id=row.setl_id,
        msgid=settled.msgid if settled is not None else "",
        stmt_rslt="1",
        refd_setl_flag=row.refd_setl_flag,
        memo=memo,
        medfee_sumamt=row.medfee_sumamt,
        fund_pay_sumamt=row.fund_pay_sumamt,
        acct_pay=row.acct_pay,
    )


def _line(settled: Settled, stmt_rslt: str, memo: str) -> ResultLine:
    return ResultLine(
        psn_no=settled.psn_no,
        mdtrt_id=settled.mdtrt_id,
        setl_id=settled.setl_id,
        msgid=settled.msgid,
        stmt_rslt=stmt_rslt,
        refd_setl_flag=settled.refd_setl_flag,
        memo=memo,
        medfee_sumamt=settled.medfee_sumamt,
        fund_pay_sumamt=settled.fund_pay_sumamt,
        acct_pay=settled.acct_pay,
    )


# -- header totals -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderTotals:
    """A period's totals as 3202's header states them (amounts in fen)."""

    medfee_sumamt: int
    fund_pay_sumamt: int
    cash_payamt: int
    fixmedins_setl_cnt: int


def service_totals(in_period: Iterable[Settled]) -> HeaderTotals:
    """cardsvc's totals over the non-reversed settlements (integers: no overflow)."""
    counted = [s for s in in_period if not s.reversed]
    return HeaderTotals(
        medfee_sumamt=sum(s.medfee_sumamt for s in counted),
        fund_pay_sumamt=sum(s.fund_pay_sumamt for s in counted),
        cash_payamt=sum(s.psn_cash_pay for s in counted),
        fixmedins_setl_cnt=len(counted),
    )


def header_differences(declared: HeaderTotals, service: HeaderTotals) -> list[str]:
    """What differs between the facility's header totals and cardsvc's, in words."""
    found = []
    for name in ("medfee_sumamt", "fund_pay_sumamt", "cash_payamt"):
        theirs, ours = getattr(declared, name), getattr(service, name)
        if theirs != ours:
            found.append(f"{name}: facility {_yuan_text(theirs)}, cardsvc {_yuan_text(ours)}")
    if declared.fixmedins_setl_cnt != service.fixmedins_setl_cnt:
        found.append(
            f"fixmedins_setl_cnt: facility {declared.fixmedins_setl_cnt},"
            f" cardsvc {service.fixmedins_setl_cnt}"
        )
    return found


# -- result ------------------------------------------------------------------------------


def result_text(lines: Iterable[ResultLine]) -> bytes:
    """``result.txt``: one tab-separated line of ``RESULT_COLUMNS`` per settlement, no
    heading line, ``\\n`` after each."""
    return "".join(
        "\t".join(
            (
                r.psn_no,
                r.mdtrt_id,
                r.setl_id,
                r.msgid,
                r.stmt_rslt,
                r.refd_setl_flag,
                r.memo,
                _yuan_text(r.medfee_sumamt),
                _yuan_text(r.fund_pay_sumamt),
                _yuan_text(r.acct_pay),
            )
        )
        + "\n"
        for r in lines
    ).encode()


def result_zip(lines: Iterable[ResultLine]) -> bytes:
    return _zip(RESULT_MEMBER, result_text(lines))


def _zip(member: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, content)
    return out.getvalue()


def _yuan_text(fen: int) -> str:
    """Fen → yuan with exactly 2 decimals (``1230`` → ``12.30``)."""
    return f"{yuan(fen):f}"
