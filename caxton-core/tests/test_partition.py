"""The quorum policy reads core's [partition] section; plugins decide first."""

from __future__ import annotations

from pathlib import Path

from caxton import hookimpl
from caxton.drivers import ClusterView, PartitionDecision, PartitionMode
from caxton.testing import NodeFactory

MINORITY = ClusterView("n1", known_nodes=["n1", "n2", "n3"], reachable_nodes=["n1"])


async def test_quorum_policy_takes_partition_config(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path)
    async with factory.node("n1", config={"partition.queue_writes": False}) as node:
        decision = node.hook.caxton_partition_decision(node=node, view=MINORITY)
        assert decision.mode is PartitionMode.READ_ONLY
        assert decision.queue_writes is False
        assert "1/3" in decision.reason


async def test_a_plugin_overrides_the_policy(tmp_path: Path) -> None:
    class StayWritable:
        @hookimpl
        def caxton_partition_decision(self, node, view):  # type: ignore[no-untyped-def]
            if len(view.reachable_nodes) == 1:
                return PartitionDecision(PartitionMode.LOCAL_ONLY, "alone: serve local agents")
            return None

    factory = NodeFactory(tmp_path)
    factory.register(StayWritable())
    async with factory.node("n1") as node:
        decision = node.hook.caxton_partition_decision(node=node, view=MINORITY)
        assert decision.mode is PartitionMode.LOCAL_ONLY
        majority = ClusterView("n1", ["n1", "n2", "n3"], ["n1", "n2"])
        assert node.hook.caxton_partition_decision(node=node, view=majority).mode is (
            PartitionMode.READ_WRITE
        )
