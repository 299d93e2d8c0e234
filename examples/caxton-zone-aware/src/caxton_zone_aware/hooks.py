"""Hook plugin (entry point ``caxton.hooks`` / ``zone-filter``).

Active on every node where the package is installed, whichever drivers are selected;
switch it off with ``--plugin no:zone-filter``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from caxton import hookimpl
from caxton.drivers import NodeLoad, PlacementRequest

if TYPE_CHECKING:
    from caxton.node import Node

log = logging.getLogger("caxton_zone_aware")

#: Agent requirement listing the only zones it may run in: ``zones=eu-1a,eu-1b``.
ALLOWED_ZONES = "zones"


def allowed_zones(request: PlacementRequest) -> set[str]:
    return {z.strip() for z in request.requirements.get(ALLOWED_ZONES, "").split(",") if z.strip()}


@hookimpl
def caxton_placement_filter(
    request: PlacementRequest, candidates: Sequence[NodeLoad]
) -> Sequence[str] | None:
    """Drop candidates outside the agent's ``zones`` requirement (a hard constraint)."""
    zones = allowed_zones(request)
    if not zones:
        return None
    return [c.node_id for c in candidates if c.zone not in zones]


@hookimpl
def caxton_node_started(node: Node) -> None:
    settings = node.config["node"]
    log.info(
        "zone-aware: node %s started in zone %s (region %s)",
        node.node_id,
        settings["zone"] or "-",
        settings["region"] or "-",
    )
