"""Findings of the hostile review of the console's API: answers with personal data are
never kept by a browser or a proxy, and the public fund report singles out nobody."""

from __future__ import annotations

from typing import Any

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
