"""The reconciliation files of the national interface: reading an upload (every bound and
fault refused with its code), the comparison and the result file, table-driven."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest

from cardsvc.errors import InvalidRequest
from cardsvc.national import stmtfiles as sf
from cardsvc.national.stmtfiles import FileRow, Settled

DAY = dt.date(2026, 11, 30)


def zip_of(*members: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return out.getvalue()


def row(setl_id: str = "S1", medfee: int = 1000, **kw: object) -> FileRow:
    fields: dict[str, object] = {
        "setl_id": setl_id,
        "mdtrt_id": "MD1",
        "psn_no": "P1",
        "medfee_sumamt": medfee,
        "fund_pay_sumamt": 600,
        "acct_pay": 100,
        "refd_setl_flag": "0",
    }
    fields.update(kw)
    return FileRow(**fields)  # type: ignore[arg-type]


def settled(setl_id: str = "S1", medfee: int = 1000, **kw: object) -> Settled:
    fields: dict[str, object] = {
        "setl_id": setl_id,
        "mdtrt_id": "MD1",
        "psn_no": "P1",
        "msgid": "",
        "setl_date": DAY,
        "medfee_sumamt": medfee,
        "fund_pay_sumamt": 600,
        "acct_pay": 100,
        "psn_cash_pay": medfee - 700,
        "reversed": False,
    }
    fields.update(kw)
    return Settled(**fields)  # type: ignore[arg-type]


def test_an_upload_reads_back_exactly() -> None:
    rows = [row("S1", 123456), row("S2", 5, acct_pay=0, refd_setl_flag="1")]
    assert sf.read_upload(sf.upload_zip(rows)) == rows


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a heading line is skipped, \r\n accepted, empty lines ignored, a BOM dropped
        (
            "\ufeffsetl_id\tmdtrt_id\tpsn_no\tmedfee_sumamt\tfund_pay_sumamt\tacct_pay\t"
            "refd_setl_flag\r\nS1\tMD1\tP1\t10\t6.00\t1.0\t0\r\n\r\n",
            [row()],
        ),
        (
            "S1\tMD1\tP1\t0.01\t0\t0\t1\n",
            [row(medfee=1, fund_pay_sumamt=0, acct_pay=0, refd_setl_flag="1")],
        ),
        ("", []),
    ],
)
def test_rows_are_read(text: str, expected: list[FileRow]) -> None:
    assert sf.parse_rows(text.encode()) == expected


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("S1\tMD1\tP1\t10\t6\t1\n", "FILE_INVALID", "line 1: 6 tab-separated columns"),
        ("S1\tMD1\tP1\t10.001\t6\t1\t0\n", "AMOUNT_INVALID", "line 1: medfee_sumamt"),
        ("S1\tMD1\tP1\t1e3\t6\t1\t0\n", "AMOUNT_INVALID", "medfee_sumamt"),
        ("S1\tMD1\tP1\t10\tNaN\t1\t0\n", "AMOUNT_INVALID", "fund_pay_sumamt"),
        ("S1\tMD1\tP1\t10\t6\t1\t2\n", "FILE_INVALID", "refd_setl_flag must be 0 or 1"),
        ("\tMD1\tP1\t10\t6\t1\t0\n", "FILE_INVALID", "setl_id must be"),
        ("S1\tMD 1\tP1\t10\t6\t1\t0\n", "FILE_INVALID", "mdtrt_id must be"),
        (
            "S1\tMD1\tP1\t10\t6\t1\t0\nS1\tMD2\tP1\t10\t6\t1\t0\n",
            "FILE_INVALID",
            "line 2: setl_id S1 is listed already (line 1)",
        ),
    ],
)
def test_bad_rows_are_refused_naming_the_line(text: str, code: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        sf.parse_rows(text.encode())
    assert refused.value.code == code
    assert words in refused.value.message


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(sf.FileInvalid, match="UTF-8"):
        sf.parse_rows("S1\t张三".encode("gbk"))


def test_too_many_rows_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MAX_ROWS", 2)
    text = "".join(f"S{i}\tMD1\tP1\t1\t1\t0\t0\n" for i in range(3)).encode()
    with pytest.raises(sf.FileTooLarge):
        sf.parse_rows(text)


GOOD = b"S1\tMD1\tP1\t10\t6\t1\t0\n"


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"not a zip at all", "FILE_INVALID", "not a readable zip"),
        (zip_of(("a.txt", GOOD))[:-10], "FILE_INVALID", "not a readable zip"),
        (zip_of(), "FILE_INVALID", "holds 0 entries"),
        (zip_of(("a.txt", GOOD), ("b.txt", GOOD)), "FILE_INVALID", "holds 2 entries"),
        (zip_of(("/etc/a.txt", GOOD)), "FILE_INVALID", "without a path"),
        (zip_of(("../a.txt", GOOD)), "FILE_INVALID", "without a path"),
        (zip_of(("x/../../a.txt", GOOD)), "FILE_INVALID", "without a path"),
        (zip_of(("..\\a.txt", GOOD)), "FILE_INVALID", "without a path"),
        (zip_of(("C:a.txt", GOOD)), "FILE_INVALID", "without a path"),
        (zip_of(("dir/", b"")), "FILE_INVALID", "without a path"),
        (zip_of(("a.txt", GOOD), method=zipfile.ZIP_BZIP2), "FILE_INVALID", "compression"),
    ],
)
def test_bad_zips_are_refused(data: bytes, code: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        sf.read_upload(data)
    assert refused.value.code == code
    assert words in refused.value.message


def test_a_stored_member_and_a_subfolder_name_are_accepted() -> None:
    assert sf.read_upload(zip_of(("stmt/a.txt", GOOD), method=zipfile.ZIP_STORED)) == [
        row(medfee=1000, fund_pay_sumamt=600, acct_pay=100)
    ]


def test_an_encrypted_member_is_refused() -> None:
    data = bytearray(zip_of(("a.txt", GOOD)))
    # general purpose flag, bit 0, in the local header (offset 6) and the central one
    data[6] |= 1
    central = data.rindex(b"PK\x01\x02")
    data[central + 8] |= 1
    with pytest.raises(sf.FileInvalid, match="encrypted"):
        sf.read_upload(bytes(data))


def test_a_zip_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MAX_TEXT_BYTES", 1000)
    bomb = zip_of(("a.txt", b"0" * 100_000))
    assert len(bomb) < 1000
    with pytest.raises(sf.FileTooLarge):
        sf.read_upload(bomb)


def test_a_zip_bomb_lying_about_its_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MAX_TEXT_BYTES", 1000)
    data = bytearray(zip_of(("a.txt", b"0" * 100_000)))
    # the uncompressed size claimed by the central directory: 10 bytes
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(InvalidRequest) as refused:
        sf.read_upload(bytes(data))
    assert refused.value.code in ("FILE_INVALID", "FILE_TOO_LARGE")


def test_a_file_over_the_size_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MAX_FILE_BYTES", 100)
    with pytest.raises(sf.FileTooLarge):
        sf.read_upload(zip_of(("a.txt", GOOD * 20), method=zipfile.ZIP_STORED))


@pytest.mark.parametrize("name", ["stmt.zip", "对账_20261130.zip", "A-1_b.ZIP"])
def test_good_filenames(name: str) -> None:
    assert sf.check_filename(name) == name


@pytest.mark.parametrize("name", ["", ".zip", "a/b.zip", "..", "a\\b", "a b.zip", "a\n", "x" * 101])
def test_bad_filenames(name: str) -> None:
    with pytest.raises(sf.FileInvalid):
        sf.check_filename(name)


def test_gateway_msgid() -> None:
    assert sf.gateway_msgid("gw:H1202611301200000001") == "H1202611301200000001"
    assert sf.gateway_msgid("IK1234") == ""


def result_of(lines: list[sf.ResultLine]) -> list[list[str]]:
    with zipfile.ZipFile(io.BytesIO(sf.result_zip(lines))) as archive:
        assert archive.namelist() == ["result.txt"]
        text = archive.read("result.txt").decode()
    return [line.split("\t") for line in text.splitlines()]


def test_comparison_missing_extra_mismatching_reversed_and_outside() -> None:
    rows = [
        row("S1"),  # agrees
        row("S2", 1001),  # medfee differs
        row("S3"),  # unknown to cardsvc
        row("S5", refd_setl_flag="1"),  # reversed on both sides
        row("S7"),  # settled at cardsvc on another day
    ]
    ours = [
        settled("S1", msgid="H1m1"),
        settled("S2"),
        settled("S4"),  # missing from the file
        settled("S5", reversed=True),
        settled("S6", reversed=True),  # reversed, not listed
    ]
    elsewhere = {"S7": settled("S7", setl_date=DAY - dt.timedelta(days=40), msgid="H1m7")}
    lines = sf.compare(rows, ours, elsewhere)
    table = result_of(lines)
    assert [line[2] for line in table] == ["S1", "S2", "S3", "S4", "S5", "S6", "S7"]
    by_id = {line[2]: line for line in table}
    assert by_id["S1"] == ["P1", "MD1", "S1", "H1m1", "0", "0", "", "10.00", "6.00", "1.00"]
    assert by_id["S2"][4:7] == ["1", "0", "medfee_sumamt: facility 10.01, cardsvc 10.00"]
    assert by_id["S2"][7] == "10.00"  # cardsvc's figures where it has the settlement
    assert by_id["S3"][4] == "1" and "unknown to cardsvc" in by_id["S3"][6]
    assert by_id["S4"][4:7] == ["1", "0", "not in the facility's file"]
    assert by_id["S5"][4:7] == ["0", "1", ""]
    assert by_id["S6"][4:7] == ["1", "1", "not in the facility's file (reversed at cardsvc)"]
    assert by_id["S7"][3:5] == ["H1m7", "1"]
    assert "2026-10-21, outside the period" in by_id["S7"][6]


def test_every_difference_is_named() -> None:
    theirs = row(
        "S1", 1000, mdtrt_id="MDX", psn_no="PX", fund_pay_sumamt=1, acct_pay=2, refd_setl_flag="1"
    )
    (line,) = sf.compare([theirs], [settled("S1")], {})
    assert line.memo == (
        "mdtrt_id: facility MDX, cardsvc MD1; psn_no: facility PX, cardsvc P1;"
        " fund_pay_sumamt: facility 0.01, cardsvc 6.00; acct_pay: facility 0.02, cardsvc 1.00;"
        " refd_setl_flag: facility 1, cardsvc 0"
    )


def test_header_totals_count_what_is_not_reversed() -> None:
    ours = [settled("S1", 1000), settled("S2", 2000), settled("S3", 5000, reversed=True)]
    totals = sf.service_totals(ours)
    assert totals == sf.HeaderTotals(
        medfee_sumamt=3000, fund_pay_sumamt=1200, cash_payamt=1600, fixmedins_setl_cnt=2
    )
    assert sf.header_differences(totals, totals) == []
    declared = sf.HeaderTotals(
        medfee_sumamt=3001, fund_pay_sumamt=1200, cash_payamt=1600, fixmedins_setl_cnt=3
    )
    assert sf.header_differences(declared, totals) == [
        "medfee_sumamt: facility 30.01, cardsvc 30.00",
        "fixmedins_setl_cnt: facility 3, cardsvc 2",
    ]


def test_amounts_leave_as_yuan_with_two_decimals() -> None:
    line = sf.compare([], [settled("S1", 0, fund_pay_sumamt=5, acct_pay=123456789)], {})
    assert result_of(line)[0][7:] == ["0.00", "0.05", "1234567.89"]
