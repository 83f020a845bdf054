"""Finding a person by identity number (``mdtrt_cert_type`` ``02``), bounded per client.

Whether a number belongs to somebody is itself personal data: with what a card's 1101
answer shows (masked number, birth year, gender, region) about 3,300 numbers still fit,
and answering "nobody" for each wrong one would let a gateway client try them all. So the
lookups of each gateway client that find nobody (``PERSON_NOT_FOUND``) are counted per
business day (Asia/Shanghai); once the day's count reaches the limit
(``CARDSVC_GATEWAY_CERTNO_MISSES_PER_DAY``), every lookup by identity number of that
client is refused for the rest of the day (``CERTNO_LOOKUP_LIMIT``, retryable the next
day), found or not, so the refusal tells nothing either. A malformed number
(``INVALID_CERTNO``, the check character is public arithmetic) is refused before and not
counted. A lookup by card (``03``) is never limited here.

One statement per lookup: the person's row is probed through its keyed lookup hash and,
if it is nobody's, the miss is counted under the counter row's lock, so concurrent lookups
never count past the limit.
"""

from __future__ import annotations

import datetime as dt

import structlog

from cardsvc import clock
from cardsvc.db import Pool
from cardsvc.errors import InvalidRequest, NotFound, RateLimited
from cardsvc.ops.metrics import GATEWAY_CERTNO_LOOKUPS
from cardsvc.persons import certno
from cardsvc.privacy import DataProtector

log = structlog.get_logger(__name__)

# $1 paasid, $2 business date, $3 the day's limit, $4 the number's lookup hash. ``prior``
# is the day's count before this statement (a data-modifying CTE is invisible to the rest
# of its statement); ``counted`` is the new count when this lookup was a miss counted
# under the limit (the upsert waits for the row's lock and rechecks its condition).
_LOOKUP = """
WITH found AS (SELECT psn_no FROM persons WHERE certno_hash = $4),
counted AS (
    INSERT INTO gateway_certno_misses AS m (paasid, business_date, misses)
    SELECT $1, $2, 1 WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT (paasid) DO UPDATE
        SET business_date = $2,
            misses = CASE WHEN m.business_date < $2 THEN 1 ELSE m.misses + 1 END
        WHERE m.business_date < $2 OR (m.business_date = $2 AND m.misses < $3)
    RETURNING misses
)
SELECT (SELECT psn_no FROM found) AS psn_no,
       (SELECT misses FROM counted) AS counted,
       coalesce((SELECT misses FROM gateway_certno_misses
                 WHERE paasid = $1 AND business_date = $2), 0) AS prior
"""


def _seconds_to_next_day(now: dt.datetime) -> float:
    local = now.astimezone(clock.BUSINESS_TZ)
    midnight = dt.datetime.combine(
        local.date() + dt.timedelta(days=1), dt.time(), tzinfo=clock.BUSINESS_TZ
    )
    return max(1.0, (midnight - local).total_seconds())


def limit_reached(now: dt.datetime) -> RateLimited:
    return RateLimited(
        "this gateway client has had too many lookups by identity number that found nobody"
        " today: use the card (mdtrt_cert_type 03), or send the message again tomorrow",
        retry_after=_seconds_to_next_day(now),
        code="CERTNO_LOOKUP_LIMIT",
    )


class CertnoLookups:
    def __init__(self, pool: Pool, protector: DataProtector, misses_per_day: int) -> None:
        self._pool, self._protector, self._limit = pool, protector, misses_per_day

    async def psn_no(self, paasid: str, number: str, now: dt.datetime) -> str:
        """The person with identity number ``number``: INVALID_CERTNO, PERSON_NOT_FOUND
        (counted), or CERTNO_LOOKUP_LIMIT (the client's misses today reached the limit)."""
        try:
            valid = certno.validate(number)
        except certno.InvalidCertno as exc:
            raise InvalidRequest(str(exc), code="INVALID_CERTNO") from None
        row = await self._pool.fetchrow(
            _LOOKUP,
            paasid,
            clock.business_date(now),
            self._limit,
            self._protector.lookup_hash(valid),
        )
        if row is None:  # the statement answers one row, always
            raise RuntimeError("the identity number lookup answered no row")
        if row["prior"] >= self._limit or (row["psn_no"] is None and row["counted"] is None):
            GATEWAY_CERTNO_LOOKUPS.labels("refused").inc()
            log.warning("gateway_certno_lookup_limit", paasid=paasid, limit=self._limit)
            raise limit_reached(now)
        if row["psn_no"] is None:
            GATEWAY_CERTNO_LOOKUPS.labels("not_found").inc()
            raise NotFound("no person has this identity number", code="PERSON_NOT_FOUND")
        GATEWAY_CERTNO_LOOKUPS.labels("found").inc()
        return str(row["psn_no"])
