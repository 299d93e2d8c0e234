"""The holder side of fenced ownership (caxton.cluster.ownership), against a real store:
which writes a holder applies, which it refuses, what it promises, and that promises and
versions survive a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from caxton.cluster.ownership import Fence, Ownership, majority
from caxton.errors import ValidationError
from caxton.store import Store


def holder(store: Store) -> Ownership:
    """An Ownership of a node that hosts no agent (only what _apply/_promise use)."""
    node = SimpleNamespace(store=store, agents=None)
    cluster = SimpleNamespace(node=node, node_id="h1")
    failover: Any = SimpleNamespace(
        cluster=cluster, node=node, node_id="h1", durability="quorum", trust=None
    )
    return Ownership(failover)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "local.db")
    await store.open()
    yield store
    await store.close()


def write(
    generation: int,
    version: int,
    *,
    base: int = 0,
    full: bool = False,
    puts: dict[bytes, bytes] | None = None,
    deletes: tuple[bytes, ...] = (),
) -> list[Any]:
    items = [[k, v] for k, v in (puts or {}).items()]
    return ["a1", generation, base, version, full, items, list(deletes)]


async def test_deltas_apply_in_order_and_gaps_ask_for_the_whole_state(store: Store) -> None:
    own = holder(store)
    await own.start()
    assert await own.on_writes("o", [write(1, 5, full=True, puts={b"n": b"1"})]) == [["ok", 5]]
    assert await own.on_writes("o", [write(1, 6, base=5, puts={b"n": b"2"})]) == [["ok", 6]]
    # A delta from a version this holder never had: a gap.
    assert await own.on_writes("o", [write(1, 9, base=8, puts={b"n": b"9"})]) == [["gap", 6]]
    # A duplicate (or a late frame) changes nothing.
    assert await own.on_writes("o", [write(1, 6, base=5, puts={b"n": b"X"})]) == [["ok", 6]]
    assert await own.on_writes("o", [write(1, 4, full=True, puts={b"n": b"old"})]) == [["ok", 6]]
    assert await store.load_kv("a1") == {b"n": b"2"}
    # A whole state replaces everything, deletions included.
    answer = await own.on_writes("o", [write(1, 10, full=True, puts={b"m": b"1"})])
    assert answer == [["ok", 10]]
    assert await store.load_kv("a1") == {b"m": b"1"}
    answer = await own.on_writes("o", [write(1, 11, base=10, deletes=(b"m",))])
    assert answer == [["ok", 11]]
    assert await store.load_kv("a1") == {}


async def test_a_promise_fences_lower_generations_and_survives_a_restart(
    store: Store, tmp_path: Path
) -> None:
    own = holder(store)
    await own.start()
    await own.on_writes("o", [write(1, 3, full=True, puts={b"n": b"3"})])
    answer = await own.on_promise("t", {"agent_id": "a1", "generation": 2})
    assert answer == ["promised", 1, 3, [[b"n", b"3"]], [1, [], []]]
    # The old owner (generation 1) is refused from now on; an equal promise too.
    assert await own.on_writes("o", [write(1, 4, base=3, puts={b"n": b"4"})]) == [["fenced", 2]]
    refused = await own.on_promise("x", {"agent_id": "a1", "generation": 2})
    assert refused == ["refused", 2, [1, [], []]]
    # The new owner's first write at generation 2 must bring the whole state.
    assert await own.on_writes("t", [write(2, 1, base=3, puts={b"n": b"5"})]) == [["gap", 0]]
    assert await own.on_writes("t", [write(2, 1, full=True, puts={b"n": b"5"})]) == [["ok", 1]]
    await store.close()

    again = Store(tmp_path / "local.db")
    await again.open()
    try:
        restarted = holder(again)
        await restarted.start()
        assert restarted.fences["a1"] == Fence(promised=2, generation=2, version=1)
        refused = await restarted.on_writes("o", [write(1, 9, full=True, puts={b"n": b"9"})])
        assert refused == [["fenced", 2]]
        assert await again.load_kv("a1") == {b"n": b"5"}
    finally:
        await again.close()


async def test_a_holder_remembers_the_replica_sets_it_was_told_of(
    store: Store, tmp_path: Path
) -> None:
    """The set of the generation it holds (from whole-state writes) and the sets proposed
    with its promises above it: what a takeover with an older record learns from it."""
    own = holder(store)
    await own.start()
    first = [*write(1, 3, full=True, puts={b"n": b"3"}), ["o", "h1", "h2"]]
    assert await own.on_writes("o", [first]) == [["ok", 3]]
    answer = await own.on_promise(
        "o", {"agent_id": "a1", "generation": 2, "members": ["o", "h3", "h4"]}
    )
    assert answer[-1] == [1, ["o", "h1", "h2"], []]
    # A takeover that only knows generation 1 learns both sets from the next answer.
    answer = await own.on_promise("t", {"agent_id": "a1", "generation": 3, "members": ["t"]})
    assert answer[-1] == [1, ["o", "h1", "h2"], [[2, ["o", "h3", "h4"]]]]
    await store.close()
    again = Store(tmp_path / "local.db")
    await again.open()
    try:
        restarted = holder(again)
        await restarted.start()
        assert restarted.fences["a1"] == Fence(
            3, 1, 3, ("o", "h1", "h2"), ((2, ("o", "h3", "h4")), (3, ("t",)))
        )
        # Holding the state of generation 3 drops the proposals up to it.
        third = [*write(3, 1, full=True, puts={b"n": b"4"}), ["t", "h1"]]
        assert await restarted.on_writes("t", [third]) == [["ok", 1]]
        assert restarted.fences["a1"] == Fence(3, 3, 1, ("t", "h1"), ())
    finally:
        await again.close()


async def test_a_stale_owner_cannot_move_its_old_state_to_a_newer_generation(
    store: Store,
) -> None:
    """The 100-fault run after b33b3c8: an owner cut off while the majority took its agent
    over at generation 2 came back and moved its replica set (a promise round at 3);
    the holders that had promised 2 promised 3 as well, so its old state became the
    newest and won. A move of the replica set names the owner's generation (owner_at):
    a member that promised a newer one to someone else refuses it."""
    own = holder(store)
    await own.start()
    await own.on_writes("o", [[*write(1, 3, full=True, puts={b"n": b"3"}), ["o", "h1", "x"]]])
    taken = await own.on_promise("t", {"agent_id": "a1", "generation": 2, "members": ["t"]})
    assert taken[0] == "promised"
    move = {"agent_id": "a1", "generation": 3, "members": ["o", "h1", "y"], "owner_at": 1}
    refused = await own.on_promise("o", move)
    assert refused[:2] == ["refused", 2]
    # The owner's own earlier move that did not complete does not stop its next one.
    own2 = holder(store)
    await own2.start()
    first = {"agent_id": "b1", "generation": 2, "members": ["o", "h1"], "owner_at": 1}
    assert (await own2.on_promise("o", first))[0] == "promised"
    again = {"agent_id": "b1", "generation": 3, "members": ["o", "h2"], "owner_at": 1}
    assert (await own2.on_promise("o", again))[0] == "promised"


async def test_malformed_writes_and_promises_are_refused(store: Store) -> None:
    own = holder(store)
    await own.start()
    with pytest.raises(ValidationError):
        await own.on_writes("o", [["a1", 1, 0, 1, True, [["not bytes", b"v"]], []]])
    with pytest.raises(ValidationError):
        await own.on_writes("o", {"not": "a list"})
    with pytest.raises(ValidationError):
        await own.on_promise("t", {"agent_id": "a1", "generation": "2"})


def test_majority() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
