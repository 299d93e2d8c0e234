"""The ``zone-aware`` placement strategy (entry-point group ``caxton.placement``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from caxton.config import ConfigSection, Field
from caxton.drivers import DriverContext, NodeLoad, PlacementRequest, PlacementStrategy

SECTION = ConfigSection(
    "placement.zone-aware",
    (
        Field("zone_key", "str", "zone", "Agent requirement naming the preferred zone"),
        Field("region_key", "str", "region", "Agent requirement naming the preferred region"),
        Field(
            "default_to_local_zone",
            "bool",
            True,
            "Without a zone requirement, prefer the zone of the node doing the placement",
        ),
    ),
    "Zone-aware placement (caxton-zone-aware)",
    owner="zone-aware",
)


class ZoneAware(PlacementStrategy):
    """Same zone first, then same region, then the rest; least loaded first in each tier.

    The preferred zone is the agent's ``zone`` requirement (``--requirement zone=eu-1a``);
    without one it is the zone of the node doing the placement, so agents stay close to
    where they were deployed. ``target_node`` and ``prefer_nodes`` win over zones, as
    with core's strategies. To forbid other zones outright, use the ``zones`` requirement
    that :mod:`caxton_zone_aware.hooks` enforces.
    """

    config_section: ClassVar[ConfigSection | None] = SECTION

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__({**SECTION.defaults(), **config}, context)

    def rank(self, request: PlacementRequest, candidates: Sequence[NodeLoad]) -> list[NodeLoad]:
        if request.target_node is not None:
            return [c for c in candidates if c.node_id == request.target_node]
        zone, region = self.preferred_location(request, candidates)
        preferred_nodes = set(request.prefer_nodes)

        def key(c: NodeLoad) -> tuple[bool, int, int, float, int, str]:
            if zone and c.zone == zone:
                tier = 0
            elif region and c.region == region:
                tier = 1
            else:
                tier = 2
            return (
                c.node_id not in preferred_nodes,
                tier,
                c.agents,
                c.cpu_percent,
                c.memory_bytes,
                c.node_id,
            )

        return sorted(candidates, key=key)

    def preferred_location(
        self, request: PlacementRequest, candidates: Sequence[NodeLoad]
    ) -> tuple[str, str]:
        """The (zone, region) this request should land in; ``""`` means no preference."""
        zone = request.requirements.get(self.config["zone_key"], "")
        region = request.requirements.get(self.config["region_key"], "")
        if zone or region or not self.config["default_to_local_zone"]:
            return zone, region
        local = next((c for c in candidates if c.node_id == self.context.node_id), None)
        return (local.zone, local.region) if local is not None else ("", "")
