"""Fair shares of listener slots between instances."""

from __future__ import annotations

from jobwire.listeners.domain.placement import fair_share, to_shed


def test_shares_round_up_so_every_slot_has_a_taker() -> None:
    per_listener, total = fair_share({"kafka": 3, "files": 1, "bus": 1}, instances=2)

    assert per_listener == {"kafka": 2, "files": 1, "bus": 1}
    assert total == 3


def test_no_instances_known_counts_as_one() -> None:
    assert fair_share({"a": 2}, instances=0) == ({"a": 2}, 2)


def test_an_instance_over_its_share_gives_up_one_slot() -> None:
    # Alone, it took all three; a second instance joined.
    held = {"kafka": {0, 1, 2}}

    assert to_shed({"kafka": 3}, held, instances=2) == ("kafka", 2)
    assert to_shed({"kafka": 3}, {"kafka": {0, 1}}, instances=2) is None


def test_over_the_total_share_across_listeners() -> None:
    held = {"a": {0}, "b": {0}, "c": {0}, "d": {0}}

    assert to_shed({"a": 1, "b": 1, "c": 1, "d": 1}, held, instances=2) == ("d", 0)
    assert to_shed({"a": 1, "b": 1, "c": 1, "d": 1}, held, instances=1) is None


def test_a_slot_of_a_removed_listener_is_over_any_share() -> None:
    assert to_shed({}, {"gone": {0}}, instances=1) == ("gone", 0)
