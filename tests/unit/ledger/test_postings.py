from __future__ import annotations

import pytest

from cardsvc.ledger.postings import Posting, UnbalancedPosting, check_balanced


def test_balanced_postings_pass():
    check_balanced([Posting("a", "D", 100), Posting("b", "C", 60), Posting("c", "C", 40)])


@pytest.mark.parametrize(
    "postings",
    [
        [],
        [Posting("a", "D", 100), Posting("b", "C", 99)],
        [Posting("a", "D", 0), Posting("b", "C", 0)],
        [Posting("a", "D", -5), Posting("b", "C", -5)],
    ],
)
def test_unbalanced_or_empty_postings_are_refused(postings: list[Posting]):
    with pytest.raises(UnbalancedPosting):
        check_balanced(postings)
