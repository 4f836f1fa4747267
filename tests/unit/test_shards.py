"""Shard hashing and lease balancing (``coordinator/shards.py``)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.coordinator.shards import balance, shard_for

member_ids = st.lists(
    st.text("abcdefgh0123456789-", min_size=1, max_size=6), min_size=1, max_size=12, unique=True
)
shard_counts = st.integers(1, 120)


def loads(assignment: Mapping[int, str], members: list[str]) -> dict[str, int]:
    counted = Counter(assignment.values())
    return {member: counted.get(member, 0) for member in members}


def assert_balanced(assignment: Mapping[int, str], members: list[str], shard_count: int) -> None:
    assert sorted(assignment) == list(range(shard_count)), "every shard exactly once"
    assert set(assignment.values()) <= set(members)
    fair = shard_count / len(members)
    for member, load in loads(assignment, members).items():
        assert load in (math.floor(fair), math.ceil(fair)), f"{member} holds {load} of {shard_count}"


def moved(before: Mapping[int, str], after: Mapping[int, str]) -> set[int]:
    return {shard for shard, holder in after.items() if before.get(shard) != holder}


# --- shard_for ----------------------------------------------------------------------------------


def test_shard_for_is_stable_across_processes_and_releases() -> None:
    """Pinned values: changing the hash would strand every stored workflow on the wrong shard."""
    # CRC-32's published check value: the hash is the standard one, not Python's salted hash().
    assert shard_for("123456789", 2**32) == 0xCBF43926
    assert [shard_for(f"wf-{i}", 100) for i in range(5)] == [48, 62, 88, 46, 13]
    assert shard_for("0190b2c6-7d1e-7c3a-9a4e-5f1d2b3c4d5e", 100) == 6
    assert shard_for("", 7) == 0


@settings(max_examples=200, deadline=None)
@given(workflow_id=st.text(max_size=80), shard_count=st.integers(1, 10_000))
def test_shard_for_is_in_range_and_repeatable(workflow_id: str, shard_count: int) -> None:
    shard = shard_for(workflow_id, shard_count)

    assert 0 <= shard < shard_count
    assert shard_for(workflow_id, shard_count) == shard


def test_shard_for_spreads_ids_over_every_shard() -> None:
    counts = Counter(shard_for(f"workflow-{i}", 10) for i in range(10_000))

    assert sorted(counts) == list(range(10))
    assert min(counts.values()) > 800  # 1,000 expected per shard


# --- balance ------------------------------------------------------------------------------------


def test_no_members_hold_nothing() -> None:
    assert balance({0: "a", 1: "b"}, [], 2) == {}


def test_more_members_than_shards_gives_some_members_none() -> None:
    assignment = balance({}, ["a", "b", "c", "d"], 2)

    assert_balanced(assignment, ["a", "b", "c", "d"], 2)
    assert assignment == {0: "a", 1: "b"}


def test_lone_member_gets_every_shard() -> None:
    assert balance({3: "gone"}, ["solo"], 5) == dict.fromkeys(range(5), "solo")


@settings(max_examples=200, deadline=None)
@given(
    members=member_ids,
    shard_count=shard_counts,
    holders=st.lists(st.text("abcdefgh0123456789-", min_size=1, max_size=6), max_size=15),
    data=st.data(),
)
def test_any_starting_point_ends_balanced_with_every_shard_once(
    members: list[str], shard_count: int, holders: list[str], data: st.DataObject
) -> None:
    """Starting from arbitrary leases, held by members, departed executors or nobody."""
    candidates = [None, *members, *holders]
    drawn = data.draw(
        st.lists(st.sampled_from(candidates), min_size=shard_count, max_size=shard_count), label="holders"
    )
    current = {shard: holder for shard, holder in enumerate(drawn) if holder is not None}

    assignment = balance(current, members, shard_count)

    assert_balanced(assignment, members, shard_count)
    # As few moves as any balanced assignment needs: every member keeps up to its fair share,
    # and the members allowed one extra shard are among those that already hold that many.
    base, extra = divmod(shard_count, len(members))
    held = sorted((sum(1 for h in current.values() if h == m) for m in members), reverse=True)
    most_keepable = sum(min(h, base) for h in held) + sum(1 for h in held[:extra] if h > base)
    kept = shard_count - len(moved(current, assignment))
    assert kept == most_keepable


@settings(max_examples=200, deadline=None)
@given(members=member_ids, shard_count=shard_counts, newcomer=st.text("XYZ", min_size=1, max_size=3))
def test_joining_member_takes_about_its_share_and_nothing_else_moves(
    members: list[str], shard_count: int, newcomer: str
) -> None:
    before = balance({}, members, shard_count)

    after = balance(before, [*members, newcomer], shard_count)

    assert_balanced(after, [*members, newcomer], shard_count)
    changed = moved(before, after)
    assert {after[shard] for shard in changed} <= {newcomer}, "shards only move to the newcomer"
    assert len(changed) in (shard_count // (len(members) + 1), math.ceil(shard_count / (len(members) + 1)))


@settings(max_examples=200, deadline=None)
@given(members=member_ids.filter(lambda m: len(m) >= 2), shard_count=shard_counts, data=st.data())
def test_leaving_member_hands_over_only_its_own_shards(
    members: list[str], shard_count: int, data: st.DataObject
) -> None:
    before = balance({}, members, shard_count)
    leaver = data.draw(st.sampled_from(members), label="leaver")
    remaining = [member for member in members if member != leaver]

    after = balance(before, remaining, shard_count)

    assert_balanced(after, remaining, shard_count)
    assert moved(before, after) == {shard for shard, holder in before.items() if holder == leaver}


@settings(max_examples=100, deadline=None)
@given(members=member_ids, shard_count=shard_counts, seed=st.integers(0, 1000))
def test_balance_is_deterministic_whatever_the_order_of_its_inputs(
    members: list[str], shard_count: int, seed: int
) -> None:
    rng = random.Random(seed)
    current = {
        shard: rng.choice([*members, "departed"]) for shard in range(shard_count) if rng.random() < 0.7
    }
    shuffled_members = rng.sample(members, len(members))
    shuffled_current = dict(rng.sample(sorted(current.items()), len(current)))

    assert balance(current, members, shard_count) == balance(shuffled_current, shuffled_members, shard_count)


def test_repeated_balancing_of_a_balanced_assignment_moves_nothing() -> None:
    members = ["exec-a", "exec-b", "exec-c"]
    first = balance({}, members, 100)

    assert balance(first, members, 100) == first
    assert sorted(loads(first, members).values()) == [33, 33, 34]


@pytest.mark.parametrize(("members", "shards"), [(3, 100), (7, 100), (50, 100), (100, 100)])
def test_growing_a_pool_one_member_at_a_time_moves_about_shards_over_members_each_time(
    members: int, shards: int
) -> None:
    pool = [f"exec-{i:03d}" for i in range(members)]
    assignment = balance({}, pool[:1], shards)
    for size in range(2, members + 1):
        after = balance(assignment, pool[:size], shards)
        assert len(moved(assignment, after)) <= math.ceil(shards / size)
        assignment = after
    assert_balanced(assignment, pool, shards)
