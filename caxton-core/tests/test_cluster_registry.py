"""The agent registry: versions, deltas, tombstones, gaps, restarts and dropped nodes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caxton.cluster import AgentRegistry, Delta
from caxton.cluster.registry import AgentEntry
from caxton.errors import ValidationError


def replica_names(registry: AgentRegistry, node_id: str) -> set[str]:
    return {e.name for e in registry.entries(node_id)}


def roundtrip(delta: Delta) -> Delta:
    return Delta.from_wire(msgpack.unpackb(msgpack.packb(delta.to_wire())))


def test_announce_bumps_the_version_only_on_change() -> None:
    registry = AgentRegistry("n1", epoch=7)
    assert registry.version == (7, 0)
    entry = registry.announce("echo", "running", agent_id="a1", capabilities=["wasi"])
    assert entry is not None
    assert (entry.version, entry.node_id) == (1, "n1")
    assert registry.announce("echo", "running", agent_id="a1", capabilities=["wasi"]) is None
    assert registry.version == (7, 1)
    assert registry.announce("echo", "suspended", agent_id="a1", capabilities=["wasi"])
    assert registry.version == (7, 2)


def test_full_delta_then_incremental_deltas_replicate_state() -> None:
    owner, peer = AgentRegistry("n1", epoch=1), AgentRegistry("n2", epoch=2)
    owner.announce("a", "running")
    owner.announce("b", "running")
    assert peer.apply(roundtrip(owner.delta(None))) is not None
    assert replica_names(peer, "n1") == {"a", "b"}
    pushed = owner.version[1]
    owner.announce("c", "running")
    owner.withdraw("a")
    changes = peer.apply(roundtrip(owner.changes_since(pushed)))
    assert changes is not None
    assert sorted(kind for kind, _ in changes) == ["registered", "unregistered"]
    assert replica_names(peer, "n1") == {"b", "c"}
    assert peer.known_version("n1") == owner.version


def test_a_removed_agent_does_not_come_back_from_an_old_delta() -> None:
    owner, peer = AgentRegistry("n1", epoch=1), AgentRegistry("n2", epoch=2)
    owner.announce("echo", "running")
    old = owner.delta(None)
    owner.withdraw("echo")
    assert peer.apply(owner.delta(None)) is not None
    assert peer.lookup("echo") == []
    assert peer.apply(old) == []  # older than the copy held: ignored
    assert peer.lookup("echo") == []


def test_a_delta_with_a_gap_is_refused() -> None:
    owner, peer = AgentRegistry("n1", epoch=1), AgentRegistry("n2", epoch=2)
    owner.announce("a", "running")
    peer.apply(owner.delta(None))
    owner.announce("b", "running")
    skipped = owner.version[1]
    owner.announce("c", "running")
    assert peer.apply(owner.changes_since(skipped)) is None  # b was never seen
    assert peer.apply(owner.delta(peer.known_version("n1"))) is not None
    assert replica_names(peer, "n1") == {"a", "b", "c"}


def test_a_restarted_node_starts_a_new_epoch() -> None:
    first, peer = AgentRegistry("n1", epoch=1), AgentRegistry("n2", epoch=2)
    first.announce("old", "running")
    peer.apply(first.delta(None))
    restarted = AgentRegistry("n1", epoch=5)
    restarted.announce("new", "running")
    # A delta "since" a version of another epoch is a full copy.
    delta = restarted.delta(peer.known_version("n1"))
    assert delta.full
    peer.apply(delta)
    assert replica_names(peer, "n1") == {"new"}


def test_forgotten_tombstones_make_old_peers_get_a_full_copy() -> None:
    owner, peer = AgentRegistry("n1", epoch=1, tombstone_limit=4), AgentRegistry("n2", epoch=2)
    owner.announce("keep", "running")
    peer.apply(owner.delta(None))
    for i in range(10):
        owner.announce(f"tmp{i}", "running")
        owner.withdraw(f"tmp{i}")
    delta = owner.delta(peer.known_version("n1"))
    assert delta.full
    peer.apply(delta)
    assert replica_names(peer, "n1") == {"keep"}


def test_drop_node_forgets_its_agents_and_lookup_prefers_this_node() -> None:
    local = AgentRegistry("n1", epoch=1)
    other = AgentRegistry("n2", epoch=1)
    other.announce("worker", "running")
    other.announce("only-there", "running")
    local.apply(other.delta(None))
    local.announce("worker", "running")
    assert [e.node_id for e in local.lookup("worker")] == ["n1", "n2"]
    dropped = local.drop_node("n2")
    assert {e.name for _, e in dropped} == {"worker", "only-there"}
    assert local.lookup("only-there") == []
    assert local.known_version("n2") is None
    assert local.count() == 1


def test_routable_follows_the_agent_state() -> None:
    assert AgentEntry("a", "n1", "running", 1).routable
    assert AgentEntry("a", "n1", "suspended", 1).routable
    assert not AgentEntry("a", "n1", "stopped", 1).routable
    assert not AgentEntry("a", "n1", "running", 1, removed=True).routable


@pytest.mark.parametrize(
    "wire",
    [None, [], ["n1", 1, 5, 2, False, []], ["n1", "x", 0, 1, False, []], ["n1", 1, 0, 1, 0, [[1]]]],
)
def test_malformed_deltas_are_validation_errors(wire: object) -> None:
    with pytest.raises(ValidationError, match="malformed registry delta"):
        Delta.from_wire(wire)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["announce", "withdraw", "sync"]), st.integers(0, 5)),
        max_size=60,
    )
)
def test_a_replica_converges_whatever_it_missed(ops: list[tuple[str, int]]) -> None:
    """Pushes may be lost; pulling since the held version always converges."""
    owner, peer = AgentRegistry("n1", epoch=1, tombstone_limit=3), AgentRegistry("n2", epoch=2)
    pushed = 0
    for op, i in ops:
        if op == "announce":
            owner.announce(f"a{i}", "running")
        elif op == "withdraw":
            owner.withdraw(f"a{i}")
        elif peer.apply(owner.changes_since(pushed)) is None:
            peer.apply(owner.delta(peer.known_version("n1")))
        pushed = owner.version[1] if op == "sync" else pushed
    assert peer.apply(owner.delta(peer.known_version("n1"))) is not None
    assert replica_names(peer, "n1") == replica_names(owner, "n1")
