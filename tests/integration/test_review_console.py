"""Findings of the hostile review of the console's API: answers with personal data are
never kept by a browser or a proxy, and the public fund report singles out nobody."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tests.support.api import Service

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _raw(service: Service, path: str, *, admin: bool = True) -> tuple[int, Any, bytes]:
    headers = {"Authorization": f"Bearer {service.admin_token}"} if admin else {}
    async with service.http.get(service.base_url + path, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_v1_answers_with_personal_data_are_not_stored_by_caches(service: Service):
    person = await service.person()
    for path in (
        f"/v1/persons?q={person['psn_no']}",
        f"/v1/persons/{person['psn_no']}/overview",
        "/v1/persons/3202009999999999/overview",  # an error answer too
    ):
        _, headers, _ = await _raw(service, path)
        assert headers.get("Cache-Control") == "no-store", path


@pytest.mark.parametrize(
    "path",
    [
        "/v1/settlements?sort=-medfee_sumamt",
        "/v1/settlements?sort=fund_pay_sumamt&status=settled",
        "/v1/settlements?sort=-medfee_sumamt&from=2026-01-01&to=2026-12-31",
        "/v1/persons?sort=psn_name",
        "/v1/persons?sort=-created_at&page=2",
        "/v1/supervision/flags?sort=rule&handled=false",
    ],
)
async def test_a_sort_no_index_serves_needs_a_narrowing_filter(service: Service, path: str):
    """Sorting the whole settlements (or persons) table by an unindexed column on every
    request is a cheap way to load the database: such a sort needs a narrowing filter."""
    status, _, raw = await _raw(service, path)
    assert status == 422, raw
    error = msgspec.json.decode(raw)["error"]
    assert error["code"] == "QUERY_INVALID" and error["details"] == {"parameter": "sort"}


async def test_an_unindexed_sort_of_narrowed_rows_is_answered(service: Service):
    person = await service.person(psn_name="排序测试")
    for path in (
        f"/v1/settlements?sort=-medfee_sumamt&psn_no={person['psn_no']}",
        "/v1/settlements?sort=-medfee_sumamt&from=2026-11-01&to=2026-12-01",
        "/v1/persons?sort=psn_name&q=排序",
        "/v1/supervision/flags?sort=rule&from=2026-11-01&to=2026-11-30",
        "/v1/settlements",  # the default sort reads an index: no filter needed
        "/v1/persons",
    ):
        status, _, raw = await _raw(service, path)
        assert status == 200, (path, raw)


async def test_a_period_overlapping_a_published_one_is_refused(service: Service):
    """Two reports of overlapping periods differ by what only one of them counts: a
    withheld figure would be their difference. Periods of published reports never overlap."""

    async def publish(start: str, end: str) -> tuple[int, Any]:
        period = {"period_from": start, "period_to": end, "title": f"{start}..{end}"}
        return await service.admin("POST", "/v1/public-reports", period)

    status, first = await publish("2019-02-01", "2019-02-28")
    assert status == 201, first
    for start, end in (
        ("2019-02-01", "2019-03-01"),  # one day more: that day's figures by subtraction
        ("2019-02-28", "2019-02-28"),
        ("2019-01-15", "2019-02-01"),
        ("2019-02-01", "2019-02-28"),  # the same again, after a reversal perhaps
    ):
        status, body = await publish(start, end)
        assert status == 409, (start, end, body)
        assert body["error"]["code"] == "PERIOD_OVERLAPS"
        assert body["error"]["details"] == {"report_id": first["report_id"]}
    status, body = await publish("2019-03-01", "2019-03-31")
    assert status == 201, body
