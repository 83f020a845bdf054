from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cardsvc.vcard.state import CardState, CardStateError, StateFile, blank, load, save


def test_state_round_trips_through_a_0600_file(tmp_path: Path):
    path = tmp_path / "card.json"
    state = CardState(lifecycle="locked", ef05={"07": "41"}, k_auth="00" * 16, pin_tries_left=1)
    save(path, state)
    assert load(path) == state
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]  # no temporary left behind


def test_saving_replaces_a_file_that_had_a_looser_mode(tmp_path: Path):
    path = tmp_path / "card.json"
    path.write_text("{}")
    path.chmod(0o644)
    save(path, blank())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no card state"),
        ("not json", "is not a card state"),
        ('{"lifecycle": "broken"}', "is not a card state"),
        ('{"unknown": 1}', "is not a card state"),
        ('{"format": 9}', "unknown card state format"),
    ],
)
def test_a_bad_state_file_is_a_clear_error(tmp_path: Path, content: str | None, message: str):
    path = tmp_path / "card.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CardStateError, match=message):
        load(path)


def test_blank_is_made_only_when_asked_and_never_over_a_card(tmp_path: Path):
    store = StateFile(tmp_path / "cards" / "card.json")
    with pytest.raises(CardStateError):
        store.load_or_blank(create_blank=False)
    assert store.load_or_blank(create_blank=True) == blank()
    store.save(CardState(lifecycle="locked"))
    assert store.load_or_blank(create_blank=True).lifecycle == "locked"
