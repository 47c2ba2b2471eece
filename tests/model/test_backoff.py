"""Backoff: the one exponential delay every retry loop waits through."""

from __future__ import annotations

import random

import pytest

from runtime.model.backoff import Backoff


def test_next_doubles_up_to_the_cap_and_stays_there() -> None:
    retry = Backoff(0.1, cap=1.0)
    assert [retry.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_reset_starts_again_from_initial() -> None:
    retry = Backoff(0.05, cap=2.0)
    for _ in range(4):
        retry.next()
    retry.reset()
    assert retry.next() == pytest.approx(0.05)


def test_factor_sets_the_growth() -> None:
    retry = Backoff(1.0, factor=3.0, cap=20.0)
    assert [retry.next() for _ in range(4)] == pytest.approx([1.0, 3.0, 9.0, 20.0])


def test_a_cap_below_initial_wins() -> None:
    retry = Backoff(0.5, cap=0.2)
    assert [retry.next() for _ in range(2)] == pytest.approx([0.2, 0.2])


def test_at_counts_attempts_from_one_without_state() -> None:
    retry = Backoff(0.2, cap=30.0)
    assert [retry.at(n) for n in (1, 2, 3, 9, 10)] == pytest.approx([0.2, 0.4, 0.8, 30.0, 30.0])
    assert retry.next() == pytest.approx(0.2)  # `at` did not move the sequence


def test_at_is_uncapped_by_default_and_never_overflows() -> None:
    assert Backoff(0.2).at(4) == pytest.approx(1.6)
    assert Backoff(0.2, cap=5.0).at(100_000) == 5.0


def test_jitter_draws_each_delay_below_the_plain_one() -> None:
    plain = Backoff(0.1, cap=5.0)
    jittered = Backoff(0.1, cap=5.0, jitter=0.5, rng=random.Random(7))
    for _ in range(10):
        expected = plain.next()
        assert expected * 0.5 <= jittered.next() <= expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1.0},
        {"initial": 1.0, "cap": -1.0},
        {"initial": 1.0, "factor": 0.5},
        {"initial": 1.0, "jitter": 2.0},
    ],
)
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**kwargs)


@pytest.mark.anyio
async def test_sleep_waits_the_next_delay() -> None:
    retry = Backoff(0.001, cap=0.004)
    await retry.sleep()
    await retry.sleep()
    assert retry.next() == pytest.approx(0.004)  # the two sleeps took 0.001 and 0.002
