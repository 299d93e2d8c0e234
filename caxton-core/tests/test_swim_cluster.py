"""Whole clusters in the simulator: convergence, failures, loss, pauses, partitions,
leaves and restarts, at up to 100 nodes (simulated time; a few seconds of CPU)."""

from __future__ import annotations

import random

import pytest

from caxton.drivers.membership import MemberStatus
from caxton.membership.core import EventKind
from caxton.membership.settings import SwimSettings
from caxton.membership.static_core import StaticCore
from caxton.testing.membership import SimCluster, VersionedMapDelegate

FAILED = MemberStatus.FAILED


def formed(seed: int, nodes: int, **kwargs: object) -> SimCluster:
    sim = SimCluster(seed, **kwargs)  # type: ignore[arg-type]
    sim.start_nodes(nodes)
    assert sim.run_until(sim.converged, timeout=60) is not None
    return sim


@pytest.fixture(scope="module")
def cluster100() -> SimCluster:
    return formed(100, 100)


def failures(sim: SimCluster) -> list[tuple[float, str, str]]:
    return sim.events("failed")


def test_100_nodes_started_together_converge() -> None:
    sim = SimCluster(1)
    sim.start_nodes(100, stagger=1.0)
    assert sim.run_until(sim.converged, timeout=30) is not None
    assert failures(sim) == []


def test_join_is_seen_by_every_member(cluster100: SimCluster) -> None:
    sim = cluster100
    sim.add_node("newcomer", ["n7"])
    took = sim.run_until(lambda: sim.all_see("newcomer", MemberStatus.ALIVE), timeout=30)
    assert took is not None
    assert len(sim.nodes["newcomer"].view()) == 100


def test_killed_node_is_failed_everywhere_without_false_positives() -> None:
    sim = formed(2, 100)
    sim.run_for(3)
    sim.kill("n42")
    assert sim.run_until(lambda: sim.all_see("n42", FAILED), timeout=60) is not None
    sim.run_for(20)
    assert {member for _, _, member in failures(sim)} == {"n42"}


def test_a_node_losing_a_fifth_of_its_packets_is_not_failed() -> None:
    sim = formed(3, 20)
    sim.set_loss("n5", 0.2)
    sim.run_for(180)
    assert failures(sim) == []
    # The loss did bite: n5 was suspected, and refuted every suspicion in time.
    assert any(member == "n5" for _, _, member in sim.events("suspect"))
    assert sim.nodes["n5"].core.stats.refutations > 0


def test_paused_node_shorter_than_suspicion_is_not_failed(cluster100: SimCluster) -> None:
    sim = cluster100
    sim.pause("n13", 2.0)
    sim.run_for(40)
    assert failures(sim) == []
    assert sim.all_see("n13", MemberStatus.ALIVE)


def test_paused_node_longer_than_suspicion_is_failed_then_rejoins() -> None:
    sim = formed(4, 5)
    sim.pause("n2", 40.0)
    sim.run_for(40)
    assert sim.all_see("n2", FAILED)
    assert sim.run_until(sim.converged, timeout=30) is not None


def test_partition_heals_by_itself() -> None:
    sim = formed(5, 20)
    names = sorted(sim.nodes)
    west, east = names[:10], names[10:]
    sim.partition(west, east)
    sim.run_for(60)
    assert sim.all_see(east[0], FAILED, west)
    assert sim.all_see(west[0], FAILED, east)
    sim.heal()
    assert sim.run_until(sim.converged, timeout=120) is not None


def test_long_outage_of_one_node_heals_by_itself() -> None:
    sim = formed(6, 8)
    sim.partition(["n3"], [n for n in sim.nodes if n != "n3"])
    sim.run_for(600)
    assert sim.all_see("n3", FAILED)
    assert all(status is FAILED for status in sim.nodes["n3"].view().values())
    sim.heal()
    assert sim.run_until(sim.converged, timeout=120) is not None


def test_late_seed_is_retried_until_it_answers() -> None:
    sim = SimCluster(7)
    sim.add_node("n1", ["n0"])  # n0 is not running yet
    sim.run_for(5)
    sim.add_node("n0")
    took = sim.run_until(sim.converged, timeout=60)
    assert took is not None
    assert sim.nodes["n1"].core.stats.syncs_failed >= 1


def test_graceful_leave_is_left_not_failed() -> None:
    sim = formed(8, 20)
    sim.leave("n9")
    assert sim.run_until(lambda: sim.nodes["n9"].core.leave_done, timeout=5) is not None
    sim.kill("n9")
    sim.run_for(60)
    assert sim.all_see("n9", MemberStatus.LEFT)
    assert failures(sim) == []


def test_restarted_node_reclaims_its_identity() -> None:
    sim = formed(9, 10)
    sim.kill("n4")
    assert sim.run_until(lambda: sim.all_see("n4", FAILED), timeout=60) is not None
    old_incarnation = sim.nodes["n0"].core.member("n4").incarnation  # type: ignore[attr-defined]
    restarted_at = sim.now
    sim.restart("n4", ["n1"])
    assert sim.run_until(sim.converged, timeout=30) is not None
    member = sim.nodes["n0"].core.member("n4")  # type: ignore[attr-defined]
    assert member.incarnation > old_incarnation
    since = [
        e.kind
        for e in sim.nodes["n0"].events
        if e.member.node_id == "n4" and e.time >= restarted_at
    ]
    assert EventKind.JOINED in since
    assert EventKind.FAILED not in since


