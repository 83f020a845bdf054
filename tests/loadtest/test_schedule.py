"""The open-loop schedule: when requests are due, and which a wake of the generator sends."""

from __future__ import annotations

import random

from loadtest import schedule


def test_offsets_are_sorted_within_the_duration_and_limit():
    due = schedule.offsets(200.0, 5.0, "poisson", random.Random(7), 10_000)
    assert due == sorted(due)
    assert all(0 < t < 5.0 for t in due)
    assert 800 < len(due) < 1200
    assert len(schedule.offsets(200.0, 5.0, "poisson", random.Random(7), 50)) == 50
    assert schedule.offsets(4.0, 1.0, "fixed", random.Random(7), 10) == [0.0, 0.25, 0.5, 0.75]


def test_a_wake_releases_every_request_due_by_now_and_none_before_its_time():
    due = [0.1, 0.2, 0.2, 0.35, 0.5]
    assert schedule.released(due, 0, 0.05, 32) == 0  # nothing due yet
    assert schedule.released(due, 0, 0.1, 32) == 1  # due exactly now: sent
    assert schedule.released(due, 1, 0.2, 32) == 3  # both due at 0.2
    assert schedule.released(due, 3, 0.3499, 32) == 3  # 0.35 is not due at 0.3499
    assert schedule.released(due, 3, 9.0, 32) == 5  # late: all the rest
    assert schedule.released(due, 5, 9.0, 32) == 5  # none left


def test_a_wake_behind_schedule_releases_at_most_the_bound():
    due = [n / 1000 for n in range(100)]
    assert schedule.released(due, 0, 1.0, 32) == 32
    assert schedule.released(due, 32, 1.0, 32) == 64
    assert schedule.released(due, 96, 1.0, 32) == 100


def test_releasing_wake_by_wake_sends_each_request_once_in_order():
    rng = random.Random(3)
    due = schedule.offsets(500.0, 2.0, "poisson", rng, 10_000)
    sent: list[float] = []
    first, now = 0, 0.0
    while first < len(due):
        now += rng.uniform(0.0, 0.01)  # wakes at uneven times
        upto = schedule.released(due, first, now, 8)
        assert all(t <= now for t in due[first:upto])
        sent.extend(due[first:upto])
        first = upto
    assert sent == due
