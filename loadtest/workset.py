"""The working set: the cards the load uses, with real card keys.

Chosen evenly over the whole population (not the first rows inserted), so a larger city
really spreads the load over larger tables. Each card's keys come from hsm_stub exactly as at
a counter: the personalisation command seals ``K_auth ‖ K_txn`` under the counter
terminal's key, and the harness, holding the counter's clear key, unseals them. Card
authentication then verifies for real.
"""

from __future__ import annotations

import asyncio
import ssl

import asyncpg
from tqdm import tqdm

from cardcrypto import profile
from cardsvc.hsm.client import HsmClient
from loadtest import population
from loadtest.state import City, Terminal, WorkCard

PIN = "123456"  # the soft cards' PIN; the service never sees it


def chosen_indices(persons: int, size: int) -> list[int]:
    size = min(size, persons)
    return sorted({k * persons // size for k in range(size)})


async def build(
    database_url: str,
    city: City,
    counter: Terminal,
    hsm: tuple[str, int, ssl.SSLContext],
    size: int,
    known: list[WorkCard],
) -> list[WorkCard]:
    indices = chosen_indices(city.persons, size)
    by_psn = {population.psn_no(city.admdvs, city.psn_seq_base + 1 + i): i for i in indices}
    conn = await asyncpg.connect(database_url)
    try:
        counter_key_under_lmk = await conn.fetchval(
            "SELECT key_under_lmk FROM terminals WHERE terminal_id = $1", counter.terminal_id
        )
        rows = await conn.fetch(
            "SELECT card_no, card_sn, psn_no FROM cards"
            " WHERE psn_no = ANY($1::text[]) AND status = 'active' ORDER BY psn_no",
            list(by_psn),
        )
    finally:
        await conn.close()
    keys = {c.card_sn: (c.k_auth, c.k_txn) for c in known}
    clear_counter_key = bytes.fromhex(counter.key)
    cards: list[WorkCard] = []
    todo = [r for r in rows if r["card_sn"] not in keys]
    host, port, tls = hsm
    async with HsmClient(host, port, tls=tls, connections=4, timeout=10.0) as client:
        gate = asyncio.Semaphore(128)

        async def personalise(card_sn: str) -> None:
            async with gate:
                blob = await client.build_personalization_blob(
                    city.admdvs, card_sn, bytes(counter_key_under_lmk)
                )
            k_auth, k_txn = profile.unseal_card_keys(clear_counter_key, card_sn, blob)
            keys[card_sn] = (k_auth.hex(), k_txn.hex())

        with tqdm(total=len(todo), unit="cards", desc="card keys") as bar:
            for chunk in range(0, len(todo), 1000):
                part = todo[chunk : chunk + 1000]
                await asyncio.gather(*(personalise(r["card_sn"]) for r in part))
                bar.update(len(part))
    for r in rows:
        i = by_psn[r["psn_no"]]
        person = population.Person(i)
        k_auth, k_txn = keys[r["card_sn"]]
        cards.append(
            WorkCard(
                card_no=r["card_no"],
                card_sn=r["card_sn"],
                psn_no=r["psn_no"],
                psn_type=person.psn_type,
                gend=person.gend,
                insutypes=person.insutypes,
                injury_case_id=(
                    population.case_id(city.case_seq_base + 1 + i) if person.injured else None
                ),
                k_auth=k_auth,
                k_txn=k_txn,
            )
        )
    return cards
