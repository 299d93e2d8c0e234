"""Core's own hook implementations, registered on every plugin host.

They are the ``trylast`` defaults that plugins override (xdist's pattern): a plugin's
``caxton_partition_decision`` answers first; this one asks the configured driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caxton import hookimpl

if TYPE_CHECKING:
    from caxton.drivers import ClusterView, PartitionDecision
    from caxton.node import Node


@hookimpl(trylast=True)
def caxton_partition_decision(node: Node, view: ClusterView) -> PartitionDecision | None:
    policy = node.partition_policy
    if policy is None:
        return None
    decision: PartitionDecision = policy.decide(view)
    return decision
