from __future__ import annotations

from caxton_zone_aware.partition import ZoneMajority

from caxton.drivers import ClusterView, DriverContext, PartitionMode

ZONES = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "c1": "c"}
EVERYONE = tuple(ZONES)


def decide(policy: ZoneMajority, local: str, reachable: tuple[str, ...]) -> PartitionMode:
    return policy.decide(ClusterView(local, EVERYONE, reachable)).mode


def test_zones_outvote_a_crowded_zone(context: DriverContext) -> None:
    policy = ZoneMajority({"zones": ZONES}, context)
    # b and c are 2 of 3 zones although only 2 of 5 nodes.
    assert decide(policy, "b1", ("b1", "c1")) is PartitionMode.READ_WRITE
    assert decide(policy, "a1", ("a1", "a2", "a3")) is PartitionMode.READ_ONLY


def test_a_zone_needs_a_majority_of_its_nodes(context: DriverContext) -> None:
    policy = ZoneMajority({"zones": ZONES}, context)
    # Only a1 of zone a: zone a is not reachable, so a1 + b1 hold 1 zone of 3.
    assert decide(policy, "a1", ("a1", "b1")) is PartitionMode.READ_ONLY
    assert decide(policy, "a1", ("a1", "a2", "b1")) is PartitionMode.READ_WRITE


def test_even_split_goes_to_the_tiebreaker(context: DriverContext) -> None:
    zones = {"a1": "a", "b1": "b"}
    policy = ZoneMajority({"zones": zones, "tiebreaker": "a"}, context)
    view_a = ClusterView("a1", ("a1", "b1"), ("a1",))
    view_b = ClusterView("b1", ("a1", "b1"), ("b1",))
    assert policy.decide(view_a).mode is PartitionMode.READ_WRITE
    assert "tie won by zone a" in policy.decide(view_a).reason
    assert policy.decide(view_b).mode is PartitionMode.READ_ONLY


def test_unlisted_nodes_are_zones_of_their_own(context: DriverContext) -> None:
    policy = ZoneMajority({}, context)
    assert decide(policy, "a1", ("a1", "a2", "a3")) is PartitionMode.READ_WRITE
    assert decide(policy, "b1", ("b1", "c1")) is PartitionMode.READ_ONLY


def test_a_lone_node_is_writable(context: DriverContext) -> None:
    decision = ZoneMajority({}, context).decide(ClusterView("n1", ("n1",), ("n1",)))
    assert decision.mode is PartitionMode.READ_WRITE
    assert decision.queue_writes is True


def test_queue_writes_is_configurable(context: DriverContext) -> None:
    policy = ZoneMajority({"zones": ZONES, "queue_writes": False}, context)
    decision = policy.decide(ClusterView("a1", EVERYONE, ("a1",)))
    assert decision.mode is PartitionMode.READ_ONLY
    assert decision.queue_writes is False