def test_metadata_updates_reach_every_member() -> None:
    sim = formed(10, 50)
    sim.update_meta("n17", {"agents": 12, "cpu": 0.4, "zone": "b", "labels": {"gpu": "yes"}})

    def everyone_knows() -> bool:
        return all(
            {m.node_id: m for m in node.core.members()}["n17"].meta.get("agents") == 12
            for node in sim.live_nodes()
        )

    assert sim.run_until(everyone_knows, timeout=10) is not None


def test_same_seed_same_history() -> None:
    def history(seed: int) -> list[tuple[float, str, str, str]]:
        sim = formed(seed, 10)
        sim.kill("n3")
        sim.run_for(20)
        return sim.log

    assert history(11) == history(11)
    assert history(11) != history(12)


def test_faster_tuning_detects_sooner() -> None:
    fast = SwimSettings(probe_interval=0.2, probe_timeout=0.1, suspicion_multiplier=3)
    sim = formed(12, 5, settings=fast)
    sim.kill("n1")
    took = sim.run_until(lambda: sim.all_see("n1", FAILED), timeout=30, step=0.01)
    minimum = fast.suspicion_multiplier * fast.probe_interval
    assert took is not None
    assert took >= minimum


# -------------------------------------------------------------------------
# The static membership core in the simulator
# -------------------------------------------------------------------------


def static_cluster(seed: int, count: int) -> SimCluster:
    addresses = [(f"10.0.0.{i + 1}", 7946) for i in range(count)]
    settings = SwimSettings(seeds=tuple(addresses))

    def factory(node_id: str, address: tuple[str, int], now: float, rng: random.Random):  # type: ignore[no-untyped-def]
        return StaticCore(node_id, address, settings, now=now, rng=rng)

    sim = SimCluster(seed, settings, core_factory=factory)
    sim.address_of = lambda node_id: addresses[int(node_id[1:])]  # type: ignore[method-assign]
    for i in range(count):
        sim.add_node(f"s{i}")
    return sim


def test_static_members_are_health_checked() -> None:
    sim = static_cluster(13, 4)
    assert sim.run_until(sim.converged, timeout=5) is not None
    sim.kill("s2")
    assert sim.run_until(lambda: sim.all_see("s2", FAILED), timeout=10) is not None
    sim.restart("s2", [])
    assert sim.run_until(sim.converged, timeout=5) is not None


def test_static_member_leaving_is_left() -> None:
    sim = static_cluster(14, 3)
    assert sim.run_until(sim.converged, timeout=5) is not None
    sim.leave("s1")
    sim.run_for(1)
    sim.kill("s1")
    sim.run_for(20)
    assert sim.all_see("s1", MemberStatus.LEFT)
    assert failures(sim) == []


# -------------------------------------------------------------------------
# The gossip delegate channel (what the agent registry rides on)
# -------------------------------------------------------------------------


def with_delegates(sim: SimCluster) -> dict[str, VersionedMapDelegate]:
    delegates = {}
    for name, node in sim.nodes.items():
        delegates[name] = VersionedMapDelegate()
        node.core.delegate = delegates[name]  # type: ignore[attr-defined]
    return delegates


def test_delegate_messages_reach_every_member() -> None:
    sim = formed(20, 30)
    delegates = with_delegates(sim)
    sim.gossip("n11", "agents/n11", delegates["n11"].set("agents/n11", b"echo,math"))

    def everyone_knows() -> bool:
        return all(d.entries.get("agents/n11") == (1, b"echo,math") for d in delegates.values())

    assert sim.run_until(everyone_knows, timeout=10) is not None


def test_delegate_state_travels_with_push_pull() -> None:
    sim = formed(21, 5)
    delegates = with_delegates(sim)
    delegates["n2"].set("agents/n2", b"planner")
    late = sim.add_node("late", ["n2"])
    late_delegate = VersionedMapDelegate()
    late.core.delegate = late_delegate  # type: ignore[attr-defined]
    sim.run_for(1)
    assert late_delegate.entries == {"agents/n2": (1, b"planner")}


def test_a_broken_delegate_does_not_break_membership() -> None:
    class Broken(VersionedMapDelegate):
        def notify(self, key: str, payload: bytes) -> bool:
            raise RuntimeError("registry bug")

    sim = formed(22, 5)
    for node in sim.nodes.values():
        node.core.delegate = Broken()  # type: ignore[attr-defined]
    sim.gossip("n1", "k", b"v")
    sim.run_for(5)
    assert sum(n.core.stats.delegate_errors for n in sim.nodes.values()) > 0  # type: ignore[attr-defined]
    sim.kill("n3")
    assert sim.run_until(lambda: sim.all_see("n3", FAILED), timeout=30) is not None


def test_oversized_delegate_message_is_refused() -> None:
    sim = formed(23, 2)
    with pytest.raises(ValueError, match="send large state"):
        sim.gossip("n0", "k", b"x" * 2000)
