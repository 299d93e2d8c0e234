"""The ``zone-majority`` partition policy (entry-point group ``caxton.partition_policy``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from caxton.config import ConfigSection, Field
from caxton.drivers import (
    ClusterView,
    DriverContext,
    PartitionDecision,
    PartitionMode,
    PartitionPolicy,
)

SECTION = ConfigSection(
    "partition.zone-majority",
    (
        Field("zones", "table", {}, "Node id -> zone; an unlisted node is a zone of its own"),
        Field("tiebreaker", "str", "", "Zone whose side stays writable when zones split evenly"),
        Field("queue_writes", "bool", True, "Queue writes while read-only, replay on heal"),
    ),
    "Zone-majority partition policy (caxton-zone-aware)",
    owner="zone-majority",
)


class ZoneMajority(PartitionPolicy):
    """Read-write while this side reaches a majority of zones; read-only otherwise.

    A zone counts as reachable when a strict majority of its known nodes is reachable.
    Counting zones instead of nodes keeps one crowded zone from outvoting the others:
    with 3 nodes in zone a and 1 each in b and c, losing zone a leaves b and c (2 of 3
    zones) writable, where a node majority would make them read-only. An even split is
    read-write only on the side holding ``tiebreaker``.
    """

    config_section: ClassVar[ConfigSection | None] = SECTION

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__({**SECTION.defaults(), **config}, context)
        self.zones: dict[str, str] = {str(k): str(v) for k, v in self.config["zones"].items()}

    def zone_of(self, node_id: str) -> str:
        return self.zones.get(node_id) or f"node:{node_id}"

    def decide(self, view: ClusterView) -> PartitionDecision:
        known = set(view.known_nodes) | {view.local_node_id}
        reachable = set(view.reachable_nodes) | {view.local_node_id}
        members: dict[str, set[str]] = {}
        for node_id in known:
            members.setdefault(self.zone_of(node_id), set()).add(node_id)
        up = sorted(z for z, nodes in members.items() if 2 * len(nodes & reachable) > len(nodes))
        total = len(members)
        queue = bool(self.config["queue_writes"])
        summary = f"{len(up)}/{total} zones reachable ({', '.join(up) or 'none'})"
        if 2 * len(up) > total:
            return PartitionDecision(PartitionMode.READ_WRITE, summary, queue_writes=queue)
        tiebreaker = self.config["tiebreaker"]
        if 2 * len(up) == total and tiebreaker in up:
            return PartitionDecision(
                PartitionMode.READ_WRITE, f"{summary}; tie won by zone {tiebreaker}", queue
            )
        return PartitionDecision(
            PartitionMode.READ_ONLY, f"minority of zones: {summary}", queue_writes=queue
        )
