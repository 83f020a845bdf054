from __future__ import annotations

import pytest

from cardsvc.money import yuan_figure


@pytest.mark.parametrize(
    ("fen", "figure"),
    [
        (0, "0.00"),
        (1, "0.01"),
        (10, "0.10"),
        (100, "1.00"),
        (123456, "1234.56"),
        (100000000, "1000000.00"),
        (-1, "-0.01"),
        (-150, "-1.50"),
        (-100000000, "-1000000.00"),
        (2**63 - 1, "92233720368547758.07"),  # exact where a float is not
    ],
)
def test_fen_become_yuan_with_two_decimals_exactly(fen, figure):
    assert yuan_figure(fen) == figure
