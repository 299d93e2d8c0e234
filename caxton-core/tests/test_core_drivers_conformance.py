"""Core's own placement strategies and partition policy pass the conformance suites
that third-party drivers of the same kinds use."""

from __future__ import annotations

from caxton.partition.quorum import QuorumPolicy
from caxton.placement.strategies import LeastLoaded, LocalOnly, RoundRobin
from caxton.testing import PartitionPolicyConformance, PlacementConformance


class TestLeastLoaded(PlacementConformance):
    driver_class = LeastLoaded
    entry_point_name = "least-loaded"


class TestRoundRobin(PlacementConformance):
    driver_class = RoundRobin
    entry_point_name = "round-robin"


class TestLocalOnly(PlacementConformance):
    driver_class = LocalOnly
    entry_point_name = "local"


class TestQuorum(PartitionPolicyConformance):
    driver_class = QuorumPolicy
    entry_point_name = "quorum"


class TestQuorumWithoutQueuedWrites(PartitionPolicyConformance):
    driver_class = QuorumPolicy
    entry_point_name = "quorum"
    driver_config = {"queue_writes": False}
